"""Helpers shared by tests and benchmarks: seeded random sparse weights and references."""

from __future__ import annotations

import numpy as np

from .bsr import BSRWeight

#: (rtol, atol) per dtype for comparing against a float64 reference.
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2)}


def random_bsr(
    n: int,
    k: int,
    block_size: tuple[int, int],
    density: float,
    dtype: str = "float32",
    seed: int = 0,
) -> BSRWeight:
    """A seeded random block-sparse ``(n, k)`` weight.

    Parameters
    ----------
    n, k : int
        Dense shape.
    block_size : tuple of int
        ``(bs_r, bs_c)``; must divide ``(n, k)``.
    density : float
        Fraction of blocks kept, in ``[0, 1]``; blocks are drawn without replacement.
    dtype : str
        Value dtype.
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    """
    bs_r, bs_c = block_size
    rng = np.random.default_rng(seed)
    rows, cols = n // bs_r, k // bs_c
    total = rows * cols
    keep = np.zeros(total, bool)
    keep[rng.choice(total, size=round(density * total), replace=False)] = True
    keep = keep.reshape(rows, cols)
    r, c = np.nonzero(keep)
    data = rng.uniform(-1, 1, size=(r.size, bs_r, bs_c)).astype(dtype)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return BSRWeight(data, c, indptr, (n, k))


def reference_sparse_dense(x: np.ndarray, weight: BSRWeight) -> np.ndarray:
    """``x @ W.T`` in float64 through scipy, as ``(M, N)`` float64."""
    return np.asarray(weight.to_scipy().astype(np.float64) @ x.astype(np.float64).T).T


