"""Shrink an exported ONNX model: float16 weight storage, float32 compute.

Every large float32 initializer is stored as float16 and followed by a ``Cast`` back
to float32. ONNX Runtime folds those casts when it loads the model, so inference runs
in float32 at full CPU speed while the file is half the size. The only change is the
rounding of each weight to float16 (about 3 significant digits), whose effect on the
predicted age is measured by the caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_ELEMENTS = 1024
"""Smaller tensors (biases, BatchNorm vectors) stay float32: they cost nothing."""


def store_weights_fp16(src: str | Path, dst: str | Path | None = None) -> Path:
    """Rewrite `src` with float16 weight storage; return the written path.

    Parameters
    ----------
    src : path
        An ONNX model with float32 initializers.
    dst : path, optional
        Output path (default: overwrite `src`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    kept = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       init.name + "__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    out = Path(dst or src)
    onnx.save(model, str(out))
    return out
