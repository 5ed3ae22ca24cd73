"""ONNX graphs for the content quality checks: the features output, and the checks' graph.

:func:`add_features_output` exposes the input of the linear age head (the pooled features)
as an extra output ``features`` of an exported model, so the content quality checks
(:mod:`xrayage.content`) read the model's own features from the same run: no second
network, no second pass. :func:`content_graph` builds the checks' own small graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..extras import require

FEATURES = "features"
"""Name of the added output."""


def add_features_output(path: str | Path, age_output: str = "age") -> None:
    """Add the head's input as the output ``features`` (N, D).

    The head is the one ``Gemm`` (or ``MatMul``) node upstream of `age_output`. The file is
    rewritten in place; a graph that already has the output is left as it is.

    Raises
    ------
    ModelError
        No single linear head feeds the age output.
    """
    onnx = require("onnx", "train", "adding the features output")
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == FEATURES for o in graph.output):
        return
    producer = {out: node for node in graph.node for out in node.output}
    head, todo, seen = None, [age_output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("Gemm", "MatMul"):
            if head is not None:
                raise ModelError(f"{path}: more than one linear layer feeds {age_output!r}")
            head = node
            continue
        todo.extend(node.input)
    if head is None:
        raise ModelError(f"{path}: no linear head feeds {age_output!r}")
    graph.node.append(onnx.helper.make_node("Identity", [head.input[0]], [FEATURES],
                                            name="features_output"))
    graph.output.append(onnx.helper.make_tensor_value_info(
        FEATURES, onnx.TensorProto.FLOAT, ["batch", "features"]))
    onnx.save(model, str(path))


def content_graph(*, mu: np.ndarray, sd: np.ndarray, a: np.ndarray, b: np.ndarray,
                  ood_mu: np.ndarray, ood_basis: np.ndarray, resid_scale: float,
                  pool: str = "gap", cells: int = 9) -> Any:
    """The content checks' graph: ``features`` (N, D) -> ``scores`` (N, m + 1).

    ``xs = (pool(features) - mu) / sd``; ``scores = [xs @ a + b, r]`` with
    ``r = sqrt(|(xs - ood_mu)|^2 - |(xs - ood_mu) @ ood_basis|^2) / resid_scale)``, the
    scaled distance outside the principal subspace `ood_basis` (orthonormal columns).

    Parameters
    ----------
    mu, sd : numpy.ndarray
        (P,) standardisation of the pooled features.
    a, b : numpy.ndarray
        (P, m) and (m,): the linear heads (class logits, child and mirror logits, whitened
        principal components of frontal films), as the card's
        :class:`~xrayage.card.ContentCheckSpec` orders them.
    ood_mu, ood_basis : numpy.ndarray
        (P,) and (P, k): centre and principal directions of frontal adult films.
    resid_scale : float
        Mean squared residual of frontal adult films.
    pool : {'gap', 'grid'}
        ``gap`` averages the model's grid cells per channel first (D = cells · P).
    cells : int
        Grid cells per channel of the model's features (9 for a 3 x 3 grid).

    Returns
    -------
    onnx.ModelProto
        Checked; opset 18.
    """
    onnx = require("onnx", "train", "building the content checks")
    helper, numpy_helper, tensor = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    arrays = {"mu": mu, "sd": sd, "a": a, "b": b, "ood_mu": ood_mu, "ood_basis": ood_basis,
              "resid_scale": np.array([resid_scale])}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
    nodes = []
    source = FEATURES
    if pool == "gap":
        inits += [numpy_helper.from_array(np.array([0, -1, cells], np.int64), "cells"),
                  numpy_helper.from_array(np.array([2], np.int64), "cell_axis")]
        nodes += [helper.make_node("Reshape", [FEATURES, "cells"], ["grid"]),
                  helper.make_node("ReduceMean", ["grid", "cell_axis"], ["pooled"],
                                   keepdims=0)]
        source = "pooled"
    elif pool != "grid":
        raise ValueError(f"pool must be 'gap' or 'grid', not {pool!r}")
    step = [("Sub", [source, "mu"], "centred"), ("Div", ["centred", "sd"], "xs"),
            ("MatMul", ["xs", "a"], "lin"), ("Add", ["lin", "b"], "head"),
            ("Sub", ["xs", "ood_mu"], "oc"), ("MatMul", ["oc", "ood_basis"], "proj")]
    nodes += [helper.make_node(op, ins, [out]) for op, ins, out in step]
    nodes += [helper.make_node("ReduceSumSquare", ["oc", "axis"], ["total"], keepdims=1),
              helper.make_node("ReduceSumSquare", ["proj", "axis"], ["inside"], keepdims=1),
              helper.make_node("Sub", ["total", "inside"], ["outside"]),
              helper.make_node("Relu", ["outside"], ["outside_pos"]),
              helper.make_node("Div", ["outside_pos", "resid_scale"], ["r2"]),
              helper.make_node("Sqrt", ["r2"], ["r"]),
              helper.make_node("Concat", ["head", "r"], ["scores"], axis=1)]
    graph = helper.make_graph(
        nodes, "xrayage_content_checks",
        [helper.make_tensor_value_info(FEATURES, tensor.FLOAT, ["batch", None])],
        [helper.make_tensor_value_info("scores", tensor.FLOAT, ["batch", None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="xrayage")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def retarget_content_graph(model: Any, cells: int) -> Any:
    """A ``gap`` content graph for a model of the same backbone and blocks with another grid:
    only the cells averaged per channel change, so the scores are the same (the mean of a
    map's g² equal cells is the map's mean for every g).

    Raises
    ------
    ValueError
        The graph does not average grid cells (``pool='grid'``).
    """
    onnx = require("onnx", "train", "building the content checks")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.name == "cells":
            out.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(
                np.array([0, -1, cells], np.int64), "cells"))
            onnx.checker.check_model(out)
            return out
    raise ValueError("the content graph keeps the grid cells: refit it for another grid")


__all__ = ["FEATURES", "add_features_output", "content_graph", "retarget_content_graph"]
