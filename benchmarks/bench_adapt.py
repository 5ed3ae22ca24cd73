"""Site adaptation on the COVID-19 image collection (``covid_idc``) as "another site".

1. One feature pass over the site's images through the pipeline
   (:func:`xrayage.adapt.read_site`: quality checks, children and rejects left out).
2. The learning curve: for 50, 100 and 200 local images (``--repeats`` random
   patient-disjoint subsets each) and all of them, the nested, patient-disjoint
   out-of-fold MAE of the bundled model and of the adapted one
   (:func:`xrayage.adapt.nested_oof`, recipe and λ chosen on inner folds only), with 95%
   patient-bootstrap CIs of the first subset; and the MAE on the site's *other* patients of
   the model adapted on the whole subset (a second, independent check).
3. The time of a whole ``adapt()`` run on 200 images (feature pass, fit, nested
   validation, writing and verifying the model) with ``--threads`` ONNX threads.

covid_idc's licences allow evaluation and experiments, not shipping: nothing here is
written anywhere but a temporary directory.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_adapt.py [--repeats 5] [--threads 2] [--prior]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from xrayage.adapt import (
    adapt,
    choose,
    fit_prior,
    fit_recipes,
    load_site,
    nested_oof,
    policy,
    read_site,
    scored,
)
from xrayage.model import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def subset(patients: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of whole random patients, up to `n` images."""
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        rows.setdefault(p, []).append(i)
    take: list[int] = []
    for p in rng.permutation(sorted(rows)):
        if len(take) + len(rows[str(p)]) <= n:
            take += rows[str(p)]
        if len(take) >= n:
            break
    return np.array(sorted(take))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="50,100,200,all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results.")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--prior", action="store_true",
                        help="with the bundled model's training images (the adult NIH "
                             "images of --data) as the prior: the pooled recipes too")
    args = parser.parse_args()
    samples = load_site(f"manifest:{args.data / 'manifest.csv'}?source=covid_idc")
    model = load_model(threads=args.threads)
    start = time.perf_counter()
    site = read_site(model, samples)
    print(f"feature pass: {len(samples)} images read, {len(site.age)} usable "
          f"({len(set(site.patients))} patients), left out {site.excluded}, "
          f"{time.perf_counter() - start:.0f} s")
    x, y, base, pats = site.features, site.age, site.base, site.patients
    assert x is not None
    prior = None
    prior_spec = f"manifest:{args.data / 'manifest.csv'}?source=nih_cxr14"
    if args.prior:
        start = time.perf_counter()
        train = read_site(model, load_site(prior_spec))
        assert train.features is not None
        prior = fit_prior(train.features, train.age, train.patients,
                          grid=int(model.card.extra.get("grid", 1)))
        print(f"prior: {prior.images} training images ({prior.patients} patients), "
              f"alpha {prior.alpha:.4g}, {time.perf_counter() - start:.0f} s")
    rng = np.random.default_rng(args.seed)
    results = []
    print("\n| local images | patients | base OOF MAE | adapted OOF MAE | gain | "
          "held-out-rest MAE base → adapted | recipes (1st subset) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        n = len(y) if size == "all" else int(size)
        reps = 1 if n >= len(y) else args.repeats
        rows: list[dict[str, Any]] = []
        for _rep in range(reps):
            idx = np.arange(len(y)) if n >= len(y) else subset(pats, n, rng)
            p = [pats[i] for i in idx]
            # as adapt() chooses them
            recipes, tol = policy(len(idx), True, prior=prior is not None)
            nested = nested_oof(x[idx], y[idx], base[idx], p, recipes, seed=args.seed,
                                views=[site.view[i] for i in idx], tolerance=tol,
                                prior=prior)
            before = scored(base[idx], y[idx], p, None)
            after = scored(nested.oof, y[idx], p, (nested.lower, nested.upper))
            rest = np.setdiff1d(np.arange(len(y)), idx)
            held = None
            if len(rest) >= 20:
                recipe, _, _ = choose(x[idx], y[idx], base[idx], p, recipes, args.seed, tol,
                                      prior=prior)
                upd = fit_recipes(x[idx], y[idx], base[idx], [recipe], prior)[recipe]
                held = (float(np.abs(base[rest] - y[rest]).mean()),
                        float(np.abs(upd.predict(x[rest], base[rest]) - y[rest]).mean()))
            rows.append({"images": len(idx), "patients": len(set(p)), "before": before,
                         "after": after, "held_out_rest": held,
                         "recipes": [r.label for r in nested.chosen]})
        results.append({"size": size, "subsets": rows})
        b = np.mean([r["before"]["mae"] for r in rows])
        a = np.mean([r["after"]["mae"] for r in rows])
        first = rows[0]
        ci_b, ci_a = first["before"]["ci95"]["mae"], first["after"]["ci95"]["mae"]
        helds = [r["held_out_rest"] for r in rows if r["held_out_rest"] is not None]
        held_txt = (f"{np.mean([h[0] for h in helds]):.2f} → {np.mean([h[1] for h in helds]):.2f}"
                    if helds else "–")
        print(f"| {np.mean([r['images'] for r in rows]):.0f} ({reps} subsets) | "
              f"{np.mean([r['patients'] for r in rows]):.0f} | {b:.2f} "
              f"(1st: {first['before']['mae']:.2f}, {ci_b[0]:.2f}–{ci_b[1]:.2f}) | {a:.2f} "
              f"(1st: {first['after']['mae']:.2f}, {ci_a[0]:.2f}–{ci_a[1]:.2f}) | "
              f"{b - a:+.2f} | {held_txt} | {', '.join(first['recipes'])} |", flush=True)
    if not args.no_timing:
        idx = subset(pats, 200, np.random.default_rng(args.seed + 7))
        chosen = {str(samples[i].path) for i in site.index}
        usable = [s for s in samples if str(s.path) in chosen]
        pick = [usable[i] for i in idx]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = adapt(pick, Path(tmp) / "adapted", threads=args.threads,
                           prior=prior_spec if args.prior else None)
            total = time.perf_counter() - start
        print(f"\nadapt() on {len(pick)} images with {args.threads} threads: {total:.0f} s "
              f"(features {result.summary['seconds']['features']} s, fit and nested "
              f"validation {result.summary['seconds']['fit_and_validation']} s); "
              f"recipe {result.recipe.label}")
        results.append({"timing_200": {"seconds": total, **result.summary["seconds"]}})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
