"""Import a published TorchScript age model (e.g. the RIKEN SENet154) as an ONNX model.

The RIKEN X-ray age model (Ieki et al. 2022, Apache-2.0) is distributed by
TorchXRayVision as a TorchScript file, :data:`RIKEN_FILE`, which TorchXRayVision keeps
in its cache folder ``~/.torchxrayvision/models_data/``. Its ``AgeModel.forward`` takes
a square 1-channel image scaled to [-1024, 1024] (``xrv.utils.normalize`` of the 8-bit
PNG, then ``XRayCenterCrop``) and does::

    x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(320, 320), mode="bilinear", antialias=True)
    x = (x + 1024) / 2048                  # back to [0, 1]
    x = Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
    return torchscript_model(x)

The ``riken`` preset reproduces that exactly with xrayage's own stages: the reader
gives ``pixel / 255`` (what ``(x + 1024) / 2048`` undoes the xrv scaling to); the
centre crop is the same; the resize is PIL's BILINEAR, which widens its triangle
kernel when shrinking, the filter torch's ``antialias=True`` was written to match
(they agree to about 1e-5 of the normalised input); and ``quantize`` is off, since
TorchXRayVision never rounds the resized image to 8 bits. (The crops differ by one
pixel only where the long side is even and the short side odd: xrv starts at
``long // 2 - short // 2``, xrayage at ``(long - short) // 2``.) Keeping the resize outside
the graph keeps one fixed input size for batching; putting torch's antialiased
resize into ONNX would need opset 18 and gains nothing measurable.

:func:`import_torchscript` exports ONNX, checks that ONNX Runtime and torch agree on
radiograph-like inputs (:func:`synthetic_radiographs`, or real images), optionally
stores the weights in float16 (:func:`weights_to_float16`), and writes a model card
that states the published figures only for the published file. It needs the
``train`` extra (torch, onnx) once, at import time.

Loading TorchScript runs code from the file: import only files you trust.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard, PreprocessSpec, sha256_file
from .errors import ModelError, ModelNotFoundError, XRayAgeInputError
from .extras import require

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RIKEN_FILE = "baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt"
"""The name TorchXRayVision gives the RIKEN TorchScript file (release v1)."""

TOLERANCE_YEARS = {"float32": 0.01, "float16": 0.1}
"""Default largest ONNX-vs-torch difference accepted on the verification images, in years.

