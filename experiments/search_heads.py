"""Compare poolings and feature sets on frozen features by nested patient-disjoint CV.

Only the training patients of the shipped split are read (the held-out 20% is never
used here). Outer: 5 patient folds; the ridge penalty is chosen inside each outer training
set by inner 5-fold patient CV. Ridge is solved in its dual (kernel) form, so a million
features per image cost no more than the 660 x 660 Gram matrix. Features are standardised
with the outer training rows' statistics. Prints a markdown row per feature set: pooled
out-of-fold MAE, r, the no-skill MAE (training-fold median), n and the wall time.

Feature sets are ``POOLING:BLOCKS`` joined by ``+``: ``g3:1-11`` is the 3x3 grid means of
blocks 1-11, ``g1:1-11+g3:3-11`` adds global means. Blocks are numbered as in the
extraction file (``channels``). Usage::

    python experiments/search_heads.py feats.npz g1:1-11 g3:1-11 g6:1-11
    python experiments/search_heads.py feats.npz --aug flipped.npz g3:1-11  # + training copies
    python experiments/search_heads.py feats.npz --fraction 0.5 g3:1-11  # learning curve
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xrayage.folds import assign_folds

RATIOS = np.logspace(-5, 2, 36)
"""Penalties searched, relative to the mean diagonal of the centred Gram matrix."""


def columns(f: np.lib.npyio.NpzFile, spec: str) -> list[tuple[str, np.ndarray]]:
    """(array key suffix, column indices) of each ``POOLING:BLOCKS`` part of `spec`."""
    edges = np.concatenate([[0], np.cumsum(f["channels"])])
    out = []
    for part in spec.split("+"):
        pool, _, blocks = part.partition(":")
        lo, _, hi = blocks.partition("-")
        cells = int(pool[1:]) ** 2 if pool.startswith("g") else 1
        keep = range(int(lo) - 1, int(hi or lo))
        out.append(
            (
                pool,
                np.concatenate([np.arange(edges[b] * cells, edges[b + 1] * cells) for b in keep]),
            )
        )
    return out


def grams(
    x: list[np.ndarray], tr: np.ndarray, chunk: int = 20000, equal: bool = False
) -> np.ndarray:
    """Gram matrix of all rows against the `tr` rows, features standardised on `tr`.

    With `equal`, each part of `x` is scaled to the same total variance (mean diagonal)."""
    k = np.zeros((len(x[0]), int(tr.sum())))
    for block in x:
        part = np.zeros_like(k)
        for start in range(0, block.shape[1], chunk):
            z = block[:, start : start + chunk].astype(np.float32)
            mean, sd = z[tr].mean(0), z[tr].std(0)
            z = (z - mean) / np.where(sd > 1e-6, sd, 1.0)
            part += (z @ z[tr].T).astype(np.float64)
        k += part / block.shape[1] if equal else part
    return k


def rbf(k: np.ndarray, gamma: float) -> np.ndarray:
    """Gaussian kernel from a square linear Gram matrix; width = median distance * gamma."""
    d = np.diag(k)
    dist = np.clip(d[:, None] + d[None] - 2 * k, 0, None)
    return np.exp(-dist / (gamma * np.median(dist[dist > 0])))


def centre(k_tr: np.ndarray, k_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre a Gram matrix and its test rows on the training rows' feature mean."""
    col = k_tr.mean(0)
    return (
        k_tr - col[None] - col[:, None] + col.mean(),
        k_te - k_te.mean(1, keepdims=True) - col[None] + col.mean(),
    )


