"""ONNX's own node test cases for RNN/GRU/LSTM/Gemm/MatMul through the project's pipeline.

Each case of ``onnx.backend.test.case.node`` whose model is one RNN, GRU, LSTM, Gemm or MatMul
node runs through :func:`tvm_sparse_rnn.compile.build_onnx` + ``load_executable(...).run`` and
is compared with ONNX's expected outputs. Recurrent weights (inputs ``W``, ``R``, ``B``, ``P``)
become initializers, as in exported models. The same models also run through TVM's plain
importer (``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` + the Relax VM): every case it
passes must pass with the project's passes in; it has no converter for the recurrent ops.

Known failures are ``xfail(strict=True)``: fixing one turns it into an error until its marker is
removed.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

from tvm_sparse_rnn.compile import build_onnx, load_executable

OPS = frozenset({"RNN", "GRU", "LSTM", "Gemm", "MatMul"})
RECURRENT = frozenset({"RNN", "GRU", "LSTM"})
WEIGHTS = frozenset({"W", "R", "B", "P"})
RTOL, ATOL = 1e-4, 1e-5

#: Cases the project's llvm pipeline fails today: reason (and where to fix it).
KNOWN_FAILURES: dict[str, str] = {}


def _cases() -> dict[str, object]:
    cases = {}
    for case in collect_testcases(None):
        ops = {node.op_type for node in case.model.graph.node}
        if len(ops) == 1 and ops <= OPS and re.search("rnn|gru|lstm|gemm|matmul", case.name):
            cases[case.name] = case
    return cases


CASES = _cases()


def _prepare(case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model with recurrent weights as initializers, its feeds, its expected outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    values = dict(zip([i.name for i in model.graph.input], inputs, strict=True))
    recurrent = model.graph.node[0].op_type in RECURRENT
    moved = {name for name in values if recurrent and name in WEIGHTS}
    model.graph.initializer.extend(numpy_helper.from_array(values[n], n) for n in sorted(moved))
    kept = [i for i in model.graph.input if i.name not in moved]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    feeds = {i.name: values[i.name] for i in kept}
    expected = dict(zip([o.name for o in model.graph.output], outputs, strict=True))
    return model, feeds, expected


#: Cases reported failing on cuda in issue 14 (not re-run here: no GPU on the CI machine).
KNOWN_FAILURES_CUDA = {
    **{k: v for k, v in KNOWN_FAILURES.items() if k.startswith("test_gemm_default_scalar")},
    "test_lstm_with_peepholes": "issue 14: ValueError: The block no longer exists in the "
    "IRModule (cuda build of an LSTM with peepholes)",
}


def _params(known: dict[str, str], strict: bool = True) -> list:
    return [
        pytest.param(
            name,
            marks=pytest.mark.xfail(strict=strict, reason=known[name]) if name in known else (),
        )
        for name in CASES
    ]


def test_case_selection():
    """The 36 RNN/GRU/LSTM/Gemm/MatMul cases of ONNX 1.2x (37 in some versions)."""
    kinds = {op: sum(op in c.model.graph.node[0].op_type for c in CASES.values()) for op in OPS}
    assert len(CASES) >= 30, sorted(CASES)
    assert all(kinds[op] >= 5 for op in OPS), kinds


def _check_project(name: str, target: str) -> None:
    model, feeds, expected = _prepare(CASES[name])
    executable, inputs, outputs = build_onnx(model, target=target)
    got = load_executable(executable, inputs, outputs, target).run(feeds)
    for out, ref in expected.items():
        np.testing.assert_allclose(got[out], ref, rtol=RTOL, atol=ATOL, err_msg=out)


@pytest.mark.parametrize("name", _params(KNOWN_FAILURES))
def test_project_pipeline_llvm(name):
    _check_project(name, "llvm")


@pytest.mark.gpu
@pytest.mark.parametrize("name", _params(KNOWN_FAILURES_CUDA, strict=False))
def test_project_pipeline_cuda(name):
    _check_project(name, "cuda")


def _run_plain(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    executable = tvm.compile(tvm_from_onnx(model), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(feeds[i.name]) for i in model.graph.input))
    return [o.numpy() for o in ([out] if isinstance(out, tvm.runtime.Tensor) else out)]


@pytest.mark.parametrize("name", list(CASES))
def test_plain_tvm_importer_llvm(name):
    """TVM alone: the Gemm/MatMul cases pass; the recurrent ops have no converter."""
    model, feeds, expected = _prepare(CASES[name])
    if model.graph.node[0].op_type in RECURRENT:
        with pytest.raises(Exception, match="not supported for frontend ONNX"):
            tvm_from_onnx(model)
        return
    got = _run_plain(model, feeds)
    for out, ref in zip(got, expected.values(), strict=True):
        np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