0.01 y is far below the reported resolution (0.1 y); float16 weights round each weight
by up to 2**-11 of itself, so their default is 0.1 y, still far below any model's error.
"""

FLOAT16_MAX = 65504.0

PRESETS: dict[str, dict[str, Any]] = {
    "riken": {
        "name": "riken-senet154",
        "architecture": "senet154 (TorchScript, RIKEN X-ray age, Ieki et al. 2022)",
        # quantize off: TorchXRayVision feeds the resized image unrounded.
        "preprocessing": PreprocessSpec(image_size=320, square="crop", channels=3,
                                        mean=IMAGENET_MEAN, std=IMAGENET_STD, quantize=False),
        "licence": "Apache-2.0",
        "description": (
            "X-ray age model of Ieki, Ito et al., Communications Medicine 2022 "
            "(doi:10.1038/s43856-022-00220-6), trained on >100k NIH ChestX-ray14 images, "
            "as distributed by TorchXRayVision (baseline_models.riken.AgeModel)."
        ),
        "training_data": [{"name": "NIH ChestX-ray14", "licence": "public, no restrictions",
                           "images": ">100,000"}],
        "published_file": RIKEN_FILE,
        # The sha256 of the published file is not known to xrayage, and is never guessed:
        # a file is then identified by its name only, and the card says so.
        "published_sha256": None,
        "published_metrics": {"mae_nih_holdout": 3.67, "mae_jsrt": 4.95},
        "cache_dir": "~/.torchxrayvision/models_data",
    },
}


def torchxrayvision_cache_dir() -> Path:
    """TorchXRayVision's weights folder, as ``AgeModel`` computes it.

    TorchXRayVision (1.5.x) hard-codes ``~/.torchxrayvision/models_data`` (no
    environment variable), expanding ``~`` with :func:`os.path.expanduser`.
    """
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def find_published_file(preset: str = "riken") -> Path:
    """The preset's published file in TorchXRayVision's cache folder; never downloads.

    Raises
    ------
    ModelNotFoundError
        The file is not there; the message names the path looked at.
    """
    settings = PRESETS[preset]
    path = torchxrayvision_cache_dir() / settings["published_file"]
    if not path.is_file():
        raise ModelNotFoundError(
            f"no FILE given and {path} does not exist (xrayage never downloads: give the "
            "TorchScript file, or let TorchXRayVision fetch it with "
            "torchxrayvision.baseline_models.riken.AgeModel())")
    return path


def synthetic_radiographs(size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth, deterministic chest-radiograph-like images, for checking an export.

    A bright body with two dark lung fields, a bright mediastinum and spine, faint
    ribs and a little film grain: inputs in the range and smoothness of real
    radiographs, on which a network behaves as it does in use (uniform noise can
    drive a real network far off its training distribution).

    Parameters
    ----------
    size : int
        Side of the square images.
    n : int
        Number of images.
    seed : int
        Seed of the per-image variation.

    Returns
    -------
    numpy.ndarray
        float32 (n, size, size) in [0, 1].

    Examples
    --------
    >>> imgs = synthetic_radiographs(64, n=2)
    >>> imgs.shape, bool(imgs.min() >= 0 and imgs.max() <= 1)
    ((2, 64, 64), True)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    out = np.empty((n, size, size), np.float32)

    def soft(d: np.ndarray, width: float = 0.04) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip(d / width, -50, 50)))  # 1 inside (d < 0)

    for i in range(n):
        cx, tilt = 0.5 + rng.uniform(-0.03, 0.03), rng.uniform(-0.05, 0.05)
        lung_w, lung_h = rng.uniform(0.15, 0.2), rng.uniform(0.28, 0.35)
        body = soft(np.abs(xx - cx) - 0.42) * soft(0.05 - yy)
        img = 0.15 + 0.55 * body
        for side in (-1, 1):
            lx, ly = cx + side * 0.19, 0.45 + side * tilt
            d = np.sqrt(((xx - lx) / lung_w) ** 2 + ((yy - ly) / lung_h) ** 2) - 1.0
            ribs = 0.06 * np.sin(2 * np.pi * (yy * 9 + side * (xx - lx) * 2)) ** 2
            img -= (0.38 - ribs) * soft(d, 0.08)
        img += 0.25 * soft(np.abs(xx - cx) - 0.05, 0.02) * soft(0.15 - yy)  # spine
        heart = np.sqrt(((xx - cx - 0.05) / 0.14) ** 2 + ((yy - 0.62) / 0.12) ** 2) - 1.0
        img += 0.2 * soft(heart, 0.06)
        img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
        out[i] = np.clip(img, 0.0, 1.0)
    return out


def verification_inputs(spec: PreprocessSpec, images: str | Path | Iterable[str | Path] | None
                        = None, n: int = 4) -> np.ndarray:
    """Model inputs (N, C, S, S) to compare torch and ONNX on: real or synthetic radiographs.

    Parameters
    ----------
    spec : PreprocessSpec
    images : path, iterable of paths, optional
        A folder of radiographs (the first `n` readable ones, sorted) or files; if
        omitted, :func:`synthetic_radiographs`.
    n : int

    Raises
    ------
    ModelNotFoundError
        `images` was given but held no readable radiograph.
    """
    from .inputs import walk_folder
    from .io import read_radiograph
    from .preprocess import normalize, to_square

    if images is None:
        return normalize(synthetic_radiographs(spec.image_size, n), spec)
    if isinstance(images, str | Path):
        images = walk_folder(Path(images)) if Path(images).is_dir() else [images]
    squares = []
    for path in images:
        try:
            squares.append(to_square(read_radiograph(path).pixels, spec))
        except XRayAgeInputError as exc:
            logger.warning("verification image %s skipped: %s", path, exc)
        if len(squares) == n:
            break
    if not squares:
        raise ModelNotFoundError("no readable radiograph among the verification images")
    return normalize(np.stack(squares), spec)


def weights_to_float16(src: str | Path, dst: str | Path, min_size: int = 16) -> int:
    """Store an ONNX graph's float32 weights as float16, computing in float32 as before.

    Each float32 initializer of at least `min_size` values (that float16 can hold) is
    stored as float16 and cast back by a ``Cast`` node, so the inputs, outputs and
    arithmetic stay float32 and only the weights are rounded: the file is about half
    the size and runs on every execution provider.

    Returns
    -------
    int
        The number of initializers converted.
    """
    onnx = require("onnx", "train", "xrayage import-torchscript --weights float16")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_size or not np.all(np.abs(values) <= FLOAT16_MAX):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name],
                                      to=TensorProto.FLOAT, name=f"{name}__to_float32"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(casts)


def _identity(settings: dict[str, Any], file: Path, sha256: str) -> str:
    """How the file is known to be the preset's published file: verified, claimed or not."""
    if settings.get("published_sha256") and sha256 == settings["published_sha256"]:
        return "verified by sha256"
    if file.name == settings.get("published_file"):
        return "claimed by file name, not verified"
    return "unknown file"