def dual_ridge(k_tr: np.ndarray, k_te: np.ndarray, y: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Predictions for the test rows, one row per penalty."""
    kc, kt = centre(k_tr, k_te)
    e, v = np.linalg.eigh(kc)
    scale = np.trace(kc) / len(kc)
    vy = v.T @ (y - y.mean())
    return np.stack(
        [kt @ (v @ (vy / (np.clip(e, 0, None) + r * scale))) + y.mean() for r in ratios]
    )


def irls(k_tr: np.ndarray, k_te: np.ndarray, y: np.ndarray, ratios: np.ndarray,
         steps: int = 8, delta: float = 1.0) -> np.ndarray:
    """Like `dual_ridge`, but the loss is absolute error (Huber with `delta` years), by
    iteratively reweighted least squares started from the ridge solution."""
    kc, kt = centre(k_tr, k_te)
    scale = np.trace(kc) / len(kc)
    n = len(y)
    out = []
    for r in ratios:
        pred_tr = dual_ridge(k_tr, k_tr, y, np.array([r]))[0]
        for _ in range(steps):
            w = 1 / np.maximum(np.abs(y - pred_tr), delta)
            # weighted kernel ridge, intercept unpenalised: [K + lam W^-1, 1; 1^T, 0]
            a = np.zeros((n + 1, n + 1))
            a[:n, :n] = kc + r * scale * np.diag(1 / w)
            a[:n, n] = 1
            a[n, :n] = 1
            sol = np.linalg.solve(a, np.concatenate([y, [0.0]]))
            pred_tr = kc @ sol[:n] + sol[n]
        out.append(kt @ sol[:n] + sol[n])
    return np.stack(out)


def nested(
    k: np.ndarray, y: np.ndarray, patients: np.ndarray, copies: int = 1,
    y_extra: np.ndarray | None = None, stretch: bool = False, fraction: float = 1.0,
    l1: bool = False,
) -> tuple[np.ndarray, list]:
    """Outer 5-fold predictions with the penalty chosen by inner 5-fold CV.

    With ``copies > 1``, `k` has ``copies * len(y)`` rows and columns: augmented views of
    the images, which join the training rows of their patient's folds only. Rows after
    those (labels `y_extra`: another data set) join every training set. `stretch` maps
    the predictions by the line fitted to the inner out-of-fold predictions; `fraction`
    keeps that share of each outer training set's patients (a learning curve); `l1` fits
    absolute error instead of squared error."""
    n = len(y)
    outer = assign_folds(list(patients), 5, ages=y, seed=0)
    extra = np.arange(len(y_extra) if y_extra is not None else 0) + copies * n
    y_all = np.concatenate([np.tile(y, copies), y_extra if y_extra is not None else []])
    rng = np.random.default_rng(2)
    ratios = RATIOS[::4] if l1 else RATIOS
    fit = irls if l1 else dual_ridge

    def views(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([*(rows + c * n for c in range(copies)), extra])

    pred, chosen = np.zeros_like(y), []
    for o in range(5):
        tr = np.flatnonzero(outer != o)
        if fraction < 1:
            names = np.unique(patients[tr])
            keep = rng.choice(names, round(fraction * len(names)), replace=False)
            tr = tr[np.isin(patients[tr], keep)]
        te = np.flatnonzero(outer == o)
        inner = assign_folds(list(patients[tr]), 5, ages=y[tr], seed=1)
        oof = np.zeros((len(ratios), len(tr)))
        for i in range(5):
            a, b = views(tr[inner != i]), tr[inner == i]
            oof[:, inner == i] = fit(k[np.ix_(a, a)], k[np.ix_(b, a)], y_all[a], ratios)
        best = int(np.argmin(np.abs(oof - y[tr]).sum(1)))
        chosen.append(float(ratios[best]))
        a = views(tr)
        pred[te] = fit(k[np.ix_(a, a)], k[np.ix_(te, a)], y_all[a], ratios[[best]])[0]
        if stretch:
            slope, intercept = np.polyfit(oof[best], y[tr], 1)
            pred[te] = intercept + slope * pred[te]
            chosen[-1] = f"{ratios[best]:.3g}/x{slope:.2f}"
    return pred, chosen


def report(
    name: str, y: np.ndarray, pred: np.ndarray, patients: np.ndarray, t: float, note: str = ""
) -> None:
    fold = assign_folds(list(patients), 5, ages=y, seed=0)
    noskill = np.concatenate([np.abs(y[fold == k] - np.median(y[fold != k])) for k in range(5)])
    print(
        f"| {name} | {np.abs(pred - y).mean():.2f} | {np.corrcoef(pred, y)[0, 1]:.3f} | "
        f"{noskill.mean():.2f} | {len(y)} | {time.time() - t:.0f} s | {note} |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", type=np.load, help="extract_maps.py output")
    p.add_argument("specs", nargs="+", help="feature sets, e.g. g3:1-3+g3:5-12")
    p.add_argument("--aug", type=np.load, action="append", default=[],
                   help="augmented views of the same images (training rows only)")
    p.add_argument("--ext", type=np.load, help="another source to score (fit on all rows)")
    p.add_argument("--domain", type=np.load, help="another source's rows join every fit")
    p.add_argument("--easyda", action="store_true",
                   help="with --domain: shared + per-source weights (Daume 2007)")
    p.add_argument("--rbf", type=float, help="Gaussian kernel, width x median distance")
    p.add_argument("--equal", action="store_true", help="scale each block to equal weight")
    p.add_argument("--stretch", action="store_true",
                   help="map predictions by a line fitted to the inner out-of-fold ones")
    p.add_argument("--l1", action="store_true", help="absolute-error loss (IRLS)")
    p.add_argument("--interact", choices=["sex", "view"],
                   help="shared + per-sex (or per-view) weights: the label as a known input")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="share of each outer training set's patients kept")
    a = p.parse_args()
    f, other = a.features, a.domain
    if other is not None:  # a patient in both would leak across the outer folds
        keep = ~np.isin(other["ext_patient"], f["train_patient"])
        other = {k: other[k][keep] for k in other.files if k.startswith("ext_")}
        print(f"--domain: {keep.sum()} rows ({(~keep).sum()} dropped: patients in both)")
    y, patients = f["train_age"], f["train_patient"]
    for g in a.aug:
        assert (g["train_path"] == f["train_path"]).all()
    print("| features | MAE | r | no-skill | n | time | penalties |\n|---|---|---|---|---|---|---|")
    for spec in a.specs:
        t = time.time()
        x = [
            np.concatenate([g[f"train_{key}"][:, cols] for g in [f, *a.aug]]
                           + ([other[f"ext_{key}"][:, cols]] if other is not None else []))
            for key, cols in columns(f, spec)
        ]
        # Standardising on all training-role rows (labels unused) lets one Gram matrix
        # serve every fold.
        k = grams(x, np.ones(len(x[0]), bool), equal=a.equal)
        if a.rbf:
            k = rbf(k, a.rbf)
        if a.interact:
            label = np.concatenate([g[f"train_{a.interact}"] for g in [f, *a.aug]])
            k = k * (1 + (label[:, None] == label[None]))
        if a.easyda and other is not None:
            nih = np.arange(len(k)) < len(k) - len(other["ext_age"])
            k = k * (1 + (nih[:, None] == nih[None]))
        pred, chosen = nested(k, y, patients, 1 + len(a.aug),
                              other["ext_age"] if other is not None else None,
                              stretch=a.stretch, fraction=a.fraction, l1=a.l1)
        report(spec, y, pred, patients, t, " ".join(f"{c:.3g}" if isinstance(c, float)
                                                    else c for c in chosen))
        if a.ext is not None:
            external([f, *a.aug], a.ext, spec, y, patients)


def external(
    sources: list, ext: np.lib.npyio.NpzFile, spec: str, y: np.ndarray, patients: np.ndarray
) -> None:
    """Fit on every training row and its augmented copies (penalty by 5-fold patient CV),
    score another source."""
    x = [
        np.concatenate([*(g[f"train_{key}"][:, cols] for g in sources), ext[f"ext_{key}"][:, cols]])
        for key, cols in columns(sources[0], spec)
    ]
    n = len(y) * len(sources)
    k = grams(x, np.arange(len(x[0])) < n)
    fold, y_all = (
        np.tile(assign_folds(list(patients), 5, ages=y, seed=0), len(sources)),
        np.tile(y, len(sources)),
    )
    first = np.arange(n) < len(y)
    err = sum(
        np.abs(
            dual_ridge(
                k[np.ix_(fold != i, fold != i)],
                k[np.ix_(first & (fold == i), fold != i)],
                y_all[fold != i],
                RATIOS,
            )
            - y[fold[: len(y)] == i]
        ).sum(1)
        for i in range(5)
    )
    best = RATIOS[[int(np.argmin(err))]]
    pred = dual_ridge(k[:n], k[n:], y_all, best)[0]
    ya = ext["ext_age"]
    print(
        f"|   external ({len(ya)} images, {len(set(ext['ext_patient']))} patients) | "
        f"{np.abs(pred - ya).mean():.2f} | {np.corrcoef(pred, ya)[0, 1]:.3f} | "
        f"{np.abs(ya - np.median(y)).mean():.2f} | | | bias {np.mean(pred - ya):+.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
