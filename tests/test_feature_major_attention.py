"""Layout chains, their folding, and attention on the CSR kernels' feature-major projections."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.special
import tvm
from tvm import relax
from tvm.relax import op

from tvm_sparse_rnn.compile import build_onnx, load_executable
from tvm_sparse_rnn.demo import random_inputs
from tvm_sparse_rnn.frontend import from_onnx
from tvm_sparse_rnn.kernels.x86.row_reduction import ReducedAxis
from tvm_sparse_rnn.kernels.x86.softmax import make_softmax
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.transform import DispatchOptions, FoldLayoutChains
from tvm_sparse_rnn.transform.dispatch.cost_model import COST_PARAMS
from tvm_sparse_rnn.transform.layout_chain import block_value, op_name, trace_chain

ort = pytest.importorskip("onnxruntime")


def _chain_module(shape, steps) -> tuple[tvm.IRModule, relax.Var]:
    """``main(x)`` applying ``steps`` (functions of an expression) in turn."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = x
            for step in steps:
                out = bb.emit(step(out))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get(), x


SLICE_CHAIN = [
    lambda e: op.permute_dims(e, [0, 2, 1]),  # (1, 8, 12)
    lambda e: op.reshape(e, [8, 3, 4]),
    lambda e: op.expand_dims(e, [0]),  # (1, 8, 3, 4)
    lambda e: op.permute_dims(e, [2, 1, 0, 3]),  # (3, 8, 1, 4)
    lambda e: op.squeeze(e, [2]),  # (3, 8, 4)
    lambda e: op.strided_slice(e, [0, 2], [1, 0], [2, 4], [1, 2]),  # (1, 8, 2)
]


def _numpy_chain(x: np.ndarray) -> np.ndarray:
    y = np.transpose(x, [0, 2, 1]).reshape(8, 3, 4)[None]
    return np.transpose(y, [2, 1, 0, 3]).squeeze(2)[1:2, :, 0:4:2]


def test_index_map_of_a_layout_chain_matches_numpy():
    """Replaying a chain on an index array tells, per output element, which root element it
    copies: the same as numpy applying the chain to the data."""
    mod, x = _chain_module((1, 12, 8), SLICE_CHAIN)
    func = mod["main"]
    var2val = relax.analysis.get_var2val(func)
    out = func.body.blocks[0].bindings[-1].value  # the dataflow variable gv holds
    chain = trace_chain(out, dict(var2val))
    assert chain.root.same_as(x) and len(chain.ops) == len(SLICE_CHAIN)
    data = np.random.default_rng(0).standard_normal((1, 12, 8))
    np.testing.assert_array_equal(data.reshape(-1)[chain.index_map()], _numpy_chain(data))


def test_trace_chain_collects_scalar_factors():
    steps = [
        lambda e: op.multiply(e, relax.const(0.5, "float32")),
        lambda e: op.permute_dims(e, [1, 0]),
        lambda e: op.divide(e, relax.const(4.0, "float32")),
    ]
    mod, x = _chain_module((4, 8), steps)
    func = mod["main"]
    out = func.body.blocks[0].bindings[-1].value  # the dataflow variable gv holds
    chain = trace_chain(out, dict(relax.analysis.get_var2val(func)), with_scales=True)
    assert chain.root.same_as(x) and chain.scale == pytest.approx(0.125)
    assert len(trace_chain(out, dict(relax.analysis.get_var2val(func))).ops) == 0


@pytest.mark.parametrize(
    ("steps", "folded"),
    [
        # the heads' merge after attention: moves no element
        ([lambda e: op.permute_dims(e, [0, 1, 3, 2]), lambda e: op.reshape(e, [1, 4, 8, 16]),
          lambda e: op.permute_dims(e, [2, 0, 1, 3]), lambda e: op.reshape(e, [8, 64]),
          lambda e: op.permute_dims(e, [1, 0])], True),
        # a real transpose stays
        ([lambda e: op.permute_dims(e, [0, 1, 3, 2]), lambda e: op.reshape(e, [4, 8, 16])],
         False),
    ],
)  # fmt: skip
def test_fold_layout_chains_makes_in_place_chains_one_reshape(steps, folded):
    mod, _ = _chain_module((1, 4, 16, 8), steps)
    after = FoldLayoutChains(mod)
    assert ("permute_dims" not in after["main"].script()) is folded
    data = np.random.default_rng(1).standard_normal((1, 4, 16, 8)).astype("float32")
    outs = [
        relax.VirtualMachine(build(m, "llvm")[0], tvm.cpu())["main"](tvm.runtime.tensor(data))
        for m in (mod, after)
    ]
    np.testing.assert_array_equal(outs[0].numpy(), outs[1].numpy())


