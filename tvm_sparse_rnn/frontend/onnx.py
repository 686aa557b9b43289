"""ONNX import of pruned models: TVM's Relax ONNX frontend + recurrent converters + DenseToSparse.

:func:`from_onnx` wraps ``tvm.relax.frontend.onnx.from_onnx``. TVM's importer has no converter for
ONNX ``RNN``/``GRU``/``LSTM`` and no hook to add one, so while importing it patches the module-level
converter map with :data:`tvm_sparse_rnn.frontend.onnx_rnn.RECURRENT_CONVERTERS` (restored on
exit). The import runs inside the target's scope (the recurrent converters pick their kernels by
target), then :class:`~tvm_sparse_rnn.transform.DenseToSparse` rewrites the pruned dense layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm
from google.protobuf.message import DecodeError
from tvm.relax.frontend.onnx import onnx_frontend as _onnx_frontend
from tvm.target import Target

from ..errors import ModelError, SparseRNNError, UnsupportedError
from ..target import resolve_target
from ..transform import DenseLayer, DenseToSparse
from ..transform.dispatch.cost_model import DEFAULT_CANDIDATES, CostParams

logger = logging.getLogger(__name__)

#: ONNX ops converted by :mod:`tvm_sparse_rnn.frontend.onnx_rnn`.
RECURRENT_OPS = ("RNN", "GRU", "LSTM")
#: Ops TVM's importer handles outside its converter map.
_BUILTIN_OPS = frozenset({"If", "Constant"})


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    Attributes
    ----------
    name : str
        The ONNX value name.
    shape : tuple of (int or str)
        Static dims as ints; symbolic dims by their ONNX name (``"?"`` when unnamed).
    dtype : str
        numpy dtype name, e.g. ``"float32"``.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict:
        """A JSON-serializable dict."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: Mapping) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return cls(obj["name"], tuple(obj["shape"]), obj["dtype"])


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


def import_relax(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    target: str | dict | Target,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
) -> tvm.IRModule:
    """Import an ONNX model into Relax without rewriting dense layers.

    Parameters are those of :func:`from_onnx`. Weights are bound as constants; the recurrent
    layers are already mapped to this package's recurrent ops.
    """
    model = load_onnx(model_or_path)
    target = resolve_target(target)
    model_signature(model, shape_dict)  # validates shape_dict's names
    recurrent = any(node.op_type in RECURRENT_OPS for node in model.graph.node)
    extra = _recurrent_converters() if recurrent else {}
    with _extra_converters(extra), target:
        _check_supported(model, _onnx_frontend._get_convert_map())
        try:
            return _onnx_frontend.from_onnx(
                model, shape_dict=dict(shape_dict) if shape_dict else None
            )
        except SparseRNNError:
            raise
        except Exception as err:  # TVM's importer raises many types (TVMError, ValueError, ...)
            message = str(err).strip().splitlines()
            raise ModelError(
                f"TVM's ONNX importer failed: {message[-1] if message else type(err).__name__}"
            ) from err


def from_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    target: str | dict | Target,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    sparsity_threshold: float = 0.5,
    block_size: str | tuple[int, int] = "auto",
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
    params: CostParams | None = None,
    config: object = None,
) -> tvm.IRModule:
    """Import a pruned ONNX model into Relax with its sparse layers rewritten.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, str or Path
        The model or its ``.onnx`` path.
    target : str, dict or Target
        ``"llvm"`` or ``"cuda"`` (see :func:`tvm_sparse_rnn.target.resolve_target`).
    shape_dict : mapping of str to tuple of int, optional
        Static shapes for inputs with symbolic dims.
    sparsity_threshold : float
        Minimum element-wise zero fraction for a dense layer to be considered for sparse.
    block_size : "auto" or tuple of int
        Per-layer choice by the cost rule, or one fixed ``(bs_r, bs_c)``.
    candidates : tuple of (int, int)
        Block sizes tried by ``"auto"``.
    params : CostParams, optional
        Overrides the target's cost-rule constants (:mod:`tvm_sparse_rnn.transform.block_size`).
    config : object, optional
        Schedule configuration for the sparse kernels.

    Returns
    -------
    tvm.IRModule
        The Relax module. Compile it with :func:`tvm_sparse_rnn.compile.build` (or
        ``tvm.compile(mod, target, tir_pipeline=tvm_sparse_rnn.rnn.persistent_relax.tir_pipeline(
        target))``): on cuda, pruned ``RNN``/``GRU``/``LSTM`` layers use the persistent kernel,
        whose grid barrier needs the cooperative launch that pipeline adds; a plain
        ``tvm.compile`` builds, but the kernel then fails at run time with
        ``cudaErrorLaunchFailure``.

    Raises
    ------
    ModelError
        Unreadable or invalid model, or a failure inside TVM's importer.
    UnsupportedError
        An ONNX node whose op no converter handles (the error names the node).
    """
    target = resolve_target(target)
    mod = import_relax(model_or_path, target=target, shape_dict=shape_dict)
    rewrite = DenseToSparse(
        target,
        sparsity_threshold=sparsity_threshold,
        block_size=block_size,
        candidates=candidates,
        params=params,
        config=config,
    )
    with target:
        return rewrite(mod)


def _string_attr(node: onnx.NodeProto, name: str) -> str:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr).decode()
    return ""


def analyze_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    target: str | dict | Target,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    sparsity_threshold: float = 0.5,
    block_size: str | tuple[int, int] = "auto",
    params: CostParams | None = None,
) -> list[tuple[str, DenseLayer]]:
    """Per dense layer: its ONNX node name and the decision :func:`from_onnx` would take.

    Layers are matched in graph order to the ONNX ``MatMul``/``Gemm`` nodes, with or without the
    input projections of ``RNN``/``GRU``/``LSTM`` nodes (``<node>.W``), whichever count agrees;
    otherwise they are named ``dense<i>``.
    """
    model = load_onnx(model_or_path)
    target = resolve_target(target)
    mod = import_relax(model, target=target, shape_dict=shape_dict)
    with target:
        layers = DenseToSparse(
            target, sparsity_threshold=sparsity_threshold, block_size=block_size, params=params
        ).analyze(mod)
    dense_nodes, with_projections = [], []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}#{i}"
        if node.op_type in ("MatMul", "Gemm"):
            dense_nodes.append(name)
            with_projections.append(name)
        elif node.op_type in RECURRENT_OPS:  # input projection(s) X @ W^T, if emitted as matmul
            directions = {"bidirectional": 2}.get(_string_attr(node, "direction"), 1)
            with_projections += (
                [f"{name}.W"] if directions == 1 else [f"{name}.W_fw", f"{name}.W_bw"]
            )
    names = next(
        (c for c in (with_projections, dense_nodes) if len(c) == len(layers)),
        [f"dense{layer.index}" for layer in layers],
    )
    return list(zip(names, layers, strict=True))
