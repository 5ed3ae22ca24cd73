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
"""

from __future__ import annotations

import sys
import time

import numpy as np

from xrayage.train.probe import patient_folds

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


def nested(
    k: np.ndarray, y: np.ndarray, patients: np.ndarray, copies: int = 1,
    y_extra: np.ndarray | None = None,
) -> tuple[np.ndarray, list]:
    """Outer 5-fold predictions with the penalty chosen by inner 5-fold CV.

    With ``copies > 1``, `k` has ``copies * len(y)`` rows and columns: augmented views of
    the images, which join the training rows of their patient's folds only. Rows after
    those (labels `y_extra`: another data set) join every training set."""
    n = len(y)
    outer = patient_folds(list(patients), 5, 0)
    extra = np.arange(len(y_extra) if y_extra is not None else 0) + copies * n
    y_all = np.concatenate([np.tile(y, copies), y_extra if y_extra is not None else []])

    def views(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([*(rows + c * n for c in range(copies)), extra])

    pred, chosen = np.zeros_like(y), []
    for o in range(5):
        tr, te = np.flatnonzero(outer != o), np.flatnonzero(outer == o)
        inner = patient_folds(list(patients[tr]), 5, 1)
        err = np.zeros(len(RATIOS))
        for i in range(5):
            a, b = views(tr[inner != i]), tr[inner == i]
            err += np.abs(
                dual_ridge(k[np.ix_(a, a)], k[np.ix_(b, a)], y_all[a], RATIOS) - y[b]
            ).sum(1)
        best = int(np.argmin(err))
        chosen.append(float(RATIOS[best]))
        a = views(tr)
        pred[te] = dual_ridge(k[np.ix_(a, a)], k[np.ix_(te, a)], y_all[a], RATIOS[[best]])[0]
    return pred, chosen


def report(
    name: str, y: np.ndarray, pred: np.ndarray, patients: np.ndarray, t: float, note: str = ""
) -> None:
    fold = patient_folds(list(patients), 5, 0)
    noskill = np.concatenate([np.abs(y[fold == k] - np.median(y[fold != k])) for k in range(5)])
    print(
        f"| {name} | {np.abs(pred - y).mean():.2f} | {np.corrcoef(pred, y)[0, 1]:.3f} | "
        f"{noskill.mean():.2f} | {len(y)} | {time.time() - t:.0f} s | {note} |",
        flush=True,
    )


def main() -> None:
    args = sys.argv[1:]
    aug = []
    while "--aug" in args:
        at = args.index("--aug")
        aug.append(np.load(args.pop(at + 1)))
        args.pop(at)
    ext = np.load(args.pop(args.index("--ext") + 1)) if "--ext" in args else None
    gamma = float(args.pop(args.index("--rbf") + 1)) if "--rbf" in args else None
    equal = "--equal" in args
    other = np.load(args.pop(args.index("--domain") + 1)) if "--domain" in args else None
    easy = "--easyda" in args
    args = [a for a in args if a not in ("--aug", "--ext", "--rbf", "--equal", "--domain",
                                         "--easyda")]
    f = np.load(args[0])
    y, patients = f["train_age"], f["train_patient"]
    for g in aug:
        assert (g["train_path"] == f["train_path"]).all()
    print("| features | MAE | r | no-skill | n | time | penalties |\n|---|---|---|---|---|---|---|")
    for spec in args[1:]:
        t = time.time()
        x = [
            np.concatenate([g[f"train_{key}"][:, cols] for g in [f, *aug]]
                           + ([other[f"ext_{key}"][:, cols]] if other is not None else []))
            for key, cols in columns(f, spec)
        ]
        # Standardising on all training-role rows (labels unused) lets one Gram matrix
        # serve every fold.
        k = grams(x, np.ones(len(x[0]), bool), equal=equal)
        if gamma:
            k = rbf(k, gamma)
        if easy and other is not None:  # shared + per-domain weights (Daume 2007)
            nih = np.arange(len(k)) < len(k) - len(other["ext_age"])
            k = k * (1 + (nih[:, None] == nih[None]))
        pred, chosen = nested(k, y, patients, 1 + len(aug),
                              other["ext_age"] if other is not None else None)
        report(spec, y, pred, patients, t, " ".join(f"{c:.3g}" for c in chosen))
        if ext is not None:
            external([f, *aug], ext, spec, y, patients)


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
        np.tile(patient_folds(list(patients), 5, 0), len(sources)),
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
