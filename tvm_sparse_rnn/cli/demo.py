"""``tvm-sparse-rnn demo``: the main job on the embedded pruned model, no download.

Builds :func:`tvm_sparse_rnn.demo.build_demo_model` (a 90 %-pruned RNN + MLP), prints what the
pass does with each layer, compiles it with sparse kernels and dense, checks both against
onnxruntime and prints the speed-ups.
"""

from __future__ import annotations

import argparse

from .bench import DENSE, ORT, benchmark_model, format_result
from .inspect import decision_table
from .options import positive_int


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="compile, check and time the embedded pruned demo model",
        description="Compile the embedded 90%%-pruned RNN + MLP with sparse kernels, check it "
        "against onnxruntime, and print the speed-up over the dense TVM build and onnxruntime.",
    )
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm", help="default llvm")
    parser.add_argument("--repeat", type=positive_int, default=30, help="timed calls (default 30)")
    parser.add_argument("--save", metavar="MODEL.onnx", help="also write the demo model here")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 1 if the check against onnxruntime fails."""
    from ..compile import plan_onnx  # onnx loads when a command runs, not on --help
    from ..demo import build_demo_model

    model = build_demo_model()
    if args.save:
        with open(args.save, "wb") as f:
            f.write(model.SerializeToString())
    print("demo model: pruned RNN + 3-layer MLP (built in code); kernel decisions:")
    print(decision_table(plan_onnx(model, target=args.target)))
    result = benchmark_model(model, target=args.target, repeat=args.repeat)
    print(format_result(result))
    check = "matches" if result.matches else "DOES NOT match"
    print(
        f"check: {check} onnxruntime; speed-up {result.speedup(DENSE):.2f}x vs dense TVM, "
        f"{result.speedup(ORT):.2f}x vs onnxruntime (CPU)"
    )
    return 0 if result.matches else 1
