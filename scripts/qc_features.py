"""Extract the bundled model's own features for the content quality checks (cached).

Usage (from the repository root)::

    python scripts/qc_features.py [--shared ../shared/data] [--model DIR] [--work /tmp/xrayage-qc]

Every image goes through :func:`xrayage.pipeline.prepare` (the inference path, with no
quality checks, so refused kinds are kept) and the model's ``features`` output (the pooled
input of its linear head). Rows:

- the main manifest (frontal chest films; ``child`` when under 18);
- ``qc/``: laterals, children's films, other body parts, non-radiographs;
- made from every third frontal adult film (seeded): inverted grey scale, rotation by 90°
  (or 270°), 180°, and a mirror image.

Writes ``WORK/features.npy`` (float16, N x D), ``WORK/rows.csv`` (path, kind, group, age,
source, variant) and ``WORK/age.npy`` (the model's X-ray age). Rows already there are kept
and not extracted again (the data grows between rounds). Used by
``scripts/build_content_qc.py``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 0
VARIANTS = ("inverted", "rotated90", "rotated180", "mirrored")


def rows_to_extract(shared: Path) -> list[dict[str, str]]:
    """Every image with its kind and its group (patient or case)."""
    out: list[dict[str, str]] = []
    with open(shared / "manifest.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            age = float(r["age_years"]) if r["age_years"] else float("nan")
            kind = "child" if age < 18 else "frontal"
            out.append({"path": str(shared / r["path"]), "kind": kind, "group": r["patient_id"],
                        "age": r["age_years"], "source": r["source"], "variant": ""})
    with open(shared / "qc" / "manifest.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            kind = {"lateral": "lateral", "child": "child", "other_body_part": "other_body_part",
                    "not_radiograph": "not_radiograph"}[r["category"]]
            out.append({"path": str(shared / "qc" / r["path"]), "kind": kind,
                        "group": f"qc:{Path(r['path']).stem}", "age": r["age_years"],
                        "source": f"qc_{r['source']}", "variant": ""})
    rng = np.random.default_rng(SEED)
    adults = [r for r in out
              if r["kind"] == "frontal" and r["source"] in ("nih_cxr14", "covid_idc")]
    for r in adults[::3]:
        for variant in VARIANTS:
            k = int(rng.choice([1, 3])) if variant == "rotated90" else 0
            out.append({**r, "kind": variant, "variant": f"{variant}:{k}"})
    return out


def transformed(rg: object, variant: str) -> object:
    """The radiograph with a made-up defect."""
    name, _, k = variant.partition(":")
    px = rg.pixels  # type: ignore[attr-defined]
    if name == "inverted":
        px = 1.0 - px
    elif name == "rotated90":
        px = np.rot90(px, int(k))
    elif name == "rotated180":
        px = np.rot90(px, 2)
    elif name == "mirrored":
        px = px[:, ::-1]
    return replace(rg, pixels=np.ascontiguousarray(px, dtype=np.float32))  # type: ignore[type-var]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="model directory with a features output")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xrayage-qc"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from xrayage.io import read_radiograph
    from xrayage.model import load_model
    from xrayage.pipeline import PredictInput, prepare

    args.work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, threads=args.threads)
    if "features" not in model.output_names:
        raise SystemExit(f"{model.directory}: the model has no features output")
    spec = model.card.preprocessing
    rows = rows_to_extract(args.shared.resolve())
    feats: list[np.ndarray] = []
    ages: list[np.ndarray] = []
    kept: list[dict[str, str]] = []
    if (args.work / "rows.csv").is_file():
        with open(args.work / "rows.csv", newline="") as handle:
            kept = list(csv.DictReader(handle))
        feats.append(np.load(args.work / "features.npy"))
        ages.append(np.load(args.work / "age.npy"))
        done = {(r["path"], r["variant"]) for r in kept}
        rows = [r for r in rows if (r["path"], r["variant"]) not in done]
    batch: list[np.ndarray] = []
    pending: list[dict[str, str]] = []
    started = time.time()

    def flush() -> None:
        if batch:
            out = model.run(np.concatenate(batch), features=True)
            assert out.features is not None
            feats.append(out.features.astype(np.float16))
            ages.append(out.age)
            kept.extend(pending)
            batch.clear()
            pending.clear()

    for i, r in enumerate(rows):
        try:
            rg = read_radiograph(r["path"])
        except ValueError as exc:  # XRayAgeInputError: unreadable
            print(f"skip {r['path']}: {exc}", file=sys.stderr)
            continue
        if r["variant"]:
            rg = transformed(rg, r["variant"])
        prepared = prepare(PredictInput(rg, r["path"]), spec, checks=[])
        if prepared.tensor is None:
            print(f"skip {r['path']}: {prepared.estimate.error}", file=sys.stderr)
            continue
        batch.append(prepared.tensor)
        pending.append(r)
        if len(batch) >= args.batch_size:
            flush()
        if i % 400 == 0:
            print(f"{i}/{len(rows)} {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    flush()
    np.save(args.work / "features.npy", np.concatenate(feats))
    np.save(args.work / "age.npy", np.concatenate(ages))
    with open(args.work / "rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "kind", "group", "age", "source", "variant"])
        writer.writeheader()
        writer.writerows(kept)
    print(f"{len(kept)} rows in {time.time() - started:.0f} s -> {args.work}")


if __name__ == "__main__":
    main()
