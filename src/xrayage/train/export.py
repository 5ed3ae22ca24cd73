"""Export a training checkpoint to ``model.onnx`` + ``model_card.json``, verified against torch.

The ONNX graph takes ``input`` (N, C, S, S) float32 (dynamic N) and returns ``age`` (N,),
``log_var`` (N,) for Gaussian-NLL models, and ``cam`` (N, h, w), with
``cam.mean((-2, -1)) + card.extra["cam_bias"] == age``, and ``features`` (N, D), the pooled
input of the linear head (:func:`~xrayage.train.onnx_graph.add_features_output`), which the
content quality checks read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..card import CARD_FILE, ModelCard, PreprocessSpec, sha256_file
from ..errors import ModelError
from ..metrics import age_metrics
from .model import AgeNet, ExportWrapper
from .onnx_graph import FEATURES, add_features_output

logger = logging.getLogger(__name__)

TOLERANCE_YEARS = 1e-3
"""Largest |ONNX Runtime - torch| age allowed on real images (about 9 hours of age).

Both run float32 but sum in different orders; with thousands of pooled features (the
bundled model has 6,936) the difference reaches 1e-4 y (measured 3e-5 to 1.03e-4). The
card records the measured value."""
FP16_TOLERANCE_YEARS = 0.1


def load_checkpoint(path: str | Path, unsafe: bool = False) -> tuple[AgeNet, dict[str, Any]]:
    """Load the AgeNet and hyperparameters of a Lightning checkpoint (CPU, eval mode).

    Checkpoints are read with ``weights_only=True`` (no arbitrary unpickling) unless
    `unsafe` is set, for checkpoints from elsewhere holding other objects.
    """
    from .module import AgeModule

    try:
        module = AgeModule.load_from_checkpoint(str(path), map_location="cpu",
                                                weights_only=not unsafe, init_weights=None)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint {path} not found") from exc
    return module.net.eval(), dict(module.hparams)


def verification_images(run_dir: Path | None, limit: int = 8) -> list[Path]:
    """Real images for the ORT/torch check: validation images of the run, else training ones."""
    if run_dir is None or not (run_dir / "split.json").is_file():
        return []
    from ..datasets import filter_samples, load_dataset
    from ..datasets.splits import Split

    run = json.loads((run_dir / "run.json").read_text())
    split = Split.load(run_dir / "split.json")
    samples = [s for spec in run["config"]["data"]
               for s in filter_samples(load_dataset(spec).samples, frontal_only=False)]
    chosen = split.assign(samples, "val") + split.assign(samples, "train")
    return [s.path for s in chosen[:limit]]


def _onnx_export(wrapper: torch.nn.Module, example: torch.Tensor, path: Path,
                 names: list[str], opset: int) -> str:
    axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    try:
        torch.onnx.export(wrapper, (example,), str(path), input_names=["input"],
                          output_names=names, dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
        return "torchscript"
    except Exception as exc:  # the legacy exporter may be gone in a future torch
        logger.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(wrapper, (example,), str(path), input_names=["input"], output_names=names,
                      dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                      external_data=False)
    return "dynamo"


def export(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = 17,
    card_updates: dict[str, Any] | None = None,
    images: Sequence[str | Path] | None = None,
    name: str | None = None,
    val_metrics: bool = True,
    unsafe: bool = False,
    fp16_weights: bool = False,
) -> ModelCard:
    """Export a checkpoint to an ONNX model directory and verify it.

    Parameters
    ----------
    checkpoint : path
        Lightning checkpoint written by ``xrayage train``.
    out : path
        Model directory to create (``model.onnx``, ``model_card.json``).
    opset : int
        ONNX opset.
    card_updates : dict, optional
        Card fields to set after export (e.g. ``bias_correction``, ``conformal``,
        ``description``), for the calibration step.
    images : sequence of path, optional
        Real radiographs for verification; default: the run's validation images.
    name : str, optional
        Card name (default: the output folder's name).
    val_metrics : bool
        Score the run's validation split from the cache with ONNX Runtime.
    unsafe : bool
        Load the checkpoint with full unpickling (only for checkpoints you trust).
    fp16_weights : bool
        Store the weights as float16 (half the file; float32 compute, see
        :mod:`xrayage.train.compress`), after verifying the float32 export. The
        float16 model must stay within :data:`FP16_TOLERANCE_YEARS` of torch.

    Returns
    -------
    ModelCard

    Raises
    ------
    ModelError
        If ONNX Runtime and torch disagree by more than :data:`TOLERANCE_YEARS` on any image, or no
        real image is available for the check.
    """
    from ..io import read_radiograph
    from ..model import AgeModel
    from ..preprocess import preprocess

    net, hp = load_checkpoint(checkpoint, unsafe=unsafe)
    spec = PreprocessSpec(**hp["spec"])
    run_dir = Path(hp["run_dir"]) if hp.get("run_dir") else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gaussian = net.log_var_head is not None
    names = ["age", "log_var", "cam"] if gaussian else ["age", "cam"]
    size = spec.image_size
    example = torch.zeros(2, spec.channels, size, size)
    exporter = _onnx_export(ExportWrapper(net).eval(), example, out / "model.onnx", names, opset)
    add_features_output(out / "model.onnx")  # the head's input, for the content checks
    names.append(FEATURES)

    paths = list(images) if images else verification_images(run_dir)
    batch = np.stack([preprocess(read_radiograph(p), spec) for p in paths]) if paths else None
    if batch is None:
        raise ModelError("no real image to verify the export: pass images=[...] (--verify-image)")
    with torch.no_grad():
        ref_age, _, ref_cam = net.forward_with_cam(torch.from_numpy(batch))
    run = json.loads((run_dir / "run.json").read_text()) if run_dir else {}
    pooling = "GAP" if net.grid == 1 else f"{net.grid}x{net.grid} grid pooling"
    card = ModelCard(
        name=name or out.name, version=__version__,
        architecture=f"AgeNet(timm {hp['backbone']}, feature levels {net.feature_levels}"
                     f"{', taps ' + ','.join(net.taps) if net.taps else ''}, "
                     f"{pooling} -> linear{' + log-variance' if gaussian else ''}"
                     f"{', ridge on a frozen backbone' if run.get('head') == 'ridge' else ''})",
        preprocessing=spec, outputs={n: n for n in names},
        training_data=run.get("training_data", []),
        metrics={k: run[k] for k in ("best_val_mae", "train_median_age", "train_mean_age",
                                     "train_images") if run.get(k) is not None},
        extra={"backbone": hp["backbone"], "feature_levels": net.feature_levels,
               "taps": net.taps, "grid": net.grid, "head": run.get("head", "trained"),
               "loss": hp["loss"], "cam_bias": net.age_bias(), "exporter": exporter,
               "opset": opset, "checkpoint": str(checkpoint),
               "split_file": str(run_dir / "split.json") if run_dir else None},
    )
    card.onnx_sha256 = sha256_file(out / "model.onnx")
    card.save(out)
    model = AgeModel(out, verify=True)
    got = model.run(batch, cam=True)
    diff = float(np.abs(got.age - ref_age.numpy()).max())
    cam_diff = float(np.abs(got.cam - ref_cam.numpy()).max()) if got.cam is not None else 0.0
    if not np.isfinite(diff) or diff > TOLERANCE_YEARS:
        (out / CARD_FILE).unlink()  # an unverified export must not look like a model
        raise ModelError(f"ONNX Runtime and torch disagree by {diff:.2e} years "
                         f"(> {TOLERANCE_YEARS}) on {len(paths)} real images: export is broken")
    card.extra["verification"] = {"images": len(paths), "max_abs_age_diff": diff,
                                  "max_abs_cam_diff": cam_diff, "tolerance": TOLERANCE_YEARS}
    if fp16_weights:
        from .compress import store_weights_fp16

        store_weights_fp16(out / "model.onnx")
        card.onnx_sha256 = sha256_file(out / "model.onnx")
        card.save(out)
        model = AgeModel(out, verify=True)
        diff16 = float(np.abs(model.run(batch).age - ref_age.numpy()).max())
        if not diff16 <= FP16_TOLERANCE_YEARS:
            (out / CARD_FILE).unlink()
            raise ModelError(f"float16 weights change the age by {diff16:.3f} y "
                             f"(> {FP16_TOLERANCE_YEARS}): keep float32")
        card.extra["weights"] = "float16 storage, float32 compute"
        card.extra["verification"]["max_abs_age_diff_fp16_weights"] = diff16
    if val_metrics and run_dir is not None:
        card.metrics["validation"] = _val_metrics(model, run_dir, run)
    for key, value in (card_updates or {}).items():
        if not hasattr(card, key):
            raise ValueError(f"card_updates: ModelCard has no field {key!r}")
        setattr(card, key, value)
    card = ModelCard.from_dict(json.loads(json.dumps(dataclasses.asdict(card))))
    card.save(out)
    logger.info("exported %s (max |ORT - torch| = %.2e y on %d images)", out, diff, len(paths))
    return card


def _val_metrics(model: Any, run_dir: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """ORT metrics on the validation split, read from the training cache (if still there)."""
    from ..datasets import filter_samples, load_dataset
    from ..datasets.splits import Split
    from ..preprocess import normalize
    from .cache import ImageCache

    cache_dir = Path(run.get("cache", ""))
    if not (cache_dir / "index.jsonl").is_file():
        return None
    cache = ImageCache.open(cache_dir)
    samples = [s for spec in run["config"]["data"]
               for s in filter_samples(load_dataset(spec).samples, frontal_only=False)]
    val, where = cache.locate(Split.load(run_dir / "split.json").assign(samples, "val"))
    preds = []
    for start in range(0, len(val), 32):
        imgs = np.stack([cache.image(int(a), int(b)) for a, b in where[start : start + 32]])
        preds.append(model.run(normalize(imgs.astype(np.float32) / 255.0, cache.spec)).age)
    if not preds:
        return None
    return age_metrics(age_years=[s.age_years for s in val], xray_age=np.concatenate(preds),
                       train_median=run.get("train_median_age"))
