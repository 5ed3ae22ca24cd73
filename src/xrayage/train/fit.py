"""``fit``: datasets -> filters -> patient split -> cache -> Lightning training run.

The run directory receives, before training starts (rank 0 only):

- ``split.json``: patient ids per split (export and later calibration reuse it);
- ``preprocess.json``: the :class:`~xrayage.card.PreprocessSpec`;
- ``run.json``: the configuration, the datasets with licences, image counts and the
  training median age (the no-skill predictor);
- ``cache_problems.jsonl``: images the cache could not decode or the QC rejected;
- ``checkpoints/`` (best on validation MAE, and ``last.ckpt``), ``logs/`` (CSV) and
  ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click
import numpy as np

from ..card import PreprocessSpec
from ..datasets import Dataset, check_spec, filter_samples, load_dataset, portable_spec
from ..datasets.base import Sample
from ..datasets.splits import Split, split_patients
from ..insample import RECORD_KEY, new_salt, patient_record
from .cache import ImageCache, build_cache

if TYPE_CHECKING:
    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI options of ``xrayage train``)."""

    data: list[str]
    out: str
    backbone: str = "efficientnet_b0"
    image_size: int = 256
    channels: int = 1
    square: str = "crop"
    epochs: int = 20
    loss: str = "l1"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    backbone_lr_mult: float = 1.0
    freeze_stages: int = 0
    feature_levels: list[int] | None = None
    taps: list[str] | None = None
    grid: int = 1
    head: str = "trained"
    ridge_views: int = 0
    ridge_crossfit: bool = False
    init_weights: str | None = None
    seed: int = 0
    val_fraction: float = 0.1
    adults_only: bool = False
    min_age: float | None = None
    max_age: float | None = None
    all_views: bool = False
    hflip: bool = False
    augment: bool = True
    max_steps: int = -1
    limit_train_batches: float | int | None = None
    patience: int = 5
    resume: str | None = None
    num_workers: int = 2
    cache_dir: str | None = None
    cache_workers: int | None = None
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    progress: bool = True
    cache_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> PreprocessSpec:
        """The preprocessing: mean = std = 0.5 per channel (timm/Keras Xception convention)."""
        return PreprocessSpec(image_size=self.image_size, square=self.square,
                              channels=self.channels, mean=(0.5,) * self.channels,
                              std=(0.5,) * self.channels, quantize=True)


