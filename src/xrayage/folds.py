"""The one fold assigner: patient-disjoint folds, balanced in size and age.

Every cross-validation in xrayage assigns its folds here: the ridge probe's nested
cross-fitting and ``xrayage crossfit`` (:mod:`xrayage.train.oof`), the interval's choice and
validation (:mod:`xrayage.calibration`) and site adaptation (:mod:`xrayage.adapt`). Needs
numpy only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def assign_folds(patients: Sequence[str], k: int, *,
                 ages: Sequence[float] | np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Fold in ``0..k-1`` of each row: patient-disjoint, balanced in size and age, seeded.

    Patients are sorted by their median age (by id when no ages are given), cut into
    consecutive blocks of `k`, and each block is dealt to the folds in a random order
    (``numpy.random.default_rng(seed)``), so every fold spans the age range and fold
    sizes (in patients) differ by at most one. No global random state is touched.

    Parameters
    ----------
    patients : sequence of str
        Patient id of each row (image); a patient's rows all get one fold.
    k : int
        Folds (>= 2).
    ages : array-like, optional
        Age of each row, in years, to balance the folds in age.
    seed : int

    Returns
    -------
    numpy.ndarray
        int64, one fold per row.

    Raises
    ------
    ValueError
        ``k < 2``, fewer patients than folds, an empty patient id, or `ages` of another
        length.

    Examples
    --------
    >>> patients = [f"p{i // 2}" for i in range(40)]
    >>> fold = assign_folds(patients, 4, ages=[20.0 + i for i in range(40)], seed=0)
    >>> np.bincount(fold).tolist(), bool(fold[0] == fold[1])
    ([10, 10, 10, 10], True)
    """
    if k < 2:
        raise ValueError(f"fold assignment needs k >= 2 folds, not {k}")
    if ages is not None and len(ages) != len(patients):
        raise ValueError(f"{len(ages)} ages for {len(patients)} patient ids")
    by_patient: dict[str, list[float]] = defaultdict(list)
    for i, pid in enumerate(patients):
        if not pid:
            raise ValueError(f"row {i} has no patient id; folds must be patient-disjoint")
        by_patient[str(pid)].append(0.0 if ages is None else float(ages[i]))
    if len(by_patient) < k:
        raise ValueError(f"{len(by_patient)} patients are too few for {k} folds")
    rng = np.random.default_rng(seed)
    order = sorted(by_patient, key=lambda p: (float(np.median(by_patient[p])), p))
    fold_of: dict[str, int] = {}
    for start in range(0, len(order), k):
        for pid, fold in zip(order[start:start + k], rng.permutation(k), strict=False):
            fold_of[pid] = int(fold)
    return np.array([fold_of[str(p)] for p in patients], dtype=np.int64)


__all__ = ["assign_folds"]
