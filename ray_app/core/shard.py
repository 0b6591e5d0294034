"""What one shard computes (DESIGN section 4), as plain functions the actors call.

A shard sees a *reference* set of stars (its owned stars plus a halo) and computes, for its
owned stars only:

1. :func:`shard_density`: exact kNN and log-density (with the *global* star count);
2. :func:`shard_forest`: given the log-density of every reference star (halo densities come
   from the shards that own them), the order-minimal spanning forest of its owned kNN edges.

The driver merges the forests with :func:`ray_app.core.persistence.merge_forests`.
Row indices here are reference-local; the caller maps them to global indices.
"""

from __future__ import annotations

import numpy as np

from .persistence import knn_edges, spanning_forest
from .recovery import DensityResult, density


def shard_density(X_ref, sid_ref, owned_rows, k: int, n_total: int, backend: str = "cpu",
                  xp=None, workers: int = -1) -> DensityResult:
    """kNN + log-density of the owned rows against the whole reference set."""
    return density(np.asarray(X_ref), np.asarray(sid_ref), k, n_total=n_total,
                   query_rows=np.asarray(owned_rows), backend=backend, xp=xp,
                   workers=workers)


def shard_forest(log_density_ref, sid_ref, owned_rows, indices) -> tuple[np.ndarray, np.ndarray]:
    """Spanning forest (reference-row indices) of the owned stars' kNN edges.

    Parameters
    ----------
    log_density_ref : (n_ref,) float64
        Log-density of every reference star (owned and halo).
    owned_rows : (n_owned,) int
        Reference rows of the owned stars, in the order of ``indices``' rows.
    indices : (n_owned, k) int
        Reference rows of each owned star's neighbours.
    """
    src, dst = knn_edges(np.asarray(indices), rows=np.asarray(owned_rows))
    return spanning_forest(log_density_ref, sid_ref, src, dst)
