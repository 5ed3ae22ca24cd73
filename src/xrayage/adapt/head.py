"""The linear head of an exported model's graph: find it, replace its weights (and the class
activation map's copy of them), or append a recalibration (:mod:`xrayage.adapt`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import ModelError
from ..extras import require
from .recipes import FEATURE

logger = logging.getLogger(__name__)



@dataclass
class LinearHead:
    """Where a model's linear age head lives in its ONNX graph, and its values in years.

    ``age = (x·W·alpha + C·beta)·scale + offset`` with ``W`` (initializer `weight_name`)
    and ``C`` (`bias_name`) the Gemm's inputs; `cam` lists the initializers that hold a
    copy of ``W`` times a constant (the class activation map's weights) and that constant.
    """

    weight: np.ndarray
    bias: float
    weight_name: str
    bias_name: str
    weight_factor: float
    bias_factor: float
    offset: float
    cam: list[tuple[str, float]] = field(default_factory=list)


def _graph_tools(graph: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]:
    """Initializers by name, the producer of each tensor, the consumers of each tensor."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return inits, producer, consumers


def _constant(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output (through Cast/Identity)."""
    from onnx import numpy_helper

    source = _source(name, inits, producer)
    if source is not None:
        return np.asarray(numpy_helper.to_array(inits[source]), np.float64)
    node = producer.get(name)
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return np.asarray(numpy_helper.to_array(attr.t), np.float64)
    return None


def _source(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> str | None:
    """The initializer behind a tensor, following Cast-to-float and Identity nodes."""
    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type not in ("Cast", "Identity"):
            return None
        if node.op_type == "Cast" and any(a.name == "to" and a.i != 1 for a in node.attribute):
            return None  # not a cast to float32
        name = node.input[0]
    return name


def find_linear_head(model: Any, card: ModelCard) -> LinearHead | None:
    """The model's linear head on its ``features`` output, or None when it has none that
    can be rewritten (no features output, no single Gemm, a non-affine path to the age)."""
    graph = model.graph
    inits, producer, consumers = _graph_tools(graph)
    age_name, feat_name = card.outputs.get("age"), card.outputs.get("features")
    if not age_name or not feat_name or feat_name not in {o.name for o in graph.output}:
        return None

    def unwrap(name: str) -> str:
        while (n := producer.get(name)) is not None and n.op_type == "Identity":
            name = n.input[0]
        return name

    gemms = [n for n in graph.node if n.op_type == "Gemm" and len(n.input) == 3
             and unwrap(n.input[0]) == unwrap(feat_name)]
    if len(gemms) != 1:
        return None
    gemm = gemms[0]
    attrs = {a.name: a for a in gemm.attribute}
    alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
    beta = attrs["beta"].f if "beta" in attrs else 1.0
    w_name, b_name = _source(gemm.input[1], inits, producer), _source(gemm.input[2], inits,
                                                                      producer)
    if w_name is None or b_name is None:
        return None
    w_raw, b_raw = _constant(w_name, inits, producer), _constant(b_name, inits, producer)
    if w_raw is None or b_raw is None or b_raw.size != 1 or w_raw.size < 1:
        return None
    transposed = "transB" in attrs and attrs["transB"].i == 1
    if not transposed and (w_raw.ndim != 2 or w_raw.shape[1] != 1):
        return None
    # the affine path from the Gemm's output to the age
    scale, offset, cur = 1.0, 0.0, gemm.output[0]
    while cur != age_name:
        users = consumers.get(cur, [])
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type in ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity"):
            if node.input[0] != cur:
                return None
        elif node.op_type in ("Mul", "Add", "Sub", "Div") and len(node.input) == 2:
            first = node.input[0] == cur
            value = _constant(node.input[1 if first else 0], inits, producer)
            if value is None or value.size != 1:
                return None
            c = float(value.reshape(-1)[0])
            if node.op_type == "Mul":
                scale, offset = scale * c, offset * c
            elif node.op_type == "Add":
                offset += c
            elif node.op_type == "Sub":
                scale, offset = (scale, offset - c) if first else (-scale, c - offset)
            elif first and c != 0:
                scale, offset = scale / c, offset / c
            else:
                return None
        else:
            return None
        cur = node.output[0]
    w_factor, b_factor = scale * alpha, scale * beta
    weight = w_raw.reshape(-1) * w_factor
    head = LinearHead(weight=weight, bias=float(b_raw.reshape(-1)[0]) * b_factor + offset,
                      weight_name=w_name, bias_name=b_name, weight_factor=w_factor,
                      bias_factor=b_factor, offset=offset)
    ref = w_raw.reshape(-1)
    big = np.abs(ref) > 1e-3 * np.abs(ref).max()
    for name in inits:
        if name in (w_name, b_name) or inits[name].dims is None:
            continue
        if int(np.prod(inits[name].dims)) != ref.size:
            continue
        values = _constant(name, inits, producer)
        if values is None or not big.any():
            continue
        values = values.reshape(-1)
        ratio = float(np.median(values[big] / ref[big]))
        if ratio != 0 and np.abs(values - ratio * ref).max() <= 1e-2 * np.abs(values).max():
            head.cam.append((name, ratio))
    return head


def _set_initializer(graph: Any, name: str, values: np.ndarray) -> None:
    """Replace an initializer's values (float32, its shape kept)."""
    from onnx import numpy_helper

    for i, init in enumerate(graph.initializer):
        if init.name == name:
            shape = tuple(init.dims)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                np.asarray(values, np.float32).reshape(shape), name))
            return
    raise ModelError(f"no initializer {name!r}")


def set_linear_head(model: Any, head: LinearHead, weight: np.ndarray, bias: float) -> None:
    """Write a new head (years) into the graph, the CAM's copies of the weights too."""
    graph = model.graph
    _set_initializer(graph, head.weight_name, np.asarray(weight) / head.weight_factor)
    _set_initializer(graph, head.bias_name,
                     np.array([(bias - head.offset) / head.bias_factor]))
    for name, ratio in head.cam:
        _set_initializer(graph, name, np.asarray(weight) / head.weight_factor * ratio)


def add_affine(model: Any, outputs: dict[str, tuple[float, float]]) -> None:
    """Append ``out = b * out + a`` to graph outputs: `outputs` maps a name to ``(a, b)``."""
    onnx = require("onnx", "analysis", FEATURE)
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = model.graph
    for name, (a, b) in outputs.items():
        inner = f"{name}__base"
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.initializer.extend([
            numpy_helper.from_array(np.array(b, np.float32), f"{name}__adapt_b"),
            numpy_helper.from_array(np.array(a, np.float32), f"{name}__adapt_a")])
        graph.node.extend([
            helper.make_node("Mul", [inner, f"{name}__adapt_b"], [f"{name}__scaled"],
                             name=f"{name}_adapt_mul"),
            helper.make_node("Add", [f"{name}__scaled", f"{name}__adapt_a"], [name],
                             name=f"{name}_adapt_add")])


