"""Shared pytest configuration: the ``gpu`` marker skips without a CUDA device."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def has_cuda() -> bool:
    """Whether TVM sees a CUDA device here."""
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