def global_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, SLURM, Lightning)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def prepare(cfg: TrainConfig) -> tuple[list[Dataset], Split, ImageCache, dict[str, Any]]:
    """Load and filter the data, split it, build the cache and write the run files."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = [load_dataset(spec, role="train") for spec in cfg.data]
    age_range = None
    if cfg.min_age is not None or cfg.max_age is not None:
        age_range = (cfg.min_age if cfg.min_age is not None else 0.0,
                     cfg.max_age if cfg.max_age is not None else 200.0)
    for d in datasets:
        d.samples = filter_samples(d.samples, frontal_only=not cfg.all_views,
                                   adults_only=cfg.adults_only, age_range=age_range)
    samples = [s for d in datasets for s in d.samples]
    if not samples:
        raise ValueError("no samples left after filtering (views, --adults-only, age range)")
    split_file = out / "split.json"
    split = (Split.load(split_file) if cfg.resume and split_file.is_file()
             else split_patients(samples, cfg.val_fraction, seed=cfg.seed))
    if global_rank() == 0:
        for line in data_summary(datasets, split):
            click.echo(line, err=True)
    spec = cfg.spec()
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    ready = out / ".cache_ready"
    stamp = hashlib.sha256("\n".join(sorted(str(s.path) for s in samples)).encode()).hexdigest()
    if global_rank() == 0:
        cache = build_cache(samples, spec, cache_root, workers=cfg.cache_workers,
                            progress=cfg.progress)
        ready.write_text(stamp)
    else:  # other ranks (torchrun/SLURM start them together) wait for rank 0's cache
        while not (ready.is_file() and ready.read_text() == stamp):
            time.sleep(2)
        cache = build_cache(samples, spec, cache_root, workers=0, progress=False)
    train = split.assign(samples, "train")
    used = {str(Path(s.path).resolve()) for s in samples}
    ages = np.asarray([s.age_years for s in cache.locate(train)[0]])
    info = {
        "config": dataclasses.asdict(cfg),
        "preprocessing": dataclasses.asdict(spec),
        "training_data": training_data(datasets, train),
        "images": len(samples),
        "train_images": len(ages),
        "cache": str(cache.directory),
        "cache_problems": len([p for p in cache.problems() if p["path"] in used]),
        "train_median_age": float(np.median(ages)) if len(ages) else None,
        "train_mean_age": float(ages.mean()) if len(ages) else None,
        "train_sd_age": float(ages.std()) if len(ages) > 1 else None,
    }
    if global_rank() == 0:
        split.save(split_file)
        (out / "preprocess.json").write_text(json.dumps(info["preprocessing"], indent=1) + "\n")
        with open(out / "cache_problems.jsonl", "w") as handle:
            handle.writelines(json.dumps(p) + "\n" for p in cache.problems() if p["path"] in used)
        (out / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    if info["cache_problems"]:
        logger.warning("%d images failed to decode or were rejected by QC: see %s",
                       info["cache_problems"], out / "cache_problems.jsonl")
    return datasets, split, cache, info


def check_config(cfg: TrainConfig) -> None:
    """Check every option before any work: backbone, sizes, data specs, files, head options.

    Raises
    ------
    ValueError
        The first bad option, in one line.
    """
    import timm

    if cfg.head not in ("trained", "ridge"):
        raise ValueError(f"head must be 'trained' or 'ridge', not {cfg.head!r}")
    if cfg.head == "trained" and cfg.ridge_views:
        raise ValueError("ridge views are augmented copies for the ridge head only; a trained "
                         "head augments every epoch (use --head ridge, or drop --ridge-views)")
    if cfg.head == "trained" and cfg.ridge_crossfit:
        raise ValueError("--ridge-crossfit scores the ridge head only; for a trained head use "
                         "`xrayage crossfit`")
    if not timm.is_model(cfg.backbone):
        close = timm.list_models(f"*{cfg.backbone.split('.')[0][:6]}*")[:5]
        raise ValueError(f"--backbone {cfg.backbone!r}: no such timm model"
                         + (f" (similar: {', '.join(close)})" if close else ""))
    if not 32 <= cfg.image_size <= 4096:
        raise ValueError(f"--image-size {cfg.image_size}: give 32 to 4096 pixels")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {cfg.val_fraction}: give 0 to < 1")
    for name, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise ValueError(f"{name} {value}: give at least 1")
    if cfg.lr <= 0:
        raise ValueError(f"--lr {cfg.lr}: give a positive learning rate")
    if cfg.min_age is not None and cfg.max_age is not None and cfg.min_age > cfg.max_age:
        raise ValueError(f"--min-age {cfg.min_age} is above --max-age {cfg.max_age}")
    for label, file in (("--init-weights", cfg.init_weights), ("--resume", cfg.resume)):
        if file and not Path(file).is_file():
            raise ValueError(f"{label} {file}: no such file")
    if not cfg.data:
        raise ValueError("no --data given")
    for spec in cfg.data:
        check_spec(spec)


def training_data(datasets: list[Dataset], train: list[Sample]) -> list[dict[str, Any]]:
    """The model card's ``training_data``: each dataset described, with the salted digests of
    the patients trained on (:mod:`xrayage.insample`; one random salt per run).

    Parameters
    ----------
    datasets : list of Dataset
        The datasets after filtering.
    train : list of Sample
        The samples of the training split.

    Returns
    -------
    list of dict
    """
    salt = new_salt()
    trained = {s.patient_id for s in train}
    return [{**d.describe(), RECORD_KEY: patient_record(
        (s.patient_id for s in d.samples if s.patient_id in trained), salt)} for d in datasets]


def data_summary(datasets: list[Dataset], split: Split) -> list[str]:
    """Lines describing the training data, printed when a run starts.

    Parameters
    ----------
    datasets : list of Dataset
        The datasets after filtering.
    split : Split
        The patient split.

    Returns
    -------
    list of str
        One line per dataset (images, patients, age range, views, sexes), then the split.
    """
    lines = []
    for d in datasets:
        ages = [s.age_years for s in d.samples]
        views = Counter(s.view or "?" for s in d.samples)
        sexes = Counter(s.sex or "?" for s in d.samples)
        age = f"age {min(ages):.0f}-{max(ages):.0f} (median {np.median(ages):.0f})" if ages else ""
        lines.append(
            f"data {d.describe()['name']} ({portable_spec(d.spec)}): {len(d.samples)} images, "
            f"{len({s.patient_id for s in d.samples})} patients, {age}; views "
            + " ".join(f"{k} {v}" for k, v in views.most_common()) + "; sex "
            + " ".join(f"{k} {v}" for k, v in sexes.most_common()))
    samples = [s for d in datasets for s in d.samples]
    parts = {name: split.assign(samples, name) for name in ("train", "val")}
    lines.append("split: " + ", ".join(
        f"{name} {len(kept)} images ({len({s.patient_id for s in kept})} patients)"
        for name, kept in parts.items()))
    return lines


def train_model(cfg: TrainConfig) -> Path:
    """Train as ``cfg.head`` says (``trained``: :func:`fit`; ``ridge``: a linear probe);
    return the checkpoint, or with ``cfg.cache_only`` the cache directory.

    Every option is checked first (:func:`check_config`), before any data is read.
    """
    check_config(cfg)
    if cfg.cache_only:
        return Path(prepare(cfg)[2].directory)
    if cfg.head == "ridge":
        from .probe import fit_linear_probe

        return fit_linear_probe(cfg)
    return fit(cfg)


def fit(cfg: TrainConfig) -> Path:
    """Train a model; return the path of the best checkpoint.

    Raises
    ------
    ValueError
        Bad options, no data, or an empty split.
    """
    import lightning as L  # noqa: N812
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
    )
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .data import AgeDataModule, CachedImages
    from .module import AgeModule

    print_lightning_once()
    datasets, split, cache, info = prepare(cfg)
    if cfg.cache_only:
        return Path(cache.directory)
    out = Path(cfg.out)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    samples = [s for d in datasets for s in d.samples]
    dm = AgeDataModule(CachedImages(cache, split.assign(samples, "train")),
                       CachedImages(cache, split.assign(samples, "val")),
                       batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    module = AgeModule(
        backbone=cfg.backbone, spec=info["preprocessing"], feature_levels=cfg.feature_levels,
        taps=cfg.taps, grid=cfg.grid, loss=cfg.loss, lr=cfg.lr, weight_decay=cfg.weight_decay,
        backbone_lr_mult=cfg.backbone_lr_mult, freeze_stages=cfg.freeze_stages,
        init_weights=cfg.init_weights, init_age=info["train_mean_age"] or 50.0,
        age_scale=max(1.0, info["train_sd_age"] or 15.0),
        augment_cfg={"hflip": cfg.hflip, "enabled": cfg.augment}, run_dir=str(out.resolve()),
    )
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best-{epoch:03d}-{val_mae:.3f}",
                           monitor="val_mae", mode="min", save_last=True, save_top_k=1)
    stop = EarlyStopping("val_mae", patience=cfg.patience, mode="min", strict=False)
    callbacks = [best, stop,
                 LearningRateMonitor("step")]
    if cfg.progress:
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=_lightning_precision(cfg.precision or _precision(cfg.accelerator)),
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, callbacks=callbacks,
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")],
        default_root_dir=out, enable_progress_bar=cfg.progress, log_every_n_steps=10,
        limit_train_batches=cfg.limit_train_batches, deterministic=False,
    )
    trainer.fit(module, dm, ckpt_path=cfg.resume)
    path = Path(best.best_model_path or best.last_model_path)
    if trainer.global_rank == 0:
        run = json.loads((out / "run.json").read_text())
        run.update(best_checkpoint=str(path), best_val_mae=_float(best.best_model_score),
                   epochs_run=trainer.current_epoch, global_steps=trainer.global_step)
        (out / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    return path


def print_lightning_once() -> None:
    """Print each Lightning log line once.

    The ``lightning`` package gives its logger a console handler of its own and still
    passes the records to the root logger, which the command line has configured too: each
    INFO line came out twice. Lightning's own handler keeps printing them; the root logger
    no longer repeats them.
    """
    lightning = logging.getLogger("lightning")
    if lightning.handlers:
        lightning.propagate = False


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _lightning_precision(value: str) -> _PRECISION_INPUT_STR | _PRECISION_INPUT_STR_ALIAS:
    """`value` as a Lightning ``precision``; ValueError (Lightning's own) if it is none."""
    from lightning.fabric.plugins.precision import precision as lp

    names: tuple[_PRECISION_INPUT_STR | _PRECISION_INPUT_STR_ALIAS, ...] = (
        get_args(lp._PRECISION_INPUT_STR) + get_args(lp._PRECISION_INPUT_STR_ALIAS))
    for name in names:
        if value == name:
            return name
    supported = (get_args(lp._PRECISION_INPUT_STR) + get_args(lp._PRECISION_INPUT_INT)
                 + get_args(lp._PRECISION_INPUT_STR_ALIAS))
    raise ValueError(f"Precision {value!r} is invalid. Allowed precision values: {supported}")


def _precision(accelerator: str) -> str:
    """bf16 (or fp16) mixed precision on a GPU, float32 on a CPU."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
