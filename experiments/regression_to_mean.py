"""Issue 16, point 3: regression to the mean, by age band, and two remedies measured honestly.

Reads the bundled recipe's nested out-of-fold predictions (``probe_oof.csv`` of
``scripts/build_default_model.py``) and, for the weighted ridge, the bundled model's one-view
features of the shared adult NIH images (``experiments/second_backbone.py`` caches them).

* slope of the prediction on age overall and within each age band;
* remedy A, a post-hoc stretch ``m + k (pred - m)``: k fitted on the training folds' own
  out-of-fold predictions (least absolute error over a grid), applied to the held-out fold;
* remedy B, age-balanced sample weights in the ridge (each age band weighs the same in the
  loss; weights ``(n / n_band) ** power``), nested 5-fold cross-fitting as the shipped ridge,
  compared with the unweighted ridge on the same one-view features.

Usage: ``python experiments/regression_to_mean.py --oof RUN/probe_oof.csv --features
/tmp/lite2/features_288.npz``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def band_table(y: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    from xrayage.metrics import age_band

    bands = np.array([age_band(a) for a in y])
    out = {"all": {"n": len(y), "mae": float(np.abs(pred - y).mean()),
                   "slope": float(np.polyfit(y, pred, 1)[0])}}
    for b in sorted(set(bands)):
        m = bands == b
        out[b] = {"n": int(m.sum()), "mae": float(np.abs(pred[m] - y[m]).mean()),
                  "bias": float((pred[m] - y[m]).mean()),
                  "slope": float(np.polyfit(y[m], pred[m], 1)[0]) if m.sum() > 2 else float("nan")}
    return {k: {a: round(v, 3) for a, v in d.items()} for k, d in out.items()}


def stretch_oof(y: np.ndarray, pred: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, list]:
    grid = np.round(np.arange(0.9, 1.61, 0.02), 2)
    out, chosen = np.empty_like(pred), []
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        m = pred[tr].mean()
        maes = [np.abs(m + s * (pred[tr] - m) - y[tr]).mean() for s in grid]
        s = float(grid[int(np.argmin(maes))])
        chosen.append(s)
        out[te] = m + s * (pred[te] - m)
    return out, chosen


def weighted_crossfit(x: np.ndarray, y: np.ndarray, patients: list[str], power: float
                      ) -> np.ndarray:
    """Nested cross-fitting of a ridge with age-balanced weights (power 0: unweighted)."""
    from xrayage.folds import assign_folds
    from xrayage.metrics import age_band
    from xrayage.train.probe import ALPHA_RATIOS, solve_ridge

    bands = np.array([age_band(a) for a in y])
    counts = {b: (bands == b).sum() for b in set(bands)}
    w_all = np.array([(len(y) / counts[b]) ** power for b in bands])

    def fit(tr: np.ndarray, alphas: list[float]) -> list[tuple[np.ndarray, float, np.ndarray,
                                                               np.ndarray]]:
        w = w_all[tr] / w_all[tr].mean()
        mean = np.average(x[tr], axis=0, weights=w)
        sd = np.sqrt(np.average((x[tr] - mean) ** 2, axis=0, weights=w))
        sd = np.where(sd > 1e-12, sd, 1.0)
        ybar = float(np.average(y[tr], weights=w))
        xs = (x[tr] - mean) / sd * np.sqrt(w)[:, None]
        coefs = solve_ridge(xs, (y[tr] - ybar) * np.sqrt(w), alphas)
        return [(c, ybar, mean, sd) for c in coefs]

    outer = assign_folds(patients, 5, ages=y, seed=0)
    oof = np.zeros(len(y))
    alphas = [r * x.shape[1] for r in ALPHA_RATIOS]
    for k in range(5):
        tr = np.flatnonzero(outer != k)
        inner = assign_folds([patients[int(i)] for i in tr], 5, ages=y[tr], seed=1)
        maes = np.zeros(len(alphas))
        for j in range(5):
            itr, iva = tr[inner != j], tr[inner == j]
            for a, (c, ybar, mean, sd) in enumerate(fit(itr, alphas)):
                maes[a] += np.abs(((x[iva] - mean) / sd) @ c + ybar - y[iva]).sum()
        best = alphas[int(np.argmin(maes))]
        c, ybar, mean, sd = fit(tr, [best])[0]
        te = outer == k
        oof[te] = ((x[te] - mean) / sd) @ c + ybar
    return oof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oof", type=Path, required=True)
    parser.add_argument("--features", type=Path, default=None)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    with open(args.oof, newline="") as handle:
        rows = list(csv.DictReader(handle))
    y = np.array([float(r["age_years"]) for r in rows])
    pred = np.array([float(r["xray_age"]) for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    print("shipped recipe (nested out-of-fold):", json.dumps(band_table(y, pred)))
    stretched, chosen = stretch_oof(y, pred, fold)
    print(f"A. stretch fitted out of fold (k per fold {chosen}):",
          json.dumps(band_table(y, stretched)))
    if args.features is None:
        return
    with open(args.shared / "manifest.csv", newline="") as handle:
        nih = [r for r in csv.DictReader(handle)
               if r["source"] == "nih_cxr14" and float(r["age_years"]) >= 18]
    x = np.load(args.features)["xcep_nih"].astype(np.float64)
    y = np.array([float(r["age_years"]) for r in nih])
    patients = [r["patient_id"] for r in nih]
    for power in (0.0, 0.5, 1.0):
        oof = weighted_crossfit(x, y, patients, power)
        print(f"B. ridge, one view, age-balanced weights power {power}:",
              json.dumps(band_table(y, oof)), flush=True)


if __name__ == "__main__":
    main()