def _card_fields(settings: dict[str, Any], file: Path, identity: str) -> dict[str, Any]:
    """Card name, description, metrics and training data for what the file is known to be."""
    unknown = ("Its accuracy on your images is unknown until measured: run `xrayage evaluate` on "
               "labelled images, and `xrayage calibrate` on held-out predictions for the bias "
               "correction and the interval.")
    if identity == "unknown file":
        return {
            "name": f"torchscript-{file.stem}"[:64],
            "architecture": f"TorchScript model {file.name} (interface of the "
                            f"{settings['name']} preset)",
            "licence": "unknown (that of the imported file)",
            "description": f"TorchScript model {file.name}, imported with the preprocessing "
                           f"of the {settings['name']} preset. It is not the published file, "
                           f"so no published figure applies. {unknown}",
            "training_data": [],
            "metrics": {},
        }
    published = ", ".join(f"{k} {v}" for k, v in settings["published_metrics"].items())
    return {
        "name": settings["name"],
        "architecture": settings["architecture"],
        "licence": settings["licence"],
        "description": f"{settings['description']} Published figures of the RIKEN model: "
                       f"{published} (MAE, years); this file is {identity}. {unknown}",
        "training_data": settings["training_data"],
        "metrics": {"published_figures_of_the_riken_model": {
            **settings["published_metrics"], "file_identity": identity}},
    }


def _max_diff(onnx_path: Path, inputs: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["age"], {"input": inputs[i : i + 1]})[0].reshape(-1)
                          for i in range(len(inputs))])
    return float(np.max(np.abs(got - expected.reshape(-1))))


