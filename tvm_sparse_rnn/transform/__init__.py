"""Relax transformations: pruned dense layers into block-sparse kernels; CPU dense schedule."""

from .dispatch.cost_model import (
    COST_PARAMS,
    DEFAULT_CANDIDATES,
    BlockStats,
    CostParams,
    LayerPlan,
    choose_block_size,
    plan_layer,
)
from .dense_to_sparse import DenseLayer, DenseToSparse
from ..kernels.x86.dense import ScheduleDenseCPU, cpu_pipeline

__all__ = [
    "COST_PARAMS",
    "DEFAULT_CANDIDATES",
    "BlockStats",
    "CostParams",
    "DenseLayer",
    "DenseToSparse",
    "LayerPlan",
    "ScheduleDenseCPU",
    "choose_block_size",
    "cpu_pipeline",
    "plan_layer",
]
