"""ConstantTakeToSlice: ``take`` of one constant index becomes a fusable slice."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse_rnn.pipeline import build
from tvm_sparse_rnn.transform import ConstantTakeToSlice


def _take_module(index, mode: str = "fast") -> tvm.IRModule:
    """``main(x [3, 4, 5]) = take(x, index, axis=0) * 2``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 4, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.take(x, index, axis=0, mode=mode))
            y = bb.emit_output(relax.op.multiply(t, relax.const(2.0)))
        bb.emit_func_output(y)
    return bb.get()


def _ops(mod: tvm.IRModule) -> str:
    return mod["main"].script()


@pytest.mark.parametrize("index", [0, 2, -1])
def test_constant_take_becomes_a_slice_and_computes_the_same(index):
    mod = _take_module(relax.const(index, "int64"))
    rewritten = ConstantTakeToSlice(mod)
    assert "R.take" not in _ops(rewritten)
    assert "R.strided_slice" in _ops(rewritten) and "R.squeeze" in _ops(rewritten)
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype("float32")
    executable, _ = build(mod, "llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x[index] * 2)


def test_other_takes_are_kept():
    """A runtime index, a vector of indices and an out-of-range index (whose meaning is
    take's mode) stay takes."""
    runtime = relax.Var("i", relax.TensorType((), "int64"))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 4, 5), "float32"))
    with bb.function("main", [x, runtime]):
        with bb.dataflow():
            a = bb.emit(relax.op.take(x, runtime, axis=0))
            b = bb.emit(relax.op.take(x, relax.const(np.array([0, 2]), "int64"), axis=0))
            c = bb.emit(relax.op.take(x, relax.const(5, "int64"), axis=0, mode="wrap"))
            y = bb.emit_output(relax.Tuple([a, b, c]))
        bb.emit_func_output(y)
    mod = bb.get()
    assert _ops(ConstantTakeToSlice(mod)).count("R.take") == 3
