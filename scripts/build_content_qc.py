"""Fit the content quality checks of a model on its own features, and measure them honestly.

Usage (from the repository root, after ``scripts/qc_features.py``)::

    python scripts/build_content_qc.py [--work /tmp/xrayage-qc] [--model DIR] [--write]

From ``WORK/features.npy`` and ``WORK/rows.csv``:

1. Features: the model's pooled head input, averaged over its grid cells per channel
   (global average pooling; ``--pool grid`` keeps the cells), standardised, then reduced by
   PCA to ``--dims`` components.
2. Heads, all linear on those components: a multinomial logistic regression of the kind of
   image (frontal chest, lateral, other body part, not a radiograph, inverted, rotated 90°,
   rotated 180°), a logistic regression child vs adult (frontal films), one mirrored vs not;
   class-balanced, L2-penalised. Out of distribution: the Mahalanobis distance in the
   whitened top ``--ood-dims`` principal components of frontal adult films plus the scaled
   residual outside them.
3. Honest rates: 5-fold cross-validation grouped by patient (or case); every number is
   out of fold, with n and a 95% Wilson interval. Thresholds are chosen on those
   out-of-fold scores for the false-refusal targets (at most 0.5% of NIH frontal adult
   films per check, 1% in all), so the rates reported at them are slightly optimistic for
   the refusal side; ``docs/quality.md`` says so.
4. ``--write``: fit on every row, write ``content_qc.onnx`` into the model directory (a
   Sub -> MatMul -> Add graph with the residual column; onnxruntime only at inference) and
   the thresholds, rates and training description into its card (``content_checks``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("frontal_chest", "lateral", "other_body_part", "not_radiograph", "inverted",
           "rotated90", "rotated180")
KIND_CLASS = {"frontal": 0, "child": 0, "mirrored": 0, "lateral": 1, "other_body_part": 2,
              "not_radiograph": 3, "inverted": 4, "rotated90": 5, "rotated180": 6}
SEED = 0


def rate(mask: np.ndarray, hit: np.ndarray) -> dict[str, float | int]:
    """Share of `hit` among `mask`, with n and a 95% Wilson interval (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    n, k = int(mask.sum()), int((hit & mask).sum())
    lo, hi = proportion_confint(k, n, method="wilson") if n else (math.nan, math.nan)
    return {"n": n, "k": k, "rate": round(k / n, 4) if n else float("nan"),
            "ci95": [round(lo, 4), round(hi, 4)]}


def pooled(x: np.ndarray, pool: str, cells: int) -> np.ndarray:
    """Average the `cells` grid cells per channel (``gap``) or keep them (``grid``)."""
    x = x.astype(np.float32)
    return x.reshape(len(x), -1, cells).mean(axis=2) if pool == "gap" else x


def fit_logistic(z: np.ndarray, y: np.ndarray, classes: int, l2: float) -> np.ndarray:
    """Class-balanced, L2-penalised multinomial logistic regression; (k + 1, classes)."""
    from scipy.optimize import minimize

    n, k = z.shape
    xb = np.hstack([z, np.ones((n, 1))])
    counts = np.bincount(y, minlength=classes).astype(float)
    w = (n / (classes * np.maximum(counts, 1)))[y]
    onehot = np.eye(classes)[y]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        beta = theta.reshape(k + 1, classes)
        logits = xb @ beta
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        value = -(w * (onehot * logp).sum(axis=1)).sum() / n + 0.5 * l2 * (beta[:-1] ** 2).sum()
        grad = xb.T @ (w[:, None] * (np.exp(logp) - onehot)) / n
        grad[:-1] += l2 * beta[:-1]
        return float(value), grad.ravel()

    res = minimize(loss, np.zeros((k + 1) * classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000})
    return np.asarray(res.x.reshape(k + 1, classes))


def top_components(x: np.ndarray, k: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The top `k` singular values and right singular vectors (k, D) of centred `x`, by a
    randomised SVD with four power iterations (Halko et al. 2011)."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(x @ rng.standard_normal((x.shape[1], k + 16)))[0]
    for _ in range(4):
        q = np.linalg.qr(x @ (x.T @ q))[0]
    _, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return s[:k], vt[:k]


class Fitted:
    """The whole content model fitted on some rows: map features -> scores columns."""

    def __init__(self, x: np.ndarray, kind: np.ndarray, child: np.ndarray | None,
                 mirror: np.ndarray | None, frontal_adult: np.ndarray, dims: int,
                 ood_dims: int, l2: float) -> None:
        self.mu = x.mean(axis=0)
        self.sd = x.std(axis=0) + 1e-6
        xs = (x - self.mu) / self.sd
        s, vt = top_components(xs, dims)
        self.p = vt.T / (s / math.sqrt(len(x)))  # whitened components
        z = xs @ self.p
        self.kind = fit_logistic(z, kind, len(CLASSES), l2)
        self.child = fit_logistic(z[child >= 0], child[child >= 0], 2, l2) if child is not None \
            else None
        self.mirror = fit_logistic(z[mirror >= 0], mirror[mirror >= 0], 2, l2) \
            if mirror is not None else None
        fa = xs[frontal_adult]
        self.ood_mu = fa.mean(axis=0)
        s2, vt2 = top_components(fa - self.ood_mu, ood_dims)
        self.ood_p = vt2.T / (s2 / math.sqrt(len(fa)))
        self.ood_basis = vt2.T
        resid = self._residual(fa)
        self.resid_scale = float(np.mean(resid)) or 1.0

    def _residual(self, xs: np.ndarray) -> np.ndarray:
        c = xs - self.ood_mu
        proj = c @ self.ood_basis
        return np.maximum((c * c).sum(axis=1) - (proj * proj).sum(axis=1), 0.0)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The graph's ``scores`` columns (logits, child, mirror, OOD components, residual)."""
        xs = (x - self.mu) / self.sd
        z = np.hstack([xs @ self.p, np.ones((len(x), 1))])
        kind = z @ self.kind
        child = z @ self.child if self.child is not None else np.zeros((len(x), 2))
        mirror = z @ self.mirror if self.mirror is not None else np.zeros((len(x), 2))
        ood = (xs - self.ood_mu) @ self.ood_p
        resid = np.sqrt(self._residual(xs) / self.resid_scale)
        return np.hstack([kind, child[:, 1:] - child[:, :1], mirror[:, 1:] - mirror[:, :1],
                          ood, resid[:, None]])


def interpret(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and distance from score columns, as inference reads them."""
    from xrayage.content import interpret_scores

    probs, child, mirror, distance = interpret_scores(scores, len(CLASSES))
    return {"probs": probs, "child": child, "mirror": mirror, "distance": distance}


def folds_of(groups: list[str], k: int) -> np.ndarray:
    """Fold of each row, by a hash of its group (patient-disjoint, stable)."""
    return np.array([int(hashlib.sha256(f"{SEED}:{g}".encode()).hexdigest(), 16) % k
                     for g in groups])


def labels(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kind class, child label (-1: not used), mirror label (-1: not used), frontal adult."""
    kind = np.array([KIND_CLASS[r["kind"]] for r in rows])
    original = np.array([r["variant"] == "" for r in rows])
    is_kind = np.array([r["kind"] for r in rows])
    child = np.where(original & np.isin(is_kind, ["frontal", "child"]),
                     (is_kind == "child").astype(int), -1)
    mirror = np.where(np.isin(is_kind, ["mirrored"]), 1,
                      np.where(original & (is_kind == "frontal"), 0, -1))
    frontal_adult = original & (is_kind == "frontal")
    return kind, child, mirror, frontal_adult


def highest_threshold(scores: np.ndarray, negatives: list[np.ndarray], limits: list[float],
                      below: bool) -> float:
    """The most refusing threshold whose false-refusal share on each negative set stays
    within its limit (refuse when score < t if `below`, else score >= t)."""
    grid = np.unique(np.concatenate([scores, [0.0, 1e9]]))
    best = None
    for t in (grid if below else grid[::-1]):
        ok = all(((s < t) if below else (s >= t)).mean() <= lim
                 for s, lim in zip(negatives, limits, strict=True) if len(s))
        if ok:
            best = t
        else:
            break
    return float(best if best is not None else (0.0 if below else 1e9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/xrayage-qc"))
    parser.add_argument("--model", type=Path,
                        default=REPO / "src" / "xrayage" / "models" / "xrayage-default")
    parser.add_argument("--pool", choices=["gap", "grid"], default="gap")
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--ood-dims", type=int, default=32)
    parser.add_argument("--l2", type=float, default=1e-2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    from xrayage.card import ModelCard

    cells = int(ModelCard.load(args.model).extra.get("grid", 1)) ** 2
    with open(args.work / "rows.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    x = pooled(np.load(args.work / "features.npy"), args.pool, cells)
    kind, child, mirror, frontal_adult = labels(rows)
    fold = folds_of([r["group"] for r in rows], args.folds)
    oof = np.zeros((len(rows), len(CLASSES) + 2 + args.ood_dims + 1))
    for f in range(args.folds):
        tr, te = fold != f, fold == f
        model = Fitted(x[tr], kind[tr], child[tr], mirror[tr], frontal_adult[tr], args.dims,
                       args.ood_dims, args.l2)
        oof[te] = model.scores(x[te])
    out = interpret(oof)
    source = np.array([r["source"] for r in rows])
    is_kind = np.array([r["kind"] for r in rows])
    original = np.array([r["variant"] == "" for r in rows])
    nih = frontal_adult & (source == "nih_cxr14")
    covid = frontal_adult & (source == "covid_idc")
    p_front = out["probs"][:, 0]
    t_kind = highest_threshold(p_front, [p_front[nih], p_front[covid]], [0.004, 0.015], True)
    t_warn = highest_threshold(p_front, [p_front[nih]], [0.03], True)
    t_child = highest_threshold(out["child"], [out["child"][nih], out["child"][covid]],
                                [0.004, 0.01], False)
    t_ood = highest_threshold(out["distance"], [out["distance"][nih], out["distance"][covid]],
                              [0.002, 0.01], False)
    t_ood_warn = highest_threshold(out["distance"], [out["distance"][nih]], [0.02], False)
    t_mirror = highest_threshold(out["mirror"], [out["mirror"][nih | covid]], [0.02], False)
    kind_refused = p_front < t_kind
    child_refused = out["child"] >= t_child
    ood_refused = out["distance"] >= t_ood
    refused_no_age = kind_refused | child_refused | ood_refused
    refused_with_age = kind_refused | ood_refused
    rates = {
        "false_refusal_nih_frontal_adults": rate(nih, refused_no_age),
        "false_refusal_nih_frontal_adults_age_known": rate(nih, refused_with_age),
        "false_refusal_covid_frontal_adults": rate(covid, refused_no_age),
        "false_refusal_covid_frontal_adults_age_known": rate(covid, refused_with_age),
        "refused_not_radiograph": rate(is_kind == "not_radiograph", refused_no_age),
        "refused_inverted": rate(is_kind == "inverted", refused_no_age),
        "refused_rotated90": rate(is_kind == "rotated90", refused_no_age),
        "refused_rotated180": rate(is_kind == "rotated180", refused_no_age),
        "refused_lateral": rate(is_kind == "lateral", refused_no_age),
        "refused_other_body_part": rate(is_kind == "other_body_part", refused_no_age),
        "refused_child_no_age": rate((is_kind == "child") & original, refused_no_age),
        "refused_child_no_age_qc_set": rate((is_kind == "child") & np.char.startswith(
            source.astype(str), "qc_"), refused_no_age),
        "warned_mirrored": rate(is_kind == "mirrored", out["mirror"] >= t_mirror),
        "mirror_warning_on_frontal_adults": rate(nih | covid, out["mirror"] >= t_mirror),
        "refused_out_of_distribution_by_distance_alone_not_radiograph": rate(
            is_kind == "not_radiograph", ood_refused),
    }
    thresholds = {"reject_below": t_kind, "warn_below": max(t_warn, t_kind),
                  "child_above": t_child, "mirrored_above": t_mirror, "ood_above": t_ood,
                  "ood_warn_above": min(t_ood_warn, t_ood)}
    report = {"thresholds": thresholds, "rates": rates,
              "settings": {"pool": args.pool, "dims": args.dims, "ood_dims": args.ood_dims,
                           "l2": args.l2, "folds": args.folds, "rows": len(rows)}}
    print(json.dumps(report, indent=1))
    (args.work / "content_qc_report.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        write(args, rows, x, kind, child, mirror, frontal_adult, thresholds, rates)


def write(args: argparse.Namespace, rows: list[dict[str, str]], x: np.ndarray,
          kind: np.ndarray, child: np.ndarray, mirror: np.ndarray, frontal_adult: np.ndarray,
          thresholds: dict[str, float], rates: dict[str, object]) -> None:
    """Fit on every row; write the graph and the card section."""
    import onnx

    from xrayage.card import ContentCheckSpec, ModelCard, sha256_file
    from xrayage.train.onnx_graph import FEATURES, add_features_output, content_graph

    card = ModelCard.load(args.model)
    cells = int(card.extra.get("grid", 1)) ** 2
    if FEATURES not in card.outputs:  # an older export: expose the head's input
        add_features_output(args.model / card.onnx_file)
        card.outputs[FEATURES] = FEATURES
        card.onnx_sha256 = sha256_file(args.model / card.onnx_file)
        card.save(args.model)
    model = Fitted(x, kind, child, mirror, frontal_adult, args.dims, args.ood_dims, args.l2)
    # scores = [(x_pooled - mu)/sd] @ A + b, and the residual column
    a = np.hstack([model.p @ model.kind[:-1],
                   model.p @ (model.child[:-1, 1:] - model.child[:-1, :1]),
                   model.p @ (model.mirror[:-1, 1:] - model.mirror[:-1, :1]), model.ood_p])
    b = np.concatenate([model.kind[-1], model.child[-1, 1:] - model.child[-1, :1],
                        model.mirror[-1, 1:] - model.mirror[-1, :1],
                        -(model.ood_mu @ model.ood_p)])
    onnx_model = content_graph(mu=model.mu, sd=model.sd, a=a, b=b, ood_mu=model.ood_mu,
                               ood_basis=model.ood_basis, resid_scale=model.resid_scale,
                               pool=args.pool, cells=cells)
    path = args.model / "content_qc.onnx"
    onnx.save(onnx_model, str(path))
    # the graph must reproduce the numpy model
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = np.load(args.work / "features.npy")[:64].astype(np.float32)
    got = sess.run(["scores"], {"features": raw})[0]
    want = model.scores(pooled(raw, args.pool, cells))
    if not np.allclose(got, want, atol=1e-2, rtol=1e-3):
        raise SystemExit(f"content graph differs from numpy: {np.abs(got - want).max()}")
    sources = sorted({r["source"] for r in rows})
    spec = ContentCheckSpec(
        file=path.name, sha256=sha256_file(path), classes=CLASSES, ood_dims=args.ood_dims + 1,
        rates=rates, training={
            "features": f"the model's pooled head input, {args.pool}, standardised, PCA "
                        f"{args.dims} (whitened); OOD: {args.ood_dims} whitened components "
                        "of frontal adult films plus the scaled residual",
            "heads": "class-balanced L2 logistic regressions (kind: 7 classes; child; mirror)",
            "rows": len(rows), "sources": sources,
            "made_up": "inverted, rotated 90/270 and 180 degrees, and mirrored copies of every "
                       "third frontal adult NIH and COVID-19 collection film",
            "licences": "NIH ChestX-ray14 (public), COVID-19 image collection and ../shared "
                        "qc/ images (several non-commercial): the shipped graph is trained "
                        "on them; rebuild it on your own data for commercial use",
            "validation": f"{args.folds}-fold cross-validation grouped by patient or case; "
                          "thresholds chosen on the out-of-fold scores",
            "built_by": "scripts/qc_features.py, scripts/build_content_qc.py --write"},
        **thresholds)
    card.content_checks = spec
    card.save(args.model)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and the card's content_checks")


if __name__ == "__main__":
    main()
