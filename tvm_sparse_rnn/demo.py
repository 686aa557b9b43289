"""The embedded demo model: a pruned RNN + MLP built in code with ``onnx.helper`` (no download).

Graph (opset 17)::

    frames [T, B, I] -> RNN(tanh, hidden H, W and R 90 % pruned) -> Y [T, 1, B, H]
      -> Reshape [T*B, H] -> Gemm(transB=1, W1 90 % pruned in 1x16 blocks, bias) -> Relu
      -> MatMul(W2 * mask2, 90 % pruned in 4x4 blocks) -> Relu
      -> Gemm(transB=1, W3 50 % pruned, unstructured, bias) -> logits [T*B, C]

Each dense layer carries a different pruning pattern, so the per-layer block-size choice of
:mod:`tvm_sparse_rnn.transform.dispatch.cost_model` picks 1x16 for ``W1``, 4x4 for ``W2`` (given as
``weight * mask``, folded at import) and keeps the lightly pruned classifier ``W3`` dense.
With ``recurrent=False`` the RNN is left out and the input is ``frames [T*B, H]``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError
from .frontend.onnx import TensorSpec

#: Opset of the generated models.
OPSET = 17


def pruned_weight(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sparsity: float,
    block: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """A seeded random float32 weight with a fraction ``sparsity`` of its blocks zeroed.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    shape : tuple of int
        ``(N, K)``; ``block`` must divide it.
    sparsity : float
        Fraction of ``block``-sized blocks set to zero, in ``[0, 1]``.
    block : tuple of int
        Pruning granularity ``(bs_r, bs_c)``; ``(1, 1)`` is unstructured pruning.

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` float32, values uniform in ``±1/sqrt(K)`` where kept.
    """
    n, k = shape
    r, c = block
    keep = rng.random((n // r, k // c)) >= sparsity
    mask = np.kron(keep, np.ones((r, c), bool))
    scale = 1.0 / np.sqrt(k)
    return np.where(mask, rng.uniform(-scale, scale, size=shape), 0.0).astype("float32")


def build_demo_model(
    *,
    seq_len: int = 8,
    batch: int = 4,
    input_size: int = 256,
    hidden: int = 512,
    mlp: int = 1024,
    classes: int = 256,
    sparsity: float = 0.9,
    classifier_sparsity: float = 0.5,
    classifier_block: tuple[int, int] = (1, 1),
    recurrent: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build the demo model (see the module docstring).

    Parameters
    ----------
    seq_len, batch, input_size, hidden, mlp, classes : int
        ``T``, ``B``, ``I``, ``H``, the MLP width and ``C``. ``mlp`` must be a multiple of 16.
    sparsity : float
        Pruned fraction of ``W``, ``R``, ``W1`` and ``W2``.
    classifier_sparsity : float
        Pruned fraction of ``W3``.
    classifier_block : tuple of int
        Pruning granularity of ``W3``.
    recurrent : bool
        Include the RNN layer.
    seed : int
        Seed of every weight.

    Returns
    -------
    onnx.ModelProto
        A checked model with input ``frames`` (float32) and output ``logits`` ``[T*B, C]``.
    """
    rng = np.random.default_rng(seed)
    rows = seq_len * batch
    w1 = pruned_weight(rng, (mlp, hidden), sparsity, (1, 16))
    w2 = (rng.uniform(-1, 1, (mlp, mlp)) / np.sqrt(mlp)).astype("float32")
    mask2 = pruned_weight(rng, (mlp, mlp), sparsity, (4, 4)) != 0
    w3 = pruned_weight(rng, (classes, mlp), classifier_sparsity, classifier_block)
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.1, mlp).astype("float32"), "B1"),
        numpy_helper.from_array(np.ascontiguousarray(w2.T), "W2"),
        numpy_helper.from_array(np.ascontiguousarray(mask2.T).astype("float32"), "M2"),
        numpy_helper.from_array(w3, "W3"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.1, classes).astype("float32"), "B3"),
    ]
    nodes = []
    if recurrent:
        w_rnn = pruned_weight(rng, (hidden, input_size), sparsity)[None]
        r_rnn = pruned_weight(rng, (hidden, hidden), sparsity)[None]
        b_rnn = rng.uniform(-0.1, 0.1, (1, 2 * hidden)).astype("float32")
        inits += [
            numpy_helper.from_array(w_rnn, "W_rnn"),
            numpy_helper.from_array(r_rnn, "R_rnn"),
            numpy_helper.from_array(b_rnn, "B_rnn"),
            numpy_helper.from_array(np.array([rows, hidden], np.int64), "flat_shape"),
        ]
        nodes += [
            helper.make_node(
                "RNN", ["frames", "W_rnn", "R_rnn", "B_rnn"], ["rnn_y"], "rnn", hidden_size=hidden
            ),
            helper.make_node("Reshape", ["rnn_y", "flat_shape"], ["h0"], "flatten"),
        ]
        x_info = helper.make_tensor_value_info(
            "frames", TensorProto.FLOAT, [seq_len, batch, input_size]
        )
        first = "h0"
    else:
        x_info = helper.make_tensor_value_info("frames", TensorProto.FLOAT, [rows, hidden])
        first = "frames"
    nodes += [
        helper.make_node("Gemm", [first, "W1", "B1"], ["g1"], "fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["a1"], "relu1"),
        helper.make_node("Mul", ["W2", "M2"], ["W2_pruned"], "prune2"),
        helper.make_node("MatMul", ["a1", "W2_pruned"], ["g2"], "fc2"),
        helper.make_node("Relu", ["g2"], ["a2"], "relu2"),
        helper.make_node("Gemm", ["a2", "W3", "B3"], ["logits"], "classifier", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tvm_sparse_rnn_demo",
        [x_info],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [rows, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_recurrent_model(
    op: str,
    *,
    seq_len: int = 8,
    batch: int = 4,
    input_size: int = 256,
    hidden: int = 512,
    sparsity: float = 0.9,
    seed: int = 0,
) -> onnx.ModelProto:
    """A single pruned ONNX ``RNN``, ``GRU`` or ``LSTM`` node (forward, default activations).

    Parameters
    ----------
    op : str
        ``"RNN"``, ``"GRU"`` or ``"LSTM"``.
    seq_len, batch, input_size, hidden : int
        ``T``, ``B``, ``I``, ``H``.
    sparsity : float
        Unstructured pruned fraction of ``W`` and ``R``.
    seed : int
        Seed of every weight.

    Returns
    -------
    onnx.ModelProto
        Input ``X [T, B, I]``; outputs ``Y [T, 1, B, H]``, ``Y_h [1, B, H]`` (and ``Y_c``).
    """
    rng = np.random.default_rng(seed)
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    w = pruned_weight(rng, (gates * hidden, input_size), sparsity)[None]
    r = pruned_weight(rng, (gates * hidden, hidden), sparsity)[None]
    b = rng.uniform(-0.1, 0.1, (1, 2 * gates * hidden)).astype("float32")
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, op.lower(), hidden_size=hidden)
    out_info = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [seq_len, 1, batch, hidden])]
    out_info += [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, batch, hidden])
        for name in outs[1:]
    ]
    graph = helper.make_graph(
        [node],
        f"pruned_{op.lower()}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq_len, batch, input_size])],
        out_info,
        [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def random_inputs(specs: list[TensorSpec], seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs, one per spec, keyed by ONNX name.

    Raises
    ------
    ModelError
        If a spec has a symbolic dim (give the shape with ``shape_dict`` / ``--shape``).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if not all(isinstance(d, int) for d in spec.shape):
            raise ModelError(
                f"input {spec.name!r} has symbolic shape {spec.shape}; give a static shape"
            )
        feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
    return feeds
