"""What the dispatch pass decided for one layer: the kernel variant, its config, and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .cost_model import DEFAULT_CANDIDATES, CostParams


class KernelVariant(enum.StrEnum):
    """The kernel variants a placeholder can be lowered to."""

    SPARSE_DENSE = "sparse_dense"  # block-sparse X @ W.T (x86 or CUDA schedule)
    TENSOR_CORE = "tensor_core"  # CUDA float16: W loaded sparse, multiplied on tensor cores
    CSR_SPMM = "csr_spmm"  # x86 CSR kernel vectorized along the rows of X (unstructured W)
    CSR_VECTOR = "csr_vector"  # CUDA warp-per-row CSR in 16-byte groups (unstructured W, M <= 16)
    DENSE = "dense"  # R.matmul, scheduled by the target's default pipeline
    RECURRENT_X86 = "recurrent_x86"  # x86 projection + one-launch recurrent kernel
    PERSISTENT = "persistent"  # CUDA sparse persistent kernel, all steps in one launch
    PER_STEP = "per_step"  # CUDA per-step composition of Relax ops


@dataclass(frozen=True)
class KernelDecision:
    """One dispatch decision (logged, and printed by ``tvm-sparse-rnn inspect`` and ``compile``).

    Attributes
    ----------
    layer : str
        Layer name: ``dense<i>`` for a dense layer (program order), ``<node>[<direction>]`` for
        a direction of an ONNX recurrent node, ``<node>.W`` / ``<node>.R<g>`` for the linear
        layers of a recurrent lowering.
    variant : KernelVariant
        What runs.
    detail : str
        Shape and variant specifics (block size and fill, packing, persistent geometry).
    config : str
        Where the kernel's knobs came from (tuned record, shipped config, default) and their
        values; ``-`` for variants without knobs.
    reason : str
        Why this variant (the cost rule's numbers, or what rules the others out).
    """

    layer: str
    variant: KernelVariant
    detail: str
    config: str
    reason: str

    def row(self) -> list[str]:
        """The decision as table cells."""
        return [self.layer, self.variant.value, self.detail, self.config, self.reason]


#: Column names of :meth:`KernelDecision.row`.
DECISION_HEADER = ("layer", "kernel", "detail", "config", "why")


@dataclass(frozen=True)
class DispatchOptions:
    """User options of the dispatch (the CLI's ``--sparsity-threshold`` / ``--block-size``).

    Attributes
    ----------
    sparsity_threshold : float
        Minimum element-wise zero fraction of a weight (dense layer ``W``, recurrent ``W`` and
        ``R``) for a sparse kernel to be considered, in ``[0, 1]``.
    block_size : "auto" or tuple of int
        ``"auto"`` picks a block size per dense layer from ``candidates`` by the cost rule; a
        fixed ``(bs_r, bs_c)`` is used for every layer it divides.
    candidates : tuple of (int, int)
        Block sizes tried by ``"auto"``.
    cost_params : CostParams, optional
        Overrides the target's cost-rule constants.
    concurrent_directions : bool
        cuda: run both directions of a bidirectional layer in one persistent launch, each on
        half of the SMs, where a geometry fits (else, or when ``False``, one launch per
        direction, one after the other).
    half_accumulation : bool
        cuda, float16: persistent recurrences sum chunks of products in packed halves before
        their float32 accumulators (``PersistentPlan.fp16_chunk``,
        :mod:`tvm_sparse_rnn.kernels.cuda.persistent.planner`); ``False`` keeps every product
        in float32 (slower, less rounding).
    """

    sparsity_threshold: float = 0.5
    block_size: str | tuple[int, int] = "auto"
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES
    cost_params: CostParams | None = None
    concurrent_directions: bool = True
    half_accumulation: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.sparsity_threshold) <= 1.0:
            raise ValueError(f"sparsity_threshold must be in [0, 1], got {self.sparsity_threshold}")

    @property
    def density_threshold(self) -> float:
        """Largest density of a recurrent weight packed sparse (``1 - sparsity_threshold``)."""
        return 1.0 - float(self.sparsity_threshold)
