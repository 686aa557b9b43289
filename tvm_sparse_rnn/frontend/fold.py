"""Fold what is constant once an ONNX model's input shapes are fixed.

Exported models compute pads, reshape targets and slice bounds from ``Shape`` of their inputs
(``Shape -> Gather -> Concat -> Pad``). TVM's Relax importer needs those as constants ("Dynamic
pads are not supported yet"). :func:`fold_constants` fixes the input shapes, then repeats until
nothing changes:

1. ONNX shape inference (with data propagation);
2. ``Shape``/``Size`` of a value whose shape is fully static becomes a constant;
3. a node whose inputs are all constant is evaluated (:class:`onnx.reference.ReferenceEvaluator`)
   and its outputs become initializers; an ``If`` with a constant condition is replaced by its
   taken branch.

Nodes left without consumers and unused initializers are removed. Random ops, nodes of other
domains and nodes whose folded output would exceed ``max_elements`` (a ``ConstantOfShape`` of a
large shape, say) are left alone.

Examples
--------
>>> folded = fold_constants(model, {"input": (1, 512)})  # doctest: +SKIP
>>> mod = tvm.relax.frontend.onnx.from_onnx(folded)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError

logger = logging.getLogger(__name__)

#: Ops never folded: their value differs per run.
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip
#: Default largest folded output (elements); bigger results stay computed at run time.
MAX_ELEMENTS = 1 << 20
#: Rounds of inference + folding before giving up on reaching a fixed point.
MAX_ROUNDS = 50


def fold_constants(
    model: onnx.ModelProto,
    shape_dict: Mapping[str, tuple[int, ...]] | None = None,
    *,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> onnx.ModelProto:
    """Return a copy of ``model`` with input shapes fixed and constant subgraphs folded.

    Parameters
    ----------
    model : onnx.ModelProto
        The model (not modified).
    shape_dict : mapping of str to tuple of int, optional
        Static shape per graph input name; inputs not named keep their declared shape.
    constant_inputs : mapping of str to numpy.ndarray, optional
        Graph inputs whose value is fixed (e.g. Silero VAD's sample rate ``sr``): they become
        initializers and are removed from the inputs, so that ``If`` nodes on them fold.
    max_elements : int
        Largest output (in elements) a folded node may have.

    Returns
    -------
    onnx.ModelProto
        The folded model; it passes ``onnx.checker``.

    Raises
    ------
    ModelError
        If ``shape_dict`` or ``constant_inputs`` name an unknown input, give a shape of the
        wrong rank or a non-positive dim, or contradict a static dim of the model.
    """
    model = _copy(model)
    graph = model.graph
    _fix_input_shapes(graph, dict(shape_dict or {}))
    _pin_inputs(graph, dict(constant_inputs or {}))
    opsets = {op.domain or "": op.version for op in model.opset_import}
    for round_ in range(MAX_ROUNDS):
        model = _infer(model)
        changed = _fold_round(model, opsets, max_elements)
        _remove_dead(model.graph)
        logger.debug("fold round %d: %d node(s) folded", round_, changed)
        if not changed:
            break
    del model.graph.value_info[:]
    model = _infer(model)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------- inputs
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _fix_input_shapes(graph: onnx.GraphProto, shapes: dict[str, tuple[int, ...]]) -> None:
    inputs = {i.name: i for i in graph.input}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise ModelError(f"shape_dict names unknown inputs {unknown}; inputs are {list(inputs)}")
    for name, shape in shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        shape = tuple(shape)
        if len(dims) != len(shape) or any(int(d) < 1 or int(d) != d for d in shape):
            raise ModelError(
                f"input {name!r}: shape {shape} must have rank {len(dims)} and integer dims >= 1"
            )
        for i, (dim, value) in enumerate(zip(dims, shape, strict=True)):
            if dim.HasField("dim_value") and dim.dim_value != value:
                raise ModelError(
                    f"input {name!r}: dim {i} is {dim.dim_value} in the model, "
                    f"shape_dict gives {value}"
                )
            dim.Clear()
            dim.dim_value = int(value)


def _pin_inputs(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    names = [i.name for i in graph.input]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ModelError(f"constant_inputs names unknown inputs {unknown}; inputs are {names}")
    keep = [i for i in graph.input if i.name not in values]
    for inp in graph.input:
        if inp.name in values:
            dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(values[inp.name], dtype), inp.name)
            )
    del graph.input[:]
    graph.input.extend(keep)


# ---------------------------------------------------------------------- folding
def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as err:
        logger.debug("shape inference failed, folding without it: %s", err)
        return model


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if None not in dims:
            shapes[vi.name] = tuple(dims)
    return shapes


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers that no graph input overrides, plus outputs of ``Constant`` nodes."""
    overridable = {i.name for i in graph.input}
    values = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in overridable
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            values[node.output[0]] = _evaluate(node, {}, {"": 17})[0]
    return values


def _shape_value(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> np.ndarray | None:
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    return np.array(shape[start:end], np.int64)


def _foldable(node: onnx.NodeProto, known: dict[str, np.ndarray]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC_OPS:
        return False
    if node.op_type in ("Constant", "If", "Loop", "Scan"):
        return False
    return all(name == "" or name in known for name in node.input)


def _evaluate(
    node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int]
) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(node, opsets={"": opsets.get("", 17)})
    return [np.asarray(v) for v in evaluator.run(None, {k: feeds[k] for k in node.input if k})]


def _fold_round(model: onnx.ModelProto, opsets: dict[str, int], max_elements: int) -> int:
    """Fold what is foldable now; return how many nodes were replaced."""
    graph = model.graph
    shapes = _static_shapes(graph)
    known = _constants(graph)
    folded: dict[str, np.ndarray] = {}
    kept, changed = [], 0
    for node in graph.node:
        values = _fold_node(node, known, shapes, opsets, max_elements)
        if values is None:
            if node.op_type == "If" and node.input[0] in known:
                branch = _taken_branch(node, known)
                kept.extend(branch)
                changed += 1
                continue
            kept.append(node)
            continue
        changed += 1
        for name, value in zip(node.output, values, strict=False):
            if name:
                known[name] = folded[name] = value
    if changed:
        del graph.node[:]
        graph.node.extend(kept)
        _add_folded(graph, folded)
    return changed


def _fold_node(
    node: onnx.NodeProto,
    known: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    opsets: dict[str, int],
    max_elements: int,
) -> list[np.ndarray] | None:
    """The node's output values when it can be folded now, else ``None``."""
    if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
        value = _shape_value(node, shapes)
        return None if value is None else [value]
    if not _foldable(node, known):
        return None
    try:
        values = _evaluate(node, known, opsets)
    except Exception as err:  # the reference evaluator lacks an op or rejects the node
        logger.debug("cannot evaluate %s %r: %s", node.op_type, node.name, err)
        return None
    if any(v.size > max_elements for v in values):
        return None
    return values


def _taken_branch(node: onnx.NodeProto, known: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """The nodes of the branch an ``If`` with constant condition takes, outputs renamed."""
    cond = bool(np.asarray(known[node.input[0]]).reshape(-1)[0])
    attrs = {a.name: a for a in node.attribute}
    branch = attrs["then_branch" if cond else "else_branch"].g
    nodes = list(branch.node)
    for inner, outer in zip(branch.output, node.output, strict=True):
        nodes.append(helper.make_node("Identity", [inner.name], [outer]))
    for init in branch.initializer:
        nodes.append(
            helper.make_node("Constant", [], [init.name], value=init)
        )  # branch-local initializers become constants in the outer graph
    return nodes


def _add_folded(graph: onnx.GraphProto, folded: dict[str, np.ndarray]) -> None:
    """Folded values become initializers; graph outputs get a ``Constant`` node instead."""
    outputs = {o.name for o in graph.output}
    existing = {t.name for t in graph.initializer}
    for name, value in folded.items():
        tensor = numpy_helper.from_array(np.asarray(value), name)
        if name in outputs:
            graph.node.append(helper.make_node("Constant", [], [name], value=tensor))
        elif name not in existing:
            graph.initializer.append(tensor)


def _remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody uses, then unused initializers (and their value_info)."""
    used = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in used for o in node.output):
            kept.append(node)
            used.update(node.input)
            used.update(_subgraph_inputs(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inputs = {i.name for i in graph.input}
    initializers = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            for inner in g.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names
