"""Sparse recurrent layers: the GPU persistent RNN kernel (planner, packing, guided layout).

Public API (GPU persistent kernel)
----------------------------------
build_persistent_rnn, persistent_prim_func, PersistentRNN
    Build and run ``h_t = f(R h_{t-1} + u_t)`` in one launch (:mod:`.persistent`).
plan_persistent, PersistentPlan, DeviceLimits, H100
    Capacity planner (:mod:`.planner`).
pack, PackedWeights
    Register layout of ``R`` (:mod:`.packing`), guided bank-aware order (:mod:`.layout`).
conflicts_per_step
    CPU model of the shared-memory bank conflicts (:mod:`.bank_conflicts`).
"""

from __future__ import annotations

from .bank_conflicts import conflicts_per_step
from .packing import PackedWeights, pack
from .persistent import PersistentRNN, build_persistent_rnn, persistent_prim_func
from .planner import H100, DeviceLimits, PersistentPlan, plan_persistent

__all__ = [
    "H100",
    "DeviceLimits",
    "PackedWeights",
    "PersistentPlan",
    "PersistentRNN",
    "build_persistent_rnn",
    "conflicts_per_step",
    "pack",
    "persistent_prim_func",
    "plan_persistent",
]