def import_torchscript(file: str | Path, out_dir: str | Path, preset: str = "riken",
                       opset: int = 17, verify_inputs: np.ndarray | None = None,
                       tolerance: float | None = None, *,
                       verify_images: str | Path | Iterable[str | Path] | None = None,
                       weights: str = "float32") -> ModelCard:
    """Wrap a TorchScript age model as ``model.onnx`` + ``model_card.json``.

    Parameters
    ----------
    file : path
        The TorchScript file: input (N, 3, S, S) normalised, output (N,) or (N, 1) years.
        Loading it runs code from it: only files you trust.
    out_dir : path
        Model directory to create.
    preset : str
        Preprocessing and card fields, one of :data:`PRESETS`.
    opset : int
        ONNX opset.
    verify_inputs : numpy.ndarray, optional
        Preprocessed inputs (N, 3, S, S) on which torch and ONNX Runtime must agree
        within `tolerance` years.
    tolerance : float, optional
        Default :data:`TOLERANCE_YEARS` of `weights`.
    verify_images : path or paths, optional
        Radiographs (a folder or files) to verify on, preprocessed as the card says;
        default (and without `verify_inputs`) :func:`synthetic_radiographs`.
    weights : {'float32', 'float16'}
        Store the weights in float16 (:func:`weights_to_float16`): half the size.

    Returns
    -------
    ModelCard

    Raises
    ------
    ModelNotFoundError
        `file` is not a loadable TorchScript model.
    ModelError
        ONNX and torch disagree by more than `tolerance` years.
    """
    torch = require("torch", "train", "xrayage import-torchscript")

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if weights not in TOLERANCE_YEARS:
        raise ValueError(f"weights must be one of {sorted(TOLERANCE_YEARS)}, not {weights!r}")
    tol = TOLERANCE_YEARS[weights] if tolerance is None else tolerance
    settings = PRESETS[preset]
    spec: PreprocessSpec = settings["preprocessing"]
    file = Path(file)
    if not zipfile.is_zipfile(file):  # a TorchScript file is a zip archive
        raise ModelNotFoundError(f"{file}: not a TorchScript model (not a zip archive)")
    source = ("given inputs" if verify_inputs is not None else
              "images" if verify_images is not None else "synthetic radiographs")
    if verify_inputs is None:
        verify_inputs = verification_inputs(spec, verify_images)
    inputs = np.ascontiguousarray(verify_inputs, np.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.warning("loading TorchScript %s: it runs code from the file", file.name)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates jit.load; it still works
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            scripted = torch.jit.load(str(file), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelNotFoundError(f"{file}: not a loadable TorchScript model ({exc})") from exc

    onnx_path = out / "model.onnx"
    with torch.no_grad():
        expected = np.concatenate([scripted(torch.from_numpy(inputs[i : i + 1])).numpy()
                                   .reshape(-1) for i in range(len(inputs))])
        torch.onnx.export(scripted, (torch.from_numpy(inputs[:1]),), str(onnx_path),
                          input_names=["input"], output_names=["age"], opset_version=opset,
                          dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "age": {0: "batch"}})
    diff = _max_diff(onnx_path, inputs, expected)
    if not diff <= tol:
        raise ModelError(f"ONNX and TorchScript outputs differ by {diff:.2e} y (> {tol}) "
                         f"on {len(inputs)} radiograph-like verification inputs")
    extra: dict[str, Any] = {"export_max_abs_diff_years": diff}
    if weights == "float16":
        fp32_bytes = onnx_path.stat().st_size
        weights_to_float16(onnx_path, onnx_path)
        extra["float32_export_max_abs_diff_years"] = diff
        diff = _max_diff(onnx_path, inputs, expected)
        if not diff <= tol:
            raise ModelError(f"float16 weights: ONNX and TorchScript outputs differ by "
                             f"{diff:.2e} y (> {tol})")
        extra.update(export_max_abs_diff_years=diff, onnx_bytes_float32=fp32_bytes)
        logger.info("float16 weights: %d -> %d bytes, max diff %.2e y", fp32_bytes,
                    onnx_path.stat().st_size, diff)

    sha = sha256_file(file)
    identity = _identity(settings, file, sha)
    card = ModelCard(
        preprocessing=spec, version=sha[:12], onnx_sha256=sha256_file(onnx_path),
        outputs={"age": "age"},
        extra={"source_file": file.name, "source_sha256": sha, "source_identity": identity,
               "preset": preset, "weights": weights, "onnx_bytes": onnx_path.stat().st_size,
               "verification": source,
               "verification_inputs": len(inputs), "tolerance_years": tol, **extra},
        **_card_fields(settings, file, identity),
    )
    card.save(out)
    return card
