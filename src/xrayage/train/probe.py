"""Linear probe: a frozen (e.g. ImageNet) backbone with a closed-form ridge head.

With few images and a CPU, fitting only the GAP -> linear head on frozen features is
the strongest thing that can be trained: each image passes through the backbone once,
and the head is solved exactly. The result is an ordinary
:class:`~xrayage.train.model.AgeNet` checkpoint, exported like any other, with an exact
CAM.

The ridge penalty is chosen by patient-disjoint k-fold cross-validation on the
training split only; features are standardised inside the fit, and the standardisation is
folded into the head's weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cells import finer_grid_weights
from ..datasets import Sample
from ..folds import assign_folds
from .cache import ImageCache
from .fit import TrainConfig, prepare
from .oof import write_oof

logger = logging.getLogger(__name__)

ALPHA_RATIOS = tuple(float(a) for a in np.logspace(-4, 1, 26))
"""Ridge penalties searched, per standardised feature (the penalty is this times the
feature count, so the search fits 7,000 global means and 60,000 grid cells alike)."""


@torch.no_grad()
def extract_features(model: Any, images: np.ndarray, spec: Any, batch_size: int = 16,
                     augment_seed: int | None = None) -> np.ndarray:
    """The head's input features (every selected level's cell means): (N, Σ C_l g²) float32,
    as the network computes them (a 6 x 6 grid of 1,312 images and two views is 3.9 GB).

    Parameters
    ----------
    model : AgeNet
    images : numpy.ndarray
        uint8 (N, S, S) from the training cache.
    spec : PreprocessSpec
    augment_seed : int, optional
        Transform each image once at random first (the training augmentation, no flips),
        seeded: an augmented view for the ridge fit.
    """
    from .augment import AugmentConfig, augment, normalize, to_float

    model.eval()
    out = []
    generator = torch.Generator().manual_seed(augment_seed or 0)
    for start in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
        if augment_seed is not None:
            x = augment(x, AugmentConfig(), generator)
        feats = model.features(normalize(x, spec))
        out.append(model.pool(feats).float().numpy())
    return np.concatenate(out)


def solve_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
    """Ridge coefficients (standardised x, centred y) for each alpha, via one
    decomposition: of the images' Gram matrix when there are more features than images
    (the dual form), else an SVD of x.

    Parameters
    ----------
    x : numpy.ndarray
        (N, F) standardised features.
    y : numpy.ndarray
        (N,) centred targets.
    alphas : sequence of float
        Penalties.

    Returns
    -------
    list of numpy.ndarray
        The (F,) coefficients ``(x'x + alpha I)^-1 x'y`` for each alpha.
    """
    if x.shape[0] < x.shape[1]:
        e, v = np.linalg.eigh(x @ x.T)
        vty, e = v.T @ y, np.clip(e, 0.0, None)
        return [x.T @ (v @ (vty / (e + a))) for a in alphas]
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return [vt.T @ (s / (s**2 + a) * uty) for a in alphas]


GRAM_CHUNK = 4096
"""Feature columns standardised and multiplied at a time by the dual ridge (a 6 x 6 grid
has 250,000 features: the whole standardised matrix is never held in memory)."""


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 where a column is constant)."""
    mean, sd = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(sd > 1e-12, sd, 1.0)


class _DualFit:
    """Ridge on the `fit` rows of x, standardised by those rows' column statistics, in the
    dual form: Gram matrices are accumulated over column chunks, so x (float32, as
    extracted) is read but never copied or standardised whole.

    ``predict(alphas)`` gives the `score` rows' predictions for each penalty;
    ``weights(alpha)`` the raw-feature weights and intercept, in years.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, fit: np.ndarray,
                 score: np.ndarray | None = None) -> None:
        self.x, self.fit = x, fit
        score = np.zeros(0, int) if score is None else score
        self.ybar = float(y.mean())
        gram, cross = np.zeros((len(fit), len(fit))), np.zeros((len(score), len(fit)))
        for lo in range(0, x.shape[1], GRAM_CHUNK):
            z, mean, sd = self._chunk(lo)
            gram += z @ z.T
            if len(score):
                cross += ((x[score, lo:lo + GRAM_CHUNK] - mean) / sd) @ z.T
        e, self.v = np.linalg.eigh(gram)
        self.e, self.vty, self.cross = np.clip(e, 0.0, None), self.v.T @ (y - self.ybar), cross

    def _chunk(self, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = self.x[self.fit, lo:lo + GRAM_CHUNK]
        mean, sd = _standardise(block)
        return (block - mean) / sd, mean, sd

    def _dual(self, alpha: float) -> np.ndarray:
        return self.v @ (self.vty / (self.e + alpha))

    def predict(self, alphas: Sequence[float]) -> np.ndarray:
        """(len(alphas), len(score)) predictions in years."""
        return np.stack([self.cross @ self._dual(a) + self.ybar for a in alphas])

    def weights(self, alpha: float) -> tuple[np.ndarray, float]:
        """Weights on the raw features and the intercept, in years."""
        dual, weight = self._dual(alpha), np.zeros(self.x.shape[1])
        bias = self.ybar
        for lo in range(0, self.x.shape[1], GRAM_CHUNK):
            z, mean, sd = self._chunk(lo)
            w = (z.T @ dual.astype(z.dtype)) / sd
            weight[lo:lo + GRAM_CHUNK], bias = w, bias - float(w @ mean)
        return weight, bias


def _dual_form(x: np.ndarray) -> bool:
    return x.shape[0] < x.shape[1]


def choose_alpha(x: np.ndarray, y: np.ndarray, fold: np.ndarray,
                 alphas: Sequence[float] | None = None, scored: np.ndarray | None = None
                 ) -> tuple[float, np.ndarray]:
    """Pick the penalty by k-fold CV over the given (patient-disjoint) fold labels; return
    it and the out-of-fold predictions of the `scored` rows at that penalty.

    Default penalties: ``ALPHA_RATIOS`` times the feature count. `scored` (default all
    rows) marks the original images; the other rows (augmented views) only ever train.
    Each fold's features are standardised by its training rows.
    """
    if alphas is None:
        alphas = [r * x.shape[1] for r in ALPHA_RATIOS]
    scored = np.ones(len(y), bool) if scored is None else scored
    preds = np.zeros((len(alphas), len(y)))
    for k in np.unique(fold):
        tr, va = fold != k, (fold == k) & scored
        if _dual_form(x):
            fitted = _DualFit(x, y[tr], np.flatnonzero(tr), np.flatnonzero(va))
            preds[:, va] = fitted.predict(alphas)
            continue
        mean, sd = _standardise(x[tr])
        coefs = solve_ridge((x[tr] - mean) / sd, y[tr] - y[tr].mean(), alphas)
        for i, coef in enumerate(coefs):
            preds[i, va] = ((x[va] - mean) / sd) @ coef + y[tr].mean()
    mae = np.abs(preds - y)[:, scored].mean(axis=1)
    best = int(np.argmin(mae))
    return float(alphas[best]), preds[best, scored]


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Ridge on raw features (standardised inside): weights and intercept, in years.

    `rows` (default all) selects the rows of x to fit, without copying them; `y` is theirs.
    """
    if _dual_form(x):
        return _DualFit(x, y, np.arange(len(x)) if rows is None else rows).weights(alpha)
    x = x if rows is None else x[rows]
    mean, sd = _standardise(x)
    weight = solve_ridge((x - mean) / sd, y - y.mean(), [alpha])[0] / sd
    return weight, float(y.mean() - weight @ mean)


def set_head(model: Any, x: np.ndarray, y: np.ndarray, alpha: float) -> None:
    """Fit ridge on all of (x, y) and write it into the AgeNet head (years -> head units)."""
    weight, bias = fit_ridge(x, y, alpha)
    scale, shift = float(model.age_scale), float(model.age_shift)
    model.head.weight.data[0] = torch.from_numpy(weight / scale).float()
    model.head.bias.data[0] = (bias - shift) / scale


class _Rows:
    """The rows `rows` of x, indexed like an array without copying them (``x[rows][i, j]``
    is ``x[rows[i], j]``): the training folds of a cross-fit, views included."""

    def __init__(self, x: np.ndarray, rows: np.ndarray) -> None:
        self.x, self.rows = x, rows
        self.shape = (len(rows), x.shape[1])

    def __getitem__(self, key: Any) -> np.ndarray:
        i, j = key if isinstance(key, tuple) else (key, slice(None))
        return self.x[self.rows[i], j]


def crossfit_ridge(x: np.ndarray, y: np.ndarray, patients: Sequence[str], copies: int = 1,
                   folds: int = 5, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold predictions of the whole ridge recipe, patient-disjoint and nested.

    Each outer fold's model is fitted on the other folds' images (and their views), with
    its penalty chosen by an inner patient-grouped CV on those images only; so every
    prediction comes from a model that never saw the patient, nor chose anything on them.

    Parameters
    ----------
    x : numpy.ndarray
        ``copies * len(y)`` feature rows: the images, then each set of augmented views in
        the same order.
    y : numpy.ndarray
        Ages of the images.
    patients : sequence of str
        Patient id per image.
    copies : int
        Rows of `x` per image (1 + augmented views).
    folds : int
        Outer (and inner) folds, assigned by :func:`~xrayage.folds.assign_folds`
        (balanced in age; the inner ones with ``seed + 1``).
    seed : int

    Returns
    -------
    oof : numpy.ndarray
        One prediction per image.
    alphas : list of float
        The penalty chosen in each outer fold.
    """
    n = len(y)
    outer = assign_folds(patients, folds, ages=y, seed=seed)
    oof, alphas = np.zeros(n), []
    for k in range(folds):
        tr = np.flatnonzero(outer != k)
        rows = np.concatenate([tr + c * n for c in range(copies)])
        inner = assign_folds([patients[int(i)] for i in tr], folds, ages=y[tr], seed=seed + 1)
        train = _Rows(x, rows) if _dual_form(x) else x[rows]
        alpha, _ = choose_alpha(train, np.tile(y[tr], copies),  # type: ignore[arg-type]
                                np.tile(inner, copies), scored=np.arange(len(rows)) < len(tr))
        weight, bias = fit_ridge(x, np.tile(y[tr], copies), alpha, rows=rows)
        oof[outer == k] = x[:n][outer == k] @ weight + bias
        alphas.append(alpha)
    return oof, alphas


def fit_linear_probe(cfg: TrainConfig, folds: int = 5) -> Path:
    """Train a linear probe; write ``checkpoints/probe.ckpt`` and update ``run.json``.

    With ``cfg.ridge_crossfit``, also score the recipe on the training images by
    :func:`crossfit_ridge` and write the out-of-fold predictions to
    ``probe_oof.csv`` by :func:`~xrayage.train.oof.write_oof` (the columns
    :data:`~xrayage.train.oof.OOF_FIELDS`, with a ``probe_oof.csv.provenance.json`` sidecar
    that marks it out-of-fold for ``xrayage analyze``): the validation of a model trained on
    every image. Folds are assigned by :func:`~xrayage.folds.assign_folds`.

    Returns
    -------
    Path
        The checkpoint, loadable by :func:`xrayage.train.export.load_checkpoint`.
    """
    import lightning as L  # noqa: N812

    from .module import AgeModule

    datasets, split, cache, info = prepare(cfg)
    out = Path(cfg.out)
    samples = [s for d in datasets for s in d.samples]
    torch.manual_seed(cfg.seed)
    module = AgeModule(
        backbone=cfg.backbone, spec=info["preprocessing"], feature_levels=cfg.feature_levels,
        taps=cfg.taps, grid=cfg.grid, init_weights=cfg.init_weights,
        init_age=info["train_mean_age"] or 50.0,
        age_scale=max(1.0, info["train_sd_age"] or 15.0), run_dir=str(out.resolve()),
        augment_cfg={"hflip": False, "enabled": False},
    )
    spec = cfg.spec()
    copies = 1 + cfg.ridge_views
    parts = {}
    for role in ("train", "val"):
        found, images = cached_images(cache, split.assign(samples, role))
        # the training images' augmented views (seeds seed+1, ...) follow the originals;
        # they join the fit, never the score
        x = np.concatenate([
            extract_features(module.net, images, spec, augment_seed=cfg.seed + v if v else None)
            for v in range(copies if role == "train" else 1)]) if found else np.zeros((0, 1))
        parts[role] = (x, np.array([s.age_years for s in found]), found)
    x, y, train = parts["train"]
    if len(y) < 2 * folds:
        raise ValueError(f"{len(y)} training images are too few for a {folds}-fold ridge probe")
    patients = [s.patient_id for s in train]
    fold = assign_folds(patients, folds, ages=y, seed=cfg.seed)
    alpha, oof = choose_alpha(x, np.tile(y, copies), np.tile(fold, copies),
                              scored=np.arange(len(x)) < len(y))
    set_head(module.net, x, np.tile(y, copies), alpha)
    result: dict[str, Any] = {"probe_alpha": alpha, "probe_train_cv_mae": float(
        np.abs(oof - y).mean()), "probe_train_images": len(y), "probe_views": copies}
    if cfg.ridge_crossfit:
        oof, alphas = crossfit_ridge(x, y, patients, copies, folds, cfg.seed)
        # crossfit_ridge's outer folds are `fold` (same patients, ages and seed)
        write_oof(out / "probe_oof.csv",
                  [{"path": str(s.path), "patient_id": s.patient_id, "fold": int(f),
                    "age_years": s.age_years, "xray_age": float(p), "sex": s.sex,
                    "view": s.view} for s, p, f in zip(train, oof, fold, strict=True)],
                  method="xrayage.train.probe.crossfit_ridge", k=folds, seed=cfg.seed,
                  nested=True, alphas=alphas, views=copies - 1)
        result.update(probe_crossfit_mae=float(np.abs(oof - y).mean()),
                      probe_crossfit_alphas=alphas)
    xv, yv, _ = parts["val"]
    if len(yv):
        with torch.no_grad():
            pred = module.net.head(torch.from_numpy(xv).float()).squeeze(1)
            pred = (pred * module.net.age_scale + module.net.age_shift).numpy()
        result["best_val_mae"] = float(np.abs(pred - yv).mean())
        result["val_images"] = len(yv)
    path = out / "checkpoints" / "probe.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0},
               path)
    run = json.loads((out / "run.json").read_text())
    run.update(result, best_checkpoint=str(path), head="ridge")
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    logger.info("linear probe: alpha %.3g, train CV MAE %.2f, val MAE %s", alpha,
                result["probe_train_cv_mae"], result.get("best_val_mae"))
    return path


def merge_grid_probes(checkpoints: Sequence[str | Path], out: str | Path) -> Path:
    """One checkpoint whose age is the mean of ridge probes on several grids of one frozen
    backbone (same blocks): each head is written on the finest grid's cell means
    (:func:`finer_grid_weights`) and the heads are averaged in years, so the ensemble is one
    linear head and its class activation map stays exact.

    Returns
    -------
    Path
        `out`, a checkpoint of the finest grid's network with the averaged head.
    """
    loaded = [torch.load(str(c), map_location="cpu", weights_only=True) for c in checkpoints]
    hparams = [c["hyper_parameters"] for c in loaded]
    keys = ("backbone", "feature_levels", "taps", "spec")
    if any(any(h.get(k) != hparams[0].get(k) for k in keys) for h in hparams):
        raise ValueError(f"the probes differ in {keys}: only grids may differ")
    finest = max(range(len(loaded)), key=lambda i: int(hparams[i]["grid"]))
    grid = int(hparams[finest]["grid"])
    weight, bias = np.zeros(0), 0.0
    for ckpt, hp in zip(loaded, hparams, strict=True):
        state = ckpt["state_dict"]
        scale, shift = float(state["net.age_scale"]), float(state["net.age_shift"])
        w = state["net.head.weight"][0].double().numpy() * scale
        fine = finer_grid_weights(w, int(hp["grid"]), grid) / len(loaded)
        weight = fine if not weight.size else weight + fine
        bias += (float(state["net.head.bias"][0]) * scale + shift) / len(loaded)
    merged = loaded[finest]
    state = merged["state_dict"]
    scale, shift = float(state["net.age_scale"]), float(state["net.age_shift"])
    state["net.head.weight"][0] = torch.from_numpy(weight / scale).float()
    state["net.head.bias"][0] = (bias - shift) / scale
    merged["grids"] = [int(h["grid"]) for h in hparams]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(merged, path)
    return path


def cached_images(cache: ImageCache, samples: list[Sample]) -> tuple[list[Sample], np.ndarray]:
    """The cached images of `samples`.

    Returns
    -------
    found : list of Sample
        The samples in the cache, in order (others, which failed to decode or were
        rejected, are left out).
    images : numpy.ndarray
        uint8 (len(found), S, S), or an empty array when none was found.
    """
    found, where = cache.locate(samples)
    return found, np.stack([cache.image(int(a), int(b)) for a, b in where]) if found else where
