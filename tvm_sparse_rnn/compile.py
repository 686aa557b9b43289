"""Compile a Relax module into a self-contained shared library and run it by ONNX names.

:func:`compile_onnx` writes two files:

* ``OUT.so`` -- the Relax VM executable with every kernel and weight inside (for CUDA the kernel
  source is packed in and compiled when the library is loaded on a GPU machine). A user needs
  only TVM's runtime to run it (``TVM_USE_RUNTIME_LIB=1`` works;
  :mod:`tvm_sparse_rnn.runtime.compiled` loads it by ONNX names)::

      lib = tvm.runtime.load_module("OUT.so")
      vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())      # tvm.cuda() for a cuda build
      y = vm["main"](tvm.runtime.tensor(x))

* ``OUT.json`` -- the signature: target, and the ONNX names, shapes and dtypes of the inputs (in
  ``main``'s parameter order) and outputs, so that :func:`load_compiled` (and
  ``tvm-sparse-rnn run``) can key ``.npz`` files by the model's own names and check them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import onnx
import tvm
from tvm.target import Target

from .frontend.onnx import (
    dense_layer_names,
    from_onnx,
    load_onnx,
    model_signature,
)
from .pipeline import build, sparse_pipeline
from .runtime.compiled import CompiledModel, load_compiled, load_executable
from .signature import SIGNATURE_VERSION, TensorSpec, signature_path
from .target import resolve_target
from .transform import Precision
from .transform.dispatch import DispatchOptions, KernelDecision
from .transform.dispatch.cost_model import DEFAULT_CANDIDATES, CostParams

logger = logging.getLogger(__name__)


def _options(
    sparsity_threshold: float,
    block_size: str | tuple[int, int],
    candidates: tuple[tuple[int, int], ...],
    params: CostParams | None,
    concurrent_directions: bool,
    half_accumulation: bool,
) -> DispatchOptions:
    return DispatchOptions(
        sparsity_threshold=sparsity_threshold,
        block_size=block_size,
        candidates=candidates,
        cost_params=params,
        concurrent_directions=concurrent_directions,
        half_accumulation=half_accumulation,
    )


def _name_layers(model: onnx.ModelProto, decisions: list[KernelDecision]) -> list[KernelDecision]:
    """Decisions with the ``dense<i>`` layers renamed after their ONNX nodes."""
    dense = [d for d in decisions if d.layer.startswith("dense")]
    names = dict(zip((d.layer for d in dense), dense_layer_names(model, len(dense)), strict=True))
    return [dataclasses.replace(d, layer=names.get(d.layer, d.layer)) for d in decisions]


def plan_onnx(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    *,
    target: str | dict | Target,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    sparsity_threshold: float = 0.5,
    block_size: str | tuple[int, int] = "auto",
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
    params: CostParams | None = None,
    tuning_logs: str | os.PathLike | None = None,
    fold: bool = True,
    dtype: Precision | str = Precision.FLOAT32,
    concurrent_directions: bool = True,
    half_accumulation: bool = True,
) -> list[KernelDecision]:
    """The kernel decisions :func:`build_onnx` takes for the model, without building it.

    Runs the same import and the same dispatch pass (``tvm-sparse-rnn inspect`` prints them).
    """
    model = load_onnx(model_or_path)
    options = _options(
        sparsity_threshold, block_size, candidates, params, concurrent_directions, half_accumulation
    )
    pipeline = sparse_pipeline(target, options, tuning_logs, dtype)
    mod = from_onnx(model, shape_dict=shape_dict, fold=fold)
    with pipeline.target:
        pipeline.front()(mod)
    return _name_layers(model, pipeline.decisions)


def build_onnx_with_decisions(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    *,
    target: str | dict | Target,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    sparsity_threshold: float = 0.5,
    block_size: str | tuple[int, int] = "auto",
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
    params: CostParams | None = None,
    tuning_logs: str | os.PathLike | None = None,
    sparse: bool = True,
    fold: bool = True,
    dtype: Precision | str = Precision.FLOAT32,
    cuda_graph: bool = True,
    concurrent_directions: bool = True,
    half_accumulation: bool = True,
) -> tuple[tvm.runtime.Executable, list[TensorSpec], list[TensorSpec], list[KernelDecision]]:
    """:func:`build_onnx` plus the kernel decisions of the dispatch pass."""
    model = load_onnx(model_or_path)
    threshold = sparsity_threshold if sparse else 1.0
    options = _options(
        threshold, block_size, candidates, params, concurrent_directions, half_accumulation
    )
    mod = from_onnx(model, shape_dict=shape_dict, fold=fold)
    executable, decisions = build(mod, target, options, tuning_logs, dtype, cuda_graph)
    inputs, outputs = model_signature(model, shape_dict)
    return executable, inputs, outputs, _name_layers(model, decisions)


def build_onnx(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    **options: object,
) -> tuple[tvm.runtime.Executable, list[TensorSpec], list[TensorSpec]]:
    """Import, dispatch and build an ONNX model in memory.

    Parameters
    ----------
    model_or_path : onnx.ModelProto or path
        The pruned model.
    **options
        ``target`` (``"llvm"`` or ``"cuda"``, required), ``shape_dict``,
        ``sparsity_threshold``, ``block_size``, ``candidates``, ``params`` (the dispatch options,
        :class:`~tvm_sparse_rnn.transform.dispatch.DispatchOptions`), ``tuning_logs`` (a tuning
        database whose best records the kernels use, else shipped configs, else defaults),
        ``sparse`` (``False`` builds every layer dense, for comparison), ``fold`` (fold
        constant shape subgraphs first, :func:`tvm_sparse_rnn.frontend.from_onnx`) and ``dtype``
        (``"float16"`` computes in half precision, :class:`~tvm_sparse_rnn.transform.ToFloat16`;
        inputs and outputs keep the model's dtypes), ``cuda_graph`` (cuda: replay the model's
        kernels as CUDA graphs, :func:`tvm_sparse_rnn.pipeline.build`),
        ``concurrent_directions`` (cuda: both directions of a bidirectional recurrent layer in
        one persistent launch where they fit, ``False``: one launch after the other),
        ``half_accumulation`` (cuda, float16: persistent recurrences sum chunks of products in
        packed halves, ``False``: every product in float32).

    Returns
    -------
    tuple
        ``(executable, inputs, outputs)``: the Relax VM executable and the ONNX signature.
    """
    return build_onnx_with_decisions(model_or_path, **options)[:3]


def compile_onnx(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike,
    *,
    target: str | dict | Target,
    **options: object,
) -> tuple[Path, list[KernelDecision]]:
    """Build an ONNX model (:func:`build_onnx`) and export it with its signature.

    Parameters
    ----------
    model_or_path : onnx.ModelProto or path
        The pruned model.
    output : path
        Library to write (``.so``); the signature goes beside it (:func:`signature_path`).
    target : str, dict or Target
        ``"llvm"`` or ``"cuda"``.
    **options
        Keyword options of :func:`build_onnx`.

    Returns
    -------
    tuple
        ``(library, decisions)``: the written library and the kernel decisions.
    """
    target = resolve_target(target)
    executable, inputs, outputs, decisions = build_onnx_with_decisions(
        model_or_path, target=target, **options
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(output))
    signature = {
        "version": SIGNATURE_VERSION,
        "target": target.kind.name,
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
    }
    signature_path(output).write_text(json.dumps(signature, indent=2) + "\n")
    logger.info("wrote %s and %s", output, signature_path(output))
    return output, decisions


__all__ = [
    "CompiledModel",
    "build_onnx",
    "build_onnx_with_decisions",
    "compile_onnx",
    "load_compiled",
    "load_executable",
    "plan_onnx",
    "signature_path",
]
