"""``tvm-sparse-rnn --help`` imports no optional or heavy package; optional imports name their
extra when missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tvm_sparse_rnn.errors import MissingDependencyError
from tvm_sparse_rnn.optional import require

_PROBE = """
import contextlib, io, json, sys
from tvm_sparse_rnn.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main({argv!r})
print(json.dumps({{"code": code, "loaded": {{m: m in sys.modules for m in {mods!r}}}}}))
"""


def _loaded_after(argv: list[str], modules: list[str]) -> dict[str, bool]:
    """Run ``main(argv)`` in a fresh interpreter; return which ``modules`` it imported."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv, mods=modules)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    return result["loaded"]


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--help"], ["run", "--help"]])
def test_help_does_not_import_onnxruntime_or_xgboost(argv):
    loaded = _loaded_after(argv, ["onnxruntime", "xgboost", "matplotlib"])
    assert loaded == {"onnxruntime": False, "xgboost": False, "matplotlib": False}


def test_help_does_not_import_onnx():
    loaded = _loaded_after(["--help"], ["onnx", "tvm.relax.frontend.onnx"])
    assert loaded == {"onnx": False, "tvm.relax.frontend.onnx": False}


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'tvm-sparse-rnn\[bench\]'"):
        require("matplotlib_not_a_real_module", "bench", "plots need matplotlib")
    with pytest.raises(MissingDependencyError, match="reinstall the package"):
        require("onnxruntime_not_a_real_module", None, "bench compares against onnxruntime")
    assert require("json", None, "x") is json
