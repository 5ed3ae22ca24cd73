"""A tiny, exactly predictable ONNX age model, built with onnx.helper (no torch).

``age = 20 + 60 * mean(x)`` over the (N, 1, S, S) input, ``log_var = 2 * log(5)``
(σ = 5 y) and ``cam = 60 * avgpool8(x)``, so ``mean(cam) + 20 == age`` like a real
GAP -> linear head.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xrayage.card import (
    BiasCorrection,
    ConformalCalibration,
    ContentCheckSpec,
    ModelCard,
    PreprocessSpec,
    sha256_file,
)

SIZE = 64


def expected_age(x: np.ndarray) -> np.ndarray:
    """The tiny model's output for a batch (N, 1, S, S)."""
    return 20.0 + 60.0 * x.reshape(len(x), -1).mean(axis=1)


def build_tiny_model(directory: Path, *, conformal: bool = True, bias: bool = True,
                     mean: float = 0.0, std: float = 1.0, content: bool = False) -> Path:
    """Write model.onnx and model_card.json into `directory` and return it.

    With `content`, the graph also has ``features`` (the 8 x 8 average-pooled input, 64
    values) and the card has content checks (see :func:`add_tiny_content_checks`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    consts = {
        "k60": np.array(60.0, np.float32), "k20": np.array(20.0, np.float32),
        "logvar": np.array([2 * math.log(5.0)], np.float32), "axes": np.array([1, 2, 3]),
        "cax": np.array([1]),
    }
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "k60"], ["m60"]),
        helper.make_node("Add", ["m60", "k20"], ["age"]),
        helper.make_node("Mul", ["m", "k60"], ["zero_like"]),  # same shape as age
        helper.make_node("Sub", ["zero_like", "zero_like"], ["zeros"]),
        helper.make_node("Add", ["zeros", "logvar"], ["log_var"]),
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("Squeeze", ["pooled", "cax"], ["pooled2"]),
        helper.make_node("Mul", ["pooled2", "k60"], ["cam"]),
        helper.make_node("Flatten", ["pooled2"], ["features"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_age",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("age", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("log_var", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", SIZE // 8, SIZE // 8])]
        + ([helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])]
           if content else []),
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, directory / "model.onnx")
    card = ModelCard(
        name="tiny-test", version="0", architecture="mean-intensity",
        preprocessing=PreprocessSpec(image_size=SIZE, mean=(mean,), std=(std,)),
        onnx_sha256=sha256_file(directory / "model.onnx"),
        outputs={"age": "age", "log_var": "log_var", "cam": "cam",
                 **({"features": "features"} if content else {})},
        bias_correction=BiasCorrection(slope=0.5, intercept=25.0, n=10) if bias else None,
        conformal=ConformalCalibration(coverage=0.9, quantile=8.0, n=100) if conformal else None,
    )
    if content:
        card.content_checks = add_tiny_content_checks(directory)
    card.save(directory)
    return directory


def add_tiny_content_checks(directory: Path) -> ContentCheckSpec:
    """Write a content graph on the tiny model's 64 features; return its card section.

    With m the mean of the features (the image's mean intensity, model input scale):
    ``lateral`` logit ``40 (m - 0.85)`` (bright images read as laterals), child logit
    ``40 (0.15 - m)`` (dark images read as children's films), every other class at -20,
    and the out-of-distribution distance is the spread of the 64 cell means around their
    own mean (a checkerboard of 8-pixel squares is far; a smooth film is near).
    """
    from xrayage.card import ContentCheckSpec
    from xrayage.train.onnx_graph import content_graph

    classes = ("frontal_chest", "lateral", "other_body_part", "not_radiograph", "inverted",
               "rotated90", "rotated180")
    n = len(classes)
    a = np.zeros((64, n + 3), np.float32)
    b = np.full(n + 3, -20.0, np.float32)
    b[0], b[n + 2] = 0.0, 0.0
    a[:, 1], b[1] = 40.0 / 64, -34.0
    a[:, n], b[n] = -40.0 / 64, 6.0
    graph = content_graph(mu=np.zeros(64), sd=np.ones(64), a=a, b=b,
                          ood_mu=np.full(64, 0.5), ood_basis=np.full((64, 1), 1 / 8),
                          resid_scale=1.0, pool="grid")
    onnx.save(graph, directory / "content_qc.onnx")
    return ContentCheckSpec(file="content_qc.onnx",
                            sha256=sha256_file(directory / "content_qc.onnx"), classes=classes,
                            reject_below=0.5, warn_below=0.6, child_above=0.9,
                            mirrored_above=0.9, ood_above=2.0, ood_warn_above=1.5, ood_dims=2)
