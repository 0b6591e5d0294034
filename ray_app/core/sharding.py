"""Partition a job's stars into slabs along one feature axis, with halos, exactly.

A shard owns the stars whose scaled feature ``axis`` lies in ``[lo, hi)`` (balanced by star
count; a star exactly on a cut belongs to the slab on its right) and sees a *reference* set:
its owned stars plus every star within ``halo`` of the slab along the axis. An owned star's kNN
over the reference is the true kNN when its k-th neighbour distance is smaller than its
distance to the reference edge along the axis (any star outside the reference is at least that
far away). Stars that fail the check are found by :func:`halo_failures`; the engine recomputes
them against the whole catalogue, so a too-narrow halo costs time, never exactness.

The axis is phi1 (column 0) or, by default, the feature with the largest robust extent: the
default scales stretch the kNN ball along phi1 (a matched filter for streams), so phi1 slabs
would need halos nearly as wide as the field. Exactness holds for any axis.

Pure NumPy: the engine decides where shards run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import ConfigurationError
from .grid_knn import grid_device_bytes

#: Relative margin for the halo check: a float64 distance may undercut its phi1 component by
#: an ulp, so "strictly inside" keeps a little room.
HALO_MARGIN = 1e-9


@dataclass
class Shard:
    """One slab of a job.

    Attributes
    ----------
    index : int
    axis : int
        Feature column the slab is cut along.
    lo, hi : float
        Owned interval of scaled phi1 (``-inf``/``inf`` at the ends).
    ref_lo, ref_hi : float
        Reference interval (owned interval plus halo), closed on both sides.
    owned : ndarray of int64
        Global rows owned by this shard.
    ref : ndarray of int64
        Global rows of the reference set (owned rows included), ascending.
    """

    index: int
    axis: int
    lo: float
    hi: float
    ref_lo: float
    ref_hi: float
    owned: np.ndarray
    ref: np.ndarray

    @property
    def owned_local(self) -> np.ndarray:
        """Positions of the owned rows inside ``ref``."""
        return np.searchsorted(self.ref, self.owned)


def shard_bytes_per_star(k: int, d: int = 5) -> int:
    """Rough peak memory of one shard per reference star (features, tree, kNN lists, forest)."""
    return 8 * (d + 4 + 3 * (k + 2)) + 64


#: Share of an actor's free GPU memory a shard may plan to use (allocator fragmentation).
DEVICE_USABLE_FRACTION = 0.8


def choose_shard_count(n_stars: int, k: int, memory_per_actor: int,
                       requested: int | None = None, device_memory: int | None = None,
                       d: int = 5) -> int:
    """Number of shards: the requested count, raised until one shard fits in memory.

    Parameters
    ----------
    memory_per_actor : int
        Host bytes one actor may use for a shard.
    requested : int, optional
        Shards asked for by the job (``"shards"`` / ``--shards``), >= 1.
    device_memory : int, optional
        GPU bytes free to one actor (its device's free memory, or its share of it); ``None``
        when the actors compute on CPUs.
    d : int
        Feature dimension.
    """
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)
                                  or requested < 1):
        raise ValueError(f"shards must be an integer >= 1, got {requested!r}")
    if memory_per_actor <= 0:
        raise ConfigurationError(f"RAY_APP_MEMORY_PER_ACTOR must be > 0 bytes, got "
                                 f"{memory_per_actor}")
    # halos add ~25 % to each shard's reference set
    need = math.ceil(1.25 * n_stars * shard_bytes_per_star(k, d) / memory_per_actor)
    if device_memory is not None:
        fixed = grid_device_bytes(0, k, d)
        usable = DEVICE_USABLE_FRACTION * device_memory - fixed
        if usable <= 0:
            raise ConfigurationError(
                f"device memory {device_memory} bytes is too small for a shard: the kNN needs "
                f"more than {fixed / DEVICE_USABLE_FRACTION:.0f} bytes at nNeighbors={k} "
                "(RAY_APP_DEVICE_MEMORY, or a larger GPU)")
        per_star = grid_device_bytes(1, k, d) - fixed
        need = max(need, math.ceil(1.25 * n_stars * per_star / usable))
    return max(requested or 1, need, 1)


def check_k_servable(k: int, memory_per_actor: int, device_memory: int | None = None,
                     d: int = 5) -> None:
    """Raise ``ValueError`` naming the limit when no shard plan can serve ``k`` here.

    A shard must hold at least k + 1 reference stars (plus its halo) in one actor's host
    budget and, on GPUs, the kNN's fixed device buffers plus those stars in the usable part of
    the device. The check runs at validation, before a job is claimed, so a k the configured
    cluster cannot serve is refused with the reason instead of failing mid-job.
    """
    min_stars = 2 * (k + 1)  # a shard's k + 1 owned stars and as many again of halo
    host = 1.25 * min_stars * shard_bytes_per_star(k, d)
    if host > memory_per_actor:
        raise ValueError(f"nNeighbors={k} cannot be served here: one shard needs about "
                         f"{host / 2**20:.0f} MiB of host memory and an actor has "
                         f"{memory_per_actor / 2**20:.0f} MiB (RAY_APP_MEMORY_PER_ACTOR); "
                         "use a smaller nNeighbors")
    if device_memory is not None:
        need = grid_device_bytes(min_stars, k, d) / DEVICE_USABLE_FRACTION
        if need > device_memory:
            raise ValueError(f"nNeighbors={k} cannot be served here: the GPU kNN needs about "
                             f"{need / 2**20:.0f} MiB per actor and a GPU actor has "
                             f"{device_memory / 2**20:.0f} MiB; use a smaller nNeighbors")


def estimate_halo(X: np.ndarray, k: int, rng: np.random.Generator, sample: int = 2000,
                  quantile: float = 0.95) -> float:
    """Halo width (scaled units) covering the k-th neighbour distance of most stars.

    Computed exactly on a random sample of query stars against all stars; stars beyond the
    quantile are caught by the halo check and handled by widening.
    """
    n = len(X)
    if n <= k + 1:
        return math.inf
    rows = rng.choice(n, size=min(sample, n), replace=False)
    dist, _ = cKDTree(X).query(X[rows], k=k + 1, workers=-1)
    return float(np.quantile(dist[:, -1], quantile))


def choose_axis(X: np.ndarray) -> int:
    """The feature column with the largest 1-99 % extent (scaled units)."""
    lo, hi = np.quantile(X, [0.01, 0.99], axis=0)
    return int(np.argmax(hi - lo))


def plan_shards(X: np.ndarray, n_shards: int, halo: float, min_reference: int = 0,
                axis: int | None = None) -> list[Shard]:
    """Balanced slabs along ``axis`` (default :func:`choose_axis`) with halos.

    Empty slabs (possible when many stars share a value) are dropped. A slab whose reference
    set has fewer than ``min_reference`` stars (k + 1) takes that many more on each side.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    axis = choose_axis(X) if axis is None else int(axis)
    x = np.asarray(X[:, axis])
    cuts = np.unique(np.quantile(x, np.arange(1, n_shards) / n_shards)) if n_shards > 1 \
        else np.empty(0)
    edges = np.concatenate([[-np.inf], cuts, [np.inf]])
    owner = np.searchsorted(cuts, x, side="right")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    shards = []
    for s in range(len(edges) - 1):
        owned = np.flatnonzero(owner == s)
        if len(owned) == 0:
            continue
        lo, hi = edges[s], edges[s + 1]
        shard = Shard(len(shards), axis, lo, hi, lo - halo, hi + halo, owned, owned)
        shard.ref = _rows_in(order, xs, shard.ref_lo, shard.ref_hi)
        if len(shard.ref) < min_reference:
            # too few stars for k neighbours (a sparse slab): take min_reference more stars
            # on each side in phi1 order; the halo check still decides exactness
            first = int(np.searchsorted(xs, lo, side="left"))
            end = int(np.searchsorted(xs, hi, side="left"))
            a2, b2 = max(0, first - min_reference), min(len(xs), end + min_reference)
            shard.ref_lo = -np.inf if a2 == 0 else min(shard.ref_lo, float(xs[a2]))
            shard.ref_hi = np.inf if b2 == len(xs) else max(shard.ref_hi, float(xs[b2 - 1]))
            shard.ref = _rows_in(order, xs, shard.ref_lo, shard.ref_hi)
        shards.append(shard)
    return shards


def _rows_in(order, xs, lo, hi) -> np.ndarray:
    a = np.searchsorted(xs, lo, side="left")
    b = np.searchsorted(xs, hi, side="right")
    return np.sort(order[a:b])


def halo_failures(shard: Shard, X: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """Positions (in ``shard.owned``) whose k-th neighbour may lie outside the reference."""
    x_owned = X[shard.owned, shard.axis]
    edge = np.minimum(x_owned - shard.ref_lo, shard.ref_hi - x_owned)
    return np.flatnonzero(~(kth < edge * (1.0 - HALO_MARGIN)))