def test_fold_layout_chains_keeps_a_slice_of_the_first_elements():
    """A slice of the root's leading elements keeps them in place but not all of them: not a
    reshape of the root."""
    steps = [
        lambda e: op.reshape(e, [4, 16, 8]),
        lambda e: op.strided_slice(e, [0], [0], [1]),
        lambda e: op.reshape(e, [16, 8]),
    ]
    mod, _ = _chain_module((1, 4, 16, 8), steps)
    assert "strided_slice" in FoldLayoutChains(mod)["main"].script()


def test_chains_look_through_dataflow_variables_only():
    """A block's output variable stands for itself (what binds it may sit in another block):
    trace_chain and block_value look through dataflow variables only."""
    mod, x = _chain_module((1, 12, 8), SLICE_CHAIN)
    func = mod["main"]
    var2val = dict(relax.analysis.get_var2val(func))
    binding = func.body.blocks[0].bindings[-1]  # gv = <dataflow variable>
    assert not isinstance(binding.var, relax.DataflowVar)
    assert block_value(binding.var, var2val).same_as(binding.var)
    assert trace_chain(binding.var, var2val).root.same_as(binding.var)
    assert op_name(block_value(binding.value, var2val)) == "relax.strided_slice"
    assert trace_chain(binding.value, var2val).root.same_as(x)


@pytest.mark.parametrize("shape", [(12, 128, 128), (3, 16, 32), (2, 5, 7, 16)])
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_column_softmax_matches_scipy(shape, scale):
    func = make_softmax(shape, "float32", 16, ReducedAxis.SECOND_LAST, scale)
    func = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    data = np.random.default_rng(3).standard_normal(shape).astype("float32") * 4
    out = tvm.runtime.tensor(np.zeros(shape, "float32"))
    lib["main"](tvm.runtime.tensor(data), out)
    ref = scipy.special.softmax(scale * data.astype(np.float64), axis=-2)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_column_softmax_rejects_a_non_positive_scale():
    with pytest.raises(ValueError, match="scale must be positive"):
        make_softmax((2, 16, 16), "float32", 16, ReducedAxis.SECOND_LAST, -1.0)


def _sparse_encoder(batch: int):
    from tvm_sparse_rnn.zoo import build_bert_encoder

    pytest.importorskip("torch")
    return build_bert_encoder(
        layers=2, d_model=64, heads=4, ffn=128, seq_len=32, batch=batch, pruning="4x4"
    )


#: Every layer sparse (the cost rule's break-even lifted), whatever its size: on the CSR kernel
#: (rows of 4x4 blocks packed in groups).
FORCED_PARAMS = replace(COST_PARAMS["llvm"], break_even=float("inf"))


@pytest.mark.parametrize(("batch", "rewritten"), [(1, True), (2, False)])
def test_encoder_attention_runs_feature_major_and_matches_onnxruntime(batch, rewritten):
    """A pruned encoder whose projections run on the CSR kernel: at batch 1 each layer's
    attention reads the QKV projection's rows (no head split or merge kernels, the softmax over
    the keys), and the residual stream -- adds and layer norms -- stays feature-major
    (CancelTransposes): one transpose in, one out, for two layers. At batch 2 torch orders the
    tokens sequence-major, which FeatureMajorAttention leaves alone. Both match onnxruntime."""
    model = _sparse_encoder(batch)
    pipeline = sparse_pipeline("llvm", DispatchOptions(cost_params=FORCED_PARAMS))
    names = [gv.name_hint for gv in pipeline(from_onnx(model)).get_global_vars()]
    assert any(n.startswith("csr") for n in names), names
    assert any("attention_scores" in n for n in names) is rewritten
    assert any("strided_slice" in n for n in names) is not rewritten
    if rewritten:
        assert sum("transpose" in n for n in names) == 2, names
    executable, inputs, outputs = build_onnx(model, target="llvm", params=FORCED_PARAMS)
    feeds = random_inputs(inputs)
    got = load_executable(executable, inputs, outputs, "llvm").run(feeds)[outputs[0].name]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
