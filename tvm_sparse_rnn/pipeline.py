"""The registered Relax pipeline ``"tvm_sparse_rnn"`` and :func:`build`.

One pipeline serves ``compile``, the CLI, the tuner and the benchmarks::

    ToFloat16 (--dtype float16)   matmuls, convolutions and what follows them in float16
    Conv1dToLinear                constant-weight 1-D convolutions -> im2col + linear placeholders
                                  (cuda: float16 ones, for the tensor-core GEMM)
    DenseToSparse                 constant-weight dense layers -> linear placeholders
    FuseLinearEpilogue            bias add, ReLU, cast after a linear layer -> its epilogue
    DispatchKernels(target)       every placeholder -> the kernel variant for the target
    AccumulateInFloat32 (float16) the matmuls and convolutions left dense accumulate in float32
    TVM's default passes          after ConstantTakeToSlice (a take of one constant index ->
                                  slice + squeeze, which fusion absorbs): library dispatch,
                                  legalize (+ fusion after CanonicalizeBindings; on cuda
                                  ScheduleMatmulCUDA, dense float16 matmuls on tensor cores,
                                  then dlight),
                                  dataflow lowering, finalization; on llvm CancelTransposes,
                                  FeatureMajorAttention, FoldLayoutChains (then common
                                  subexpressions merged: two transposes of the input), FastMath and
                                  VectorLayerNorm before legalize, ScheduleDenseCPU and
                                  ScheduleRemainderCPU after

Users who assemble their own pipeline run the passes above TVM's (:meth:`SparsePipeline.front`)
ahead of their own and build with the TIR pipeline
:data:`~tvm_sparse_rnn.kernels.cuda.persistent.cooperative.PIPELINE_NAME` (it launches the
persistent kernels cooperatively; a plain ``tvm.compile`` of such a module builds but faults at
run time)::

    mod = relax.get_pipeline("tvm_sparse_rnn", target=target)(mod)
    ex = tvm.compile(mod, target, relax_pipeline=None, tir_pipeline=tir_pipeline(target))
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_backend
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.target import Target

from .errors import TuningError
from .kernels.cuda.matmul_mma import VECTOR_HALVES
from .kernels.cuda.persistent import cooperative
from .kernels.x86.vector import vector_lanes
from .target import is_cuda, resolve_target
from .transform import (
    AccumulateInFloat32,
    CancelTransposes,
    ConstantTakeToSlice,
    Conv1dToLinear,
    DenseToSparse,
    DispatchKernels,
    DispatchOptions,
    FastMath,
    FeatureMajorAttention,
    FoldLayoutChains,
    FuseLinearEpilogue,
    Precision,
    ScheduleDenseCPU,
    ScheduleMatmulCUDA,
    ScheduleRemainderCPU,
    ToFloat16,
    VectorLayerNorm,
)
from .transform.dispatch import KernelDecision
from .transform.to_float16 import parse_precision

logger = logging.getLogger(__name__)

PIPELINE_NAME = "tvm_sparse_rnn"

#: TVM's pass-context switch of ``RewriteCUDAGraph`` (in the cuda backend's finalize passes).
CUDA_GRAPH_CONFIG = "relax.backend.use_cuda_graph"
#: TVM's pass-context switch of ``InjectPTXAsyncCopy``: the asynchronous stages of software
#: pipelines (:mod:`~tvm_sparse_rnn.kernels.cuda.matmul_mma`) copy with ``cp.async``.
ASYNC_COPY_CONFIG = "tirx.use_async_copy"


def tir_pipeline(target: Target) -> str:
    """The TIR pipeline of ``target``: the cooperative-launch pipeline on cuda, else default."""
    return cooperative.register() if is_cuda(target) else "default"


def _conv1d_to_linear(target: Target) -> tvm.transform.Pass:
    """:class:`Conv1dToLinear` for ``target``: on cuda float16 convolutions only, unfolded into
    16-byte rows (the ``mma.sync`` GEMM's operand alignment)."""
    if is_cuda(target):
        return Conv1dToLinear(dtypes=("float16",), column_multiple=VECTOR_HALVES)
    return Conv1dToLinear()


def _canonicalize_before_fusion(passes: list[tvm.transform.Pass]) -> list[tvm.transform.Pass]:
    """``passes`` with ``CanonicalizeBindings`` and ``DeadCodeElimination`` ahead of
    ``FuseOps``: the lowerings and legalization leave var-to-var bindings (``lv_1 = lv1``)
    between a kernel's output transpose and the element-wise op that follows, and ``FuseOps``
    does not fuse across them (the BERT-like encoder: 3 kernels and full copies fewer per
    layer); outputs nobody reads (a recurrent layer's ``Y_h``) give the ops they read a second
    consumer, which stops the fusion of a diamond (a bidirectional layer's output, from the
    kernel layout to the next layer's input: 5 kernels -> 1 per DeepSpeech2-like GRU layer)."""
    names = [pass_.info.name for pass_ in passes]
    at = names.index("FuseOps")
    return [
        *passes[:at],
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
        *passes[at:],
    ]


def _tensor_cores_first(passes: list[tvm.transform.Pass]) -> list[tvm.transform.Pass]:
    """``passes`` with :data:`ScheduleMatmulCUDA` just before dlight's ``ApplyDefaultSchedule``
    (whose ``Matmul`` rule never tensorizes for ``sm_90a``)."""
    names = [pass_.info.name for pass_ in passes]
    at = names.index("ApplyDefaultSchedule")
    return [*passes[:at], ScheduleMatmulCUDA, *passes[at:]]


def _default_passes(target: Target) -> list[tvm.transform.Pass]:
    """TVM's default Relax passes of ``target``'s backend, after :class:`ConstantTakeToSlice`
    (+ the CPU schedules; on cuda dense matmuls on tensor cores)."""
    p = cuda_backend if is_cuda(target) else cpu_backend
    legalize = _canonicalize_before_fusion(p.legalize_passes(target))
    if is_cuda(target):
        legalize = _tensor_cores_first(legalize)
    else:
        lanes = vector_lanes(target, 32)
        legalize = [
            CancelTransposes,
            FeatureMajorAttention(lanes),
            FoldLayoutChains,
            relax.transform.EliminateCommonSubexpr(),
            FastMath(lanes),
            VectorLayerNorm(lanes),
            *legalize,
            ScheduleDenseCPU,
            ScheduleRemainderCPU,
        ]
    return [
        ConstantTakeToSlice,
        *p.library_dispatch_passes(target),
        *legalize,
        *p.dataflow_lower_passes(target),
        *p.finalize_passes(target),
    ]


@dataclass
class SparsePipeline:
    """The pipeline's passes for one target, keeping the dispatch decisions of its last run.

    Attributes
    ----------
    target : Target
        Resolved target.
    dispatch : DispatchKernels
        The dispatch pass (its :attr:`~DispatchKernels.decisions` after a run).
    precision : Precision
        The dtype the model computes in (:class:`~tvm_sparse_rnn.transform.ToFloat16`).
    """

    target: Target
    dispatch: DispatchKernels
    precision: Precision = Precision.FLOAT32

    @property
    def decisions(self) -> list[KernelDecision]:
        """The kernel decisions of the last run."""
        return self.dispatch.decisions

    def front(self) -> tvm.transform.Pass:
        """Mark and dispatch only (what ``inspect`` runs); 1-D convolutions become linear layers
        first (:class:`~tvm_sparse_rnn.transform.Conv1dToLinear`; on cuda the float16 ones); in
        float16 the model is cast before and its dense matmuls accumulate in float32 after."""
        float16 = self.precision is Precision.FLOAT16
        passes = [
            *([ToFloat16()] if float16 else []),
            _conv1d_to_linear(self.target),
            DenseToSparse(),
            FuseLinearEpilogue(),
            self.dispatch,
            *([AccumulateInFloat32()] if float16 else []),
        ]
        return tvm.transform.Sequential(passes, name="sparse_dispatch")

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        with self.target:
            return tvm.transform.Sequential(
                [self.front(), *_default_passes(self.target)], name=PIPELINE_NAME
            )(mod)


def check_tuning_logs(path: str | os.PathLike | None) -> Path | None:
    """``path`` as a Path, or ``None``.

    Raises
    ------
    TuningError
        If ``path`` is given but is not a directory.
    """
    if path is None:
        return None
    if not Path(path).is_dir():
        raise TuningError(f"tuning logs {str(path)!r} is not a directory")
    return Path(path)


def sparse_pipeline(
    target: str | dict | Target,
    options: DispatchOptions | None = None,
    tuning_logs: str | os.PathLike | None = None,
    dtype: Precision | str = Precision.FLOAT32,
) -> SparsePipeline:
    """The package's pipeline for ``target`` (see the module docstring).

    Raises
    ------
    UnsupportedError
        If ``dtype`` is not a :class:`~tvm_sparse_rnn.transform.Precision`.
    """
    target = resolve_target(target)
    dispatch = DispatchKernels(target, options, check_tuning_logs(tuning_logs))
    return SparsePipeline(target, dispatch, parse_precision(dtype))


@relax.register_pipeline(PIPELINE_NAME)
def _registered(
    target: str | dict | Target | None = None,
    options: DispatchOptions | None = None,
    tuning_logs: str | os.PathLike | None = None,
    dtype: Precision | str = Precision.FLOAT32,
) -> tvm.transform.Pass:
    """``relax.get_pipeline("tvm_sparse_rnn", target=..., options=..., tuning_logs=...,
    dtype=...)``."""
    pipeline = sparse_pipeline(target or Target.current(), options, tuning_logs, dtype)

    @tvm.transform.module_pass(opt_level=0, name=PIPELINE_NAME)
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return pipeline(mod)

    return _pass


def _with_config(settings: dict[str, object]) -> tvm.transform.PassContext:
    """The caller's pass context with ``settings`` added."""
    current = tvm.transform.PassContext.current()
    return tvm.transform.PassContext(
        opt_level=current.opt_level,
        required_pass=list(current.required_pass),
        disabled_pass=list(current.disabled_pass),
        instruments=list(current.instruments),
        config={**current.config, **settings},
    )


def build(
    mod: tvm.IRModule,
    target: str | dict | Target,
    options: DispatchOptions | None = None,
    tuning_logs: str | os.PathLike | None = None,
    dtype: Precision | str = Precision.FLOAT32,
    cuda_graph: bool = True,
) -> tuple[tvm.runtime.Executable, list[KernelDecision]]:
    """Compile a Relax module (with placeholders) for ``target`` with the package's pipeline.

    Parameters
    ----------
    mod : tvm.IRModule
        Relax module, e.g. from :func:`tvm_sparse_rnn.frontend.from_onnx`.
    target : str, dict or Target
        ``"llvm"`` or ``"cuda"``.
    options : DispatchOptions, optional
        Sparsity threshold and block-size choice.
    tuning_logs : path, optional
        Tuning database whose best records the kernels use.
    dtype : Precision or str
        ``"float32"`` (default) or ``"float16"`` (:class:`~tvm_sparse_rnn.transform.ToFloat16`).
    cuda_graph : bool
        On cuda, capture the model's static kernel sequences into CUDA graphs on the first call
        and replay them after (TVM's ``RewriteCUDAGraph``; ``relax.backend.use_cuda_graph``): a
        call then costs one graph launch per region instead of a launch per kernel. Turn it off
        to capture the calls in a graph of one's own (``torch.cuda.graph``). Ignored on llvm.

    Returns
    -------
    tuple
        ``(executable, decisions)``: the Relax VM executable and the kernel decisions.
    """
    pipeline = sparse_pipeline(target, options, tuning_logs, dtype)
    target = pipeline.target
    settings = {
        CUDA_GRAPH_CONFIG: cuda_graph and is_cuda(target),
        ASYNC_COPY_CONFIG: is_cuda(target),
    }
    with target, _with_config(settings):
        executable = tvm.compile(
            mod, target=target, relax_pipeline=pipeline, tir_pipeline=tir_pipeline(target)
        )
    return executable, pipeline.decisions
