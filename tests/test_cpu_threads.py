"""Sizing of TVM's CPU thread pool (tvm_sparse_rnn.cpu_threads)."""

from __future__ import annotations

import os

from tvm_sparse_rnn import cpu_threads


def test_physical_core_count_is_plausible() -> None:
    count = cpu_threads.physical_core_count()
    assert 1 <= count <= (os.cpu_count() or 1)


def test_configure_respects_user_setting(monkeypatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert cpu_threads.configure_cpu_threads() is None
    assert os.environ["TVM_NUM_THREADS"] == "3" and cpu_threads.pool_threads() == 3
    monkeypatch.delenv("TVM_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads.configure_cpu_threads() is None and cpu_threads.pool_threads() == 5
    assert "TVM_NUM_THREADS" not in os.environ


def test_configure_sets_physical_cores(monkeypatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "physical_core_count", lambda: 7)
    assert cpu_threads.configure_cpu_threads() == 7
    assert os.environ["TVM_NUM_THREADS"] == "7" and cpu_threads.pool_threads() == 7
