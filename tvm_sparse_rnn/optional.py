"""Lazy imports of optional packages, failing with a message that names the pip extra.

Optional packages (``onnxruntime`` for ``bench``, ``xgboost`` for tuning's cost model,
``matplotlib`` for plots, ``torch`` for torch weights) are imported where they are used, not at
module level, so that ``tvm-sparse-rnn --help`` and every command that does not need them work
without them (and without their import cost).

Examples
--------
>>> ort = require("onnxruntime", "test", "bench compares against onnxruntime")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from .errors import MissingDependencyError

logger = logging.getLogger(__name__)

#: pip distribution name per module where the two differ.
DISTRIBUTIONS = {"xgboost": "xgboost-cpu", "onnxslim": "onnxslim"}


def require(module: str, extra: str | None, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming how to install it.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"onnxruntime"``.
    extra : str or None
        The ``tvm-sparse-rnn[extra]`` that installs it; ``None`` for a core dependency (the
        message then asks to reinstall the package).
    purpose : str
        What needs it, for the message (``"bench compares against onnxruntime"``).

    Raises
    ------
    MissingDependencyError
        If ``module`` (or one of its own dependencies) cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        dist = DISTRIBUTIONS.get(module, module)
        how = (
            f"pip install 'tvm-sparse-rnn[{extra}]' (or pip install {dist})"
            if extra
            else f"pip install {dist} (a dependency of tvm-sparse-rnn: reinstall the package)"
        )
        raise MissingDependencyError(
            f"{purpose}: the {module!r} package is not importable ({err}); {how}"
        ) from err
