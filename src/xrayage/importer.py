"""Import a published TorchScript age model (e.g. the RIKEN SENet154) as an ONNX model.

The RIKEN X-ray age model (Ieki et al. 2022, Apache-2.0) is distributed by
TorchXRayVision as a TorchScript file,
``baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt``.
It takes a square-cropped radiograph scaled to [0, 1], resized to 320 x 320,
repeated to 3 channels and ImageNet-normalised, and returns the age in years.
:func:`import_torchscript` wraps it with that preprocessing in a model card and
exports ONNX, so the published model runs through xrayage's reader, QC and outputs
without torch. It needs the ``train`` extra (torch) once, at import time.

Loading TorchScript runs code from the file: import only files you trust.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard, PreprocessSpec, sha256_file
from .errors import ModelError, ModelNotFoundError
from .extras import require

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, dict[str, Any]] = {
    "riken": {
        "name": "riken-senet154",
        "architecture": "senet154 (TorchScript, RIKEN X-ray age, Ieki et al. 2022)",
        "preprocessing": PreprocessSpec(image_size=320, square="crop", channels=3,
                                        mean=IMAGENET_MEAN, std=IMAGENET_STD),
        "licence": "Apache-2.0",
        "description": (
            "X-ray age model of Ieki, Ito et al., Communications Medicine 2022 "
            "(doi:10.1038/s43856-022-00220-6), trained on >100k NIH ChestX-ray14 images. "
            "Published MAE 3.67 y (NIH hold-out), 4.95 y (JSRT)."
        ),
        "training_data": [{"name": "NIH ChestX-ray14", "licence": "public, no restrictions",
                           "images": ">100,000"}],
        "metrics": {"published": {"mae_nih_holdout": 3.67, "mae_jsrt": 4.95}},
    },
}


def import_torchscript(file: str | Path, out_dir: str | Path, preset: str = "riken",
                       opset: int = 17, verify_inputs: np.ndarray | None = None,
                       tolerance: float = 1e-4) -> ModelCard:
    """Wrap a TorchScript age model as ``model.onnx`` + ``model_card.json``.

    Parameters
    ----------
    file : path
        The TorchScript file: input (N, 3, S, S) normalised, output (N,) or (N, 1) years.
    out_dir : path
        Model directory to create.
    preset : str
        Preprocessing and card fields, one of :data:`PRESETS`.
    verify_inputs : numpy.ndarray, optional
        Preprocessed inputs (N, 3, S, S) on which torch and ONNX Runtime must agree
        within `tolerance` years; random inputs are used if omitted.

    Returns
    -------
    ModelCard
    """
    torch = require("torch", "train", "xrayage import-torchscript")
    import onnxruntime as ort

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    settings = dict(PRESETS[preset])
    spec: PreprocessSpec = settings.pop("preprocessing")
    if not zipfile.is_zipfile(file):  # a TorchScript file is a zip archive
        raise ModelNotFoundError(f"{file}: not a TorchScript model (not a zip archive)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.warning("loading TorchScript %s: it runs code from the file", Path(file).name)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates jit.load; it still works
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            scripted = torch.jit.load(str(file), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelNotFoundError(f"{file}: not a loadable TorchScript model ({exc})") from exc

    size = spec.image_size
    if verify_inputs is None:
        verify_inputs = np.random.default_rng(0).standard_normal((2, 3, size, size))
    sample = torch.from_numpy(np.asarray(verify_inputs, np.float32))
    onnx_path = out / "model.onnx"
    with torch.no_grad():
        expected = scripted(sample).numpy()
        torch.onnx.export(scripted, (sample,), str(onnx_path), input_names=["input"],
                          output_names=["age"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "age": {0: "batch"}})
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        ["age"], {"input": sample.numpy()})[0]
    diff = float(np.max(np.abs(got.reshape(-1) - expected.reshape(-1))))
    if not diff <= tolerance:
        raise ModelError(f"ONNX and TorchScript outputs differ by {diff:.2e} y (> {tolerance})")
    card = ModelCard(
        preprocessing=spec, version=sha256_file(file)[:12], onnx_sha256=sha256_file(onnx_path),
        outputs={"age": "age"},
        extra={"source_file": Path(file).name, "source_sha256": sha256_file(file),
               "export_max_abs_diff_years": diff},
        **settings,
    )
    card.save(out)
    return card
