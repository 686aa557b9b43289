"""Size TVM's CPU thread pool to the machine's physical cores.

TVM's runtime (``threading::MaxConcurrency``) uses ``hardware_concurrency() / 2`` threads on x86
when neither ``TVM_NUM_THREADS`` nor ``OMP_NUM_THREADS`` is set, assuming two hyper-threads per
core. On machines without SMT (most cloud VMs expose one thread per vCPU) that leaves half the
cores idle: on the 2-vCPU CI machine every ``T.parallel`` loop ran on one thread.
:func:`configure_cpu_threads` (called when :mod:`tvm_sparse_rnn` is imported) sets
``TVM_NUM_THREADS`` to the number of physical cores this process may run on, unless the user set
either variable. It must run before TVM's thread pool is first used (its size is fixed then);
child processes (MetaSchedule's measurement workers) inherit it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_TOPOLOGY = Path("/sys/devices/system/cpu")


def physical_core_count() -> int:
    """Number of distinct physical cores among the CPUs this process may run on.

    Reads ``/sys/devices/system/cpu/cpu*/topology`` (Linux); elsewhere falls back to TVM's own
    assumption (half the logical CPUs, at least one).
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cores = set()
    for cpu in cpus:
        topo = _TOPOLOGY / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, (os.cpu_count() or 2) // 2)
        cores.add((package, core))
    return len(cores) or max(1, (os.cpu_count() or 2) // 2)


def configure_cpu_threads() -> int | None:
    """Set ``TVM_NUM_THREADS`` to :func:`physical_core_count` unless it (or
    ``OMP_NUM_THREADS``) is already set.

    Returns
    -------
    int or None
        The thread count set, or ``None`` when the user's setting was kept.
    """
    if "TVM_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return None
    count = physical_core_count()
    os.environ["TVM_NUM_THREADS"] = str(count)
    logger.debug("TVM_NUM_THREADS=%d (physical cores)", count)
    return count


def pool_threads() -> int:
    """Threads TVM's pool runs parallel loops on (``TVM_NUM_THREADS``, ``OMP_NUM_THREADS``,
    else :func:`physical_core_count`)."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return physical_core_count()