def random_recurrent_weights(
    kind: str,
    hidden_size: int,
    input_size: int,
    num_directions: int = 1,
    density: float = 0.1,
    input_density: float = 1.0,
    peepholes: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded float32 weights of an ONNX ``RNN``/``GRU``/``LSTM`` layer with a pruned ``R``.

    Parameters
    ----------
    kind : str
        ``"RNN"``, ``"GRU"`` or ``"LSTM"``.
    hidden_size, input_size : int
        ``H`` and ``I``.
    num_directions : int
        ``D``, 1 or 2.
    density : float
        Fraction of ``R`` entries kept (uniformly at random).
    input_density : float
        Fraction of ``W`` entries kept.
    peepholes : bool
        Also return LSTM peepholes ``P``.
    seed : int
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    dict
        ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` and optionally ``P (D, 3*H)``,
        scaled so that pre-activations stay O(1).
    """
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    rng = np.random.default_rng(seed)
    shape_w = (num_directions, gates * hidden_size, input_size)
    shape_r = (num_directions, gates * hidden_size, hidden_size)
    w = rng.uniform(-1, 1, shape_w) * (rng.random(shape_w) < input_density)
    r = rng.uniform(-1, 1, shape_r) * (rng.random(shape_r) < density)
    out = {
        "W": (w / np.sqrt(max(1.0, input_size * input_density))).astype("float32"),
        "R": (r / np.sqrt(max(1.0, hidden_size * density))).astype("float32"),
        "B": rng.uniform(-0.5, 0.5, (num_directions, 2 * gates * hidden_size)).astype("float32"),
    }
    if peepholes:
        out["P"] = rng.uniform(-0.5, 0.5, (num_directions, 3 * hidden_size)).astype("float32")
    return out


def recurrent_onnx_model(
    kind: str,
    weights: dict[str, np.ndarray],
    seq_len: int,
    batch: int,
    input_size: int,
    hidden_size: int,
    direction: str = "forward",
    layout: int = 0,
    inputs: tuple[str, ...] = (),
    attributes: dict | None = None,
    opset: int = 14,
):
    """A one-node ONNX model around ``RNN``/``GRU``/``LSTM`` with weights as initializers.

    Parameters
    ----------
    kind : str
        ONNX op type.
    weights : dict
        ``W``, ``R`` and optionally ``B``, ``P`` (see :func:`random_recurrent_weights`).
    seq_len, batch, input_size, hidden_size : int
        ``T``, ``N``, ``I``, ``H``.
    direction : str
        ONNX ``direction``.
    layout : int
        ONNX ``layout`` (0: ``X`` is ``(T, N, I)``; 1: ``(N, T, I)``).
    inputs : tuple of str
        Optional graph inputs to add: any of ``"sequence_lens"``, ``"initial_h"``,
        ``"initial_c"``.
    attributes : dict, optional
        Extra node attributes (``clip``, ``activations``, ``linear_before_reset``...).
    opset : int
        ONNX opset of the model (``layout`` needs >= 14).

    Returns
    -------
    onnx.ModelProto
        Graph inputs ``X`` and the requested optional inputs; outputs ``Y``, ``Y_h`` (and
        ``Y_c`` for LSTM).
    """
    from onnx import TensorProto, helper, numpy_helper

    d = 2 if direction == "bidirectional" else 1
    x_shape = [seq_len, batch, input_size] if layout == 0 else [batch, seq_len, input_size]
    state_shape = [d, batch, hidden_size] if layout == 0 else [batch, d, hidden_size]
    y_shape = [seq_len, d, batch, hidden_size] if layout == 0 else [batch, seq_len, d, hidden_size]
    f32 = TensorProto.FLOAT
    graph_inputs = [helper.make_tensor_value_info("X", f32, x_shape)]
    init = [numpy_helper.from_array(weights[k], k) for k in ("W", "R")]
    names = ["X", "W", "R", "", "", "", "", ""]
    if "B" in weights:
        init.append(numpy_helper.from_array(weights["B"], "B"))
        names[3] = "B"
    for slot, name in ((4, "sequence_lens"), (5, "initial_h"), (6, "initial_c")):
        if name in inputs:
            names[slot] = name
            if name == "sequence_lens":
                graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.INT32, [batch]))
            else:
                graph_inputs.append(helper.make_tensor_value_info(name, f32, state_shape))
    if "P" in weights:
        init.append(numpy_helper.from_array(weights["P"], "P"))
        names[7] = "P"
    max_inputs = 8 if kind == "LSTM" else 6
    names = names[:max_inputs]
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(
        kind,
        names,
        outs,
        hidden_size=hidden_size,
        direction=direction,
        layout=layout,
        **(attributes or {}),
    )
    graph_outputs = [helper.make_tensor_value_info("Y", f32, y_shape)] + [
        helper.make_tensor_value_info(o, f32, state_shape) for o in outs[1:]
    ]
    graph = helper.make_graph([node], f"{kind.lower()}_layer", graph_inputs, graph_outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_onnxruntime(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` (an ``onnx.ModelProto``) on onnxruntime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def recurrent_onnxruntime(
    kind: str,
    weights: dict[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    hidden_size: int,
    direction: str = "forward",
    layout: int = 0,
    attributes: dict | None = None,
) -> list[np.ndarray]:
    """Outputs of onnxruntime for one recurrent layer, any ``layout``.

    onnxruntime rejects ``layout=1`` ("Batchwise recurrent operations ... are not supported"),
    so a layout-1 request runs the layout-0 model on transposed inputs and transposes back.

    Parameters
    ----------
    feeds : dict
        ``X`` and the optional inputs, in the shapes of ``layout``.
    """
    tr = (1, 0, 2)
    feeds0 = dict(feeds)
    if layout == 1:
        feeds0 = {k: (v.transpose(tr) if v.ndim == 3 else v) for k, v in feeds.items()}
    seq_len, batch, input_size = feeds0["X"].shape
    inputs = tuple(k for k in ("sequence_lens", "initial_h", "initial_c") if k in feeds)
    model = recurrent_onnx_model(
        kind, weights, seq_len, batch, input_size, hidden_size, direction, 0, inputs, attributes
    )
    outs = run_onnxruntime(model, feeds0)
    if layout == 1:
        outs = [outs[0].transpose(2, 0, 1, 3)] + [o.transpose(tr) for o in outs[1:]]
    return outs
