"""Patient-disjoint, age-stratified, seeded train/validation/test splits.

Folds for cross-fitting are assigned by :func:`xrayage.folds.assign_folds` (before 0.2
``assign_folds`` lived here).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import Sample

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Patient ids per split. Every patient is in exactly one split."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    seed: int = 0

    def assign(self, samples: Sequence[Sample], name: str) -> list[Sample]:
        """Return the samples whose patient is in split `name`."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        ids = set(getattr(self, name))
        return [s for s in samples if s.patient_id in ids]

    def save(self, path: str | Path) -> None:
        """Write the split as JSON (patient ids per split, and the seed)."""
        data = {"seed": self.seed, **{k: sorted(getattr(self, k)) for k in SPLITS}}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(**{k: list(data.get(k, [])) for k in SPLITS}, seed=int(data.get("seed", 0)))


def patient_ages(samples: Sequence[Sample], purpose: str = "splits") -> dict[str, list[float]]:
    """Ages of each patient's images; every sample needs a patient id."""
    ages: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if not s.patient_id:
            raise ValueError(f"{s.path}: no patient_id; {purpose} must be patient-disjoint")
        ages[s.patient_id].append(s.age_years)
    return ages


def split_patients(
    samples: Sequence[Sample],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    age_bins: Sequence[float] = (0, 18, 30, 40, 50, 60, 70, 80, 200),
) -> Split:
    """Split patients (not images) into train/val/test, stratified by age.

    Each patient is binned by their median age; within each bin the patients are shuffled
    with ``numpy.random.default_rng(seed)`` and cut by the fractions, so every split has
    the cohort's age distribution. No global random state is touched.

    Parameters
    ----------
    samples : sequence of Sample
    val_fraction, test_fraction : float
        Fractions of patients (each in [0, 1), sum < 1).
    seed : int
    age_bins : sequence of float
        Bin edges in years.

    Returns
    -------
    Split

    Examples
    --------
    >>> from pathlib import Path
    >>> s = [Sample(Path(f"{i}.png"), 20.0 + i, patient_id=f"p{i // 2}") for i in range(40)]
    >>> sp = split_patients(s, val_fraction=0.25, seed=1)
    >>> len(sp.train) + len(sp.val), set(sp.train) & set(sp.val)
    (20, set())
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    ages = patient_ages(samples)
    rng = np.random.default_rng(seed)
    by_bin: dict[int, list[str]] = defaultdict(list)
    for pid in sorted(ages):
        by_bin[int(np.digitize(np.median(ages[pid]), age_bins))].append(pid)
    split = Split(seed=seed)
    carry_val = carry_test = 0.0
    for key in sorted(by_bin):
        ids = [by_bin[key][i] for i in rng.permutation(len(by_bin[key]))]
        # Carry rounding remainders across bins so small bins still sum to the fractions.
        carry_val += val_fraction * len(ids)
        carry_test += test_fraction * len(ids)
        n_val, n_test = round(carry_val), round(carry_test)
        n_val, n_test = min(n_val, len(ids)), min(n_test, len(ids) - min(n_val, len(ids)))
        carry_val -= n_val
        carry_test -= n_test
        split.val += ids[:n_val]
        split.test += ids[n_val : n_val + n_test]
        split.train += ids[n_val + n_test :]
    return split

