"""Grid cells of a model's pooled features: coarsen the features, refine a head's weights.

A grid-pooled model's features are each map's ``g x g`` cell means, channel-major
(``(C, g, g)`` flattened, the maps concatenated). When every map splits into equal cells, a
cell of a coarser ``h x h`` grid (``h`` dividing ``g``) is the mean of its ``(g / h)²`` finer
cells, so features and linear heads move exactly between the two grids.
"""

from __future__ import annotations

import numpy as np


def _factor(grid: int, coarse: int) -> int:
    if coarse < 1 or grid % coarse:
        raise ValueError(f"a {coarse} x {coarse} grid is not a coarsening of {grid} x {grid}")
    return grid // coarse


def coarsen_features(x: np.ndarray, grid: int, coarse: int) -> np.ndarray:
    """Features (N, C·grid²) as those of the ``coarse x coarse`` grid, (N, C·coarse²)."""
    k = _factor(grid, coarse)
    x = np.asarray(x)
    cells = x.reshape(len(x), -1, coarse, k, coarse, k)
    return cells.mean(axis=(3, 5), dtype=np.float64).astype(x.dtype).reshape(len(x), -1)


def finer_grid_weights(weight: np.ndarray, grid: int, finer: int) -> np.ndarray:
    """A head on ``grid x grid`` cell means as the same head on ``finer x finer`` ones:
    each coarse weight spread evenly over its finer cells, so
    ``finer_features @ result == coarse_features @ weight``."""
    k = _factor(finer, grid)
    cells = np.asarray(weight, np.float64).reshape(-1, grid, grid)
    return (np.repeat(np.repeat(cells, k, axis=1), k, axis=2) / k**2).reshape(-1)


__all__ = ["coarsen_features", "finer_grid_weights"]
