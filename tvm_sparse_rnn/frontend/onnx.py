"""ONNX import of pruned models: TVM's Relax ONNX frontend + the recurrent converters.

:func:`from_onnx` wraps ``tvm.relax.frontend.onnx.from_onnx``. TVM's importer has no converter for
ONNX ``RNN``/``GRU``/``LSTM`` and no hook to add one, so while importing it patches the module-level
converter map with :data:`tvm_sparse_rnn.frontend.onnx_rnn.RECURRENT_CONVERTERS` (restored on
exit). The result is target-neutral: recurrent layers are placeholders
(:mod:`tvm_sparse_rnn.ops.placeholders`), dense layers plain matmuls; the package's pipeline
(:mod:`tvm_sparse_rnn.pipeline`) marks the dense layers and dispatches every layer per target.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import tvm
from google.protobuf.message import DecodeError
from tvm.relax.frontend.onnx import onnx_frontend as _onnx_frontend

from ..errors import ModelError, SparseRNNError, UnsupportedError
from ..signature import TensorSpec
from .fold import fold_constants

logger = logging.getLogger(__name__)

#: ONNX ops converted by :mod:`tvm_sparse_rnn.frontend.onnx_rnn`.
RECURRENT_OPS = ("RNN", "GRU", "LSTM")
#: Ops TVM's importer handles outside its converter map.
_BUILTIN_OPS = frozenset({"If", "Constant"})


def load_onnx(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """Read and check an ONNX model.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, str or Path
        A loaded model or the path of a ``.onnx`` file.

    Raises
    ------
    ModelError
        If the file is missing, cannot be parsed, or fails ``onnx.checker``.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
        source = "model"
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise ModelError(f"ONNX model {str(path)!r} does not exist")
        try:
            model = onnx.load(str(path))
        except (DecodeError, ValueError, RuntimeError) as err:
            raise ModelError(f"{str(path)!r} is not a readable ONNX model: {err}") from err
        source = str(path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid model"
        raise ModelError(f"{source!r} fails the ONNX checker: {first}") from err
    return model


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = tuple(
        int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
        for d in tensor.shape.dim
    )
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    return TensorSpec(value.name, dims, dtype)


def model_signature(
    model: onnx.ModelProto, shape_dict: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's runtime inputs (initializers excluded) and outputs, in graph order.

    ``shape_dict`` overrides input shapes, as it does for :func:`from_onnx`.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_value_spec(v) for v in model.graph.input if v.name not in initializers]
    if shape_dict:
        unknown = sorted(set(shape_dict) - {s.name for s in inputs})
        if unknown:
            raise ModelError(
                f"shape given for unknown input(s) {unknown}; inputs are {[s.name for s in inputs]}"
            )
        inputs = [
            TensorSpec(s.name, tuple(int(d) for d in shape_dict[s.name]), s.dtype)
            if s.name in shape_dict
            else s
            for s in inputs
        ]
    return inputs, [_value_spec(v) for v in model.graph.output]


def _recurrent_converters() -> dict[str, type]:
    # imported only for models with recurrent nodes: it pulls in the recurrent kernels
    from .onnx_rnn import RECURRENT_CONVERTERS

    return dict(RECURRENT_CONVERTERS)


@contextlib.contextmanager
def _extra_converters(extra: Mapping[str, type]) -> Iterator[None]:
    """Temporarily add ONNX op converters to TVM's importer (it has no official hook)."""
    original = _onnx_frontend._get_convert_map
    _onnx_frontend._get_convert_map = lambda: {**original(), **extra}
    try:
        yield
    finally:
        _onnx_frontend._get_convert_map = original


def _check_supported(model: onnx.ModelProto, converters: Mapping[str, object]) -> None:
    for index, node in enumerate(model.graph.node):
        if node.op_type not in converters and node.op_type not in _BUILTIN_OPS:
            name = node.name or f"#{index}"
            raise UnsupportedError(
                f"ONNX node {name!r} (op {node.op_type}, domain {node.domain or 'ai.onnx'!r}) "
                "is not supported by TVM's ONNX importer or this package"
            )


def _folded(model: onnx.ModelProto, shape_dict: Mapping[str, tuple[int, ...]] | None):
    """``model`` with its input shapes fixed and constant subgraphs folded; a folding failure
    that is not the user's (a shape of the wrong rank is) logs a warning and keeps the model:
    TVM's importer then reports what it cannot take."""
    try:
        return fold_constants(model, shape_dict)
    except ModelError:
        raise
    except Exception as err:  # a folding bug must not block a model TVM may take as it is
        logger.warning("constant folding failed, importing the model unfolded: %s", err)
        return model


def from_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    fold: bool = True,
) -> tvm.IRModule:
    """Import an ONNX model into a target-neutral Relax module.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, str or Path
        The model or its ``.onnx`` path.
    shape_dict : mapping of str to tuple of int, optional
        Static shapes for inputs with symbolic dims.
    fold : bool
        First fix the input shapes and fold what is constant once they are fixed (shape
        subgraphs such as ``Shape -> Gather -> Concat -> Pad``, which TVM's importer rejects as
        dynamic): :func:`tvm_sparse_rnn.frontend.fold.fold_constants`.

    Returns
    -------
    tvm.IRModule
        Weights bound as constants; recurrent layers as placeholders. Build it with
        :func:`tvm_sparse_rnn.pipeline.build`.

    Raises
    ------
    ModelError
        Unreadable or invalid model, or a failure inside TVM's importer.
    UnsupportedError
        An ONNX node whose op no converter handles (the error names the node).
    """
    model = load_onnx(model_or_path)
    model_signature(model, shape_dict)  # validates shape_dict's names
    if fold:
        model = _folded(model, shape_dict)
    recurrent = any(node.op_type in RECURRENT_OPS for node in model.graph.node)
    extra = _recurrent_converters() if recurrent else {}
    with _extra_converters(extra):
        _check_supported(model, _onnx_frontend._get_convert_map())
        printed = io.StringIO()  # TVM's importer prints its errors; they go to the debug log
        try:
            with contextlib.redirect_stdout(printed):
                return _onnx_frontend.from_onnx(
                    model, shape_dict=dict(shape_dict) if shape_dict else None
                )
        except SparseRNNError:
            raise
        except Exception as err:  # TVM's importer raises many types (TVMError, ValueError, ...)
            logger.debug("TVM's importer printed: %s", printed.getvalue())
            message = str(err).strip().splitlines()
            raise ModelError(
                f"TVM's ONNX importer failed: {message[-1] if message else type(err).__name__}"
            ) from err


def dense_layer_names(model: onnx.ModelProto, count: int) -> list[str]:
    """ONNX node names of the ``count`` dense layers ``DenseToSparse`` numbered ``dense<i>``.

    Matched in graph order to the ``MatMul``/``Gemm`` nodes when the counts agree; otherwise
    the ``dense<i>`` names are kept.
    """
    names = [
        node.name or f"{node.op_type}#{i}"
        for i, node in enumerate(model.graph.node)
        if node.op_type in ("MatMul", "Gemm")
    ]
    return names if len(names) == count else [f"dense{i}" for i in range(count)]
