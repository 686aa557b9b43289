"""DeepSparse worker for ``bench_cpu_models.py``, run by the python of DeepSparse's own venv.

DeepSparse 1.8.0 pins ``onnx<1.15``, so it cannot share the package's environment. The worker
compiles ``MODEL.onnx`` for ``BATCH`` rows, loads the inputs (``arr_0``, ... of ``FEEDS.npz`` in
the model's input order), prints ``{"ready": true}`` and then answers one JSON request per stdin
line with one JSON line on stdout:

* ``{"op": "time", "number": N}`` -> ``{"seconds": S}``, wall time of ``N`` back-to-back calls;
* ``{"op": "outputs", "path": P}`` -> ``{"ok": true}`` after writing the outputs to ``P`` (npz);
* ``{"op": "quit"}`` -> ``{"ok": true}``, then exits.

Usage (by the benchmark)::

    .venvs/deepsparse/bin/python benchmarks/deepsparse_worker.py MODEL.onnx FEEDS.npz BATCH
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

#: The protocol channel: the original stdout. File descriptor 1 is pointed at stderr so that
#: banners printed by DeepSparse (Python or C++) cannot corrupt the replies.
CHANNEL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


def reply(payload: dict) -> None:
    """Write one JSON line to the benchmark."""
    CHANNEL.write(json.dumps(payload) + "\n")
    CHANNEL.flush()


def main() -> None:
    model, feeds_path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        from deepsparse import compile_model

        engine = compile_model(model, batch_size=batch)
        with np.load(feeds_path) as data:
            inputs = [data[f"arr_{i}"] for i in range(len(data.files))]
        engine.run(inputs)
    except Exception as err:  # report any failure to the benchmark, which skips the engine
        reply({"ready": False, "error": f"{type(err).__name__}: {err}"})
        return
    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "time":
            start = time.perf_counter()
            for _ in range(request["number"]):
                engine.run(inputs)
            reply({"seconds": time.perf_counter() - start})
        elif request["op"] == "outputs":
            np.savez(request["path"], *engine.run(inputs))
            reply({"ok": True})
        else:
            reply({"ok": True})
            return


if __name__ == "__main__":
    main()
