"""The base model's own training images as a prior for site adaptation: the pooled ridge
(:mod:`xrayage.adapt`).

A ridge update toward the base head (``ridge`` recipes) penalises every direction of the
feature space alike. Refitting the head on the base model's training images *and* the
site's images together instead keeps what the training images determine well and lets the
site's images move what they do not: ``‖y_t − Z_t w‖² + ‖y_s − c − Z_s w‖² + α‖w‖²``, with
``Z`` the features standardised by the training images' statistics, ``c`` the site's own
intercept and α the training images' own ridge penalty (chosen by patient-grouped CV on
them). With the previous bundled model (3 x 3 grid) it lowered the nested MAE on 200 images of
the COVID-19 collection by 0.65 y, where the isotropic update gained 0.2 y; with the current
one the evidence is mixed (``docs/adaptation.md``).

Everything is solved in the dual form (the images' Gram matrices; 1,312 training images
of 62,424 features take seconds), so no (D, D) matrix is formed. A model pooled on a grid
finer than 3 x 3 is pooled here on its features averaged to 3 x 3 (:data:`POOLED_GRID`) and
the head written back on its own grid (:mod:`xrayage.cells`): a quarter of the features,
memory and time for the bundled model's 6 x 6 cells, at the same error on covid_idc (200
images: 9.44 against 9.37 y nested, 9.09 against 9.07 y on the site's other patients).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..cells import coarsen_features, finer_grid_weights
from ..folds import assign_folds

ALPHA_RATIOS = tuple(float(a) for a in np.logspace(-3, 1, 17))
"""Penalties searched on the training images, per standardised feature."""
POOLED_GRID = 3
"""The finest grid (cells per side) the pooled ridge reads."""
ALPHA_FACTORS = (1.0,)
"""The pooled recipes' penalties, in units of the training images' CV-chosen one (×3 as
well only made the choice noisier on a covid_idc subset of 200 images, previous model's
features: 9.09 against 8.97 y nested)."""


@dataclass
class Prior:
    """Training images' standardised features (float32) and ages, and the eigen
    decomposition of their Gram matrix; ``alpha`` is their CV-chosen ridge penalty. The
    features are those of a ``cells``-per-side grid, the model's own being ``grid``."""

    mean: np.ndarray
    sd: np.ndarray
    z: np.ndarray
    age: np.ndarray
    e: np.ndarray
    v: np.ndarray
    alpha: float
    images: int
    patients: int
    grid: int = 1
    cells: int = 1

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Rows of the model's raw features in the training images' standardised space
        (float32; averaged to the prior's grid first)."""
        x = coarsen_features(np.asarray(x, np.float32), self.grid, self.cells)
        return ((x - self.mean) / self.sd).astype(np.float32)

    def pooled(self, x: np.ndarray, y: np.ndarray, alpha: float
               ) -> tuple[np.ndarray, float]:
        """The pooled ridge on the training images and the site's rows (`x`, `y`), with the
        site's own intercept: the weights on raw features and the intercept, in years.

        By Woodbury, with ``w_t`` the training images' own ridge solution, the pooled
        solution is ``w_t + u``, ``u = M⁻¹ Z_sᵀ (Z_s M⁻¹ Z_sᵀ + I)⁻¹ r``, where
        ``M = Z_tᵀ Z_t + αI`` and ``r`` the site's residuals of ``w_t`` (centred: the
        intercept). ``M⁻¹ = (I − Z_tᵀ V diag(1/(e + α)) Vᵀ Z_t) / α``.
        """
        zs = self.standardise(x)
        cross = (zs @ self.z.T).astype(np.float64)  # (n_site, n_train)
        filt = 1.0 / (self.e + alpha)
        dual_t = self.v @ (filt * (self.v.T @ (self.age - self.age.mean())))
        resid = np.asarray(y, np.float64) - (cross @ dual_t + self.age.mean())
        # the site's intercept is free: its rows are centred in the update
        centre_z = zs.mean(axis=0, dtype=np.float64).astype(np.float32)
        zc = zs - centre_z
        proj = (cross - cross.mean(axis=0)) @ self.v  # Zc Z_tᵀ V
        kernel = ((zc @ zc.T).astype(np.float64) - (proj * filt) @ proj.T) / alpha
        c = np.linalg.solve(kernel + np.eye(len(zs)), resid - resid.mean())
        back = self.v @ (filt * (proj.T @ c))  # V diag(1/(e+α)) Vᵀ Z_t Zcᵀ c
        u = (zc.T @ (c / alpha).astype(np.float32)).astype(np.float64) - (
            self.z.T @ (back / alpha).astype(np.float32)).astype(np.float64)
        w = (self.z.T @ dual_t.astype(np.float32)).astype(np.float64) + u
        weight = w / self.sd
        bias = self.age.mean() + resid.mean() - float(centre_z @ u)
        bias -= float(weight @ self.mean)
        return finer_grid_weights(weight, self.cells, self.grid), bias


def fit_prior(x: np.ndarray, age: np.ndarray, patients: Sequence[str], seed: int = 0,
              grid: int = 1) -> Prior:
    """The prior from the training images' features `x` (N, D) of a model pooled on a
    `grid`-per-side grid, their ages and patients; its penalty chosen by 5-fold
    patient-grouped CV on them (features standardised once, by all of them: no label enters
    the standardisation)."""
    cells = max(d for d in range(1, min(grid, POOLED_GRID) + 1) if grid % d == 0)
    x = coarsen_features(np.asarray(x, np.float32), grid, cells)
    age = np.asarray(age, np.float64)
    if len(age) < 20 or len(set(patients)) < 10:
        raise ValueError(f"{len(age)} prior images of {len(set(patients))} patients: the "
                         "prior needs at least 20 images of 10 patients")
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sd = x.std(axis=0, dtype=np.float64)
    sd = np.where(sd > 1e-9 * max(float(sd.max()), 1e-30), sd, np.inf).astype(np.float32)
    z = ((x - mean) / sd).astype(np.float32)
    gram = (z @ z.T).astype(np.float64)
    alphas = [r * x.shape[1] for r in ALPHA_RATIOS]
    fold = assign_folds(list(patients), 5, ages=age, seed=seed)
    err = np.zeros(len(alphas))
    for k in range(5):
        tr, va = fold != k, fold == k
        e, v = np.linalg.eigh(gram[np.ix_(tr, tr)])
        e = np.clip(e, 0.0, None)
        centre = age[tr].mean()
        vty, cross = v.T @ (age[tr] - centre), gram[np.ix_(va, tr)] @ v
        for i, a in enumerate(alphas):
            err[i] += np.abs(cross @ (vty / (e + a)) + centre - age[va]).sum()
    e, v = np.linalg.eigh(gram)
    return Prior(mean=mean, sd=sd, z=z, age=age, e=np.clip(e, 0.0, None), v=v,
                 alpha=float(alphas[int(np.argmin(err))]), images=len(age),
                 patients=len(set(patients)), grid=grid, cells=cells)
