"""Exact k-nearest neighbours and the kNN log-density, with two backends that agree bit for bit.

Both backends follow the same recipe (DESIGN section 4, "Precision"):

1. a *candidate search* returns, for each query star, ``m > k`` candidate neighbours together
   with a bound ``reach``: every reference star closer than ``reach`` is among the candidates.
   The CPU backend asks scipy's ``cKDTree``; the array-module backend (``xp`` = numpy or cupy)
   computes float32 distances tile by tile and keeps the ``m`` smallest, with ``reach`` lowered
   by a float32 error bound;
2. an *exact re-rank* recomputes every candidate distance in float64 with one fixed formula
   (``((dx0^2 + dx1^2) + dx2^2) + ...``, separate multiply and add, so no FMA can change a bit),
   drops the query star itself and orders candidates by (distance, source_id);
3. a *check*: a row is final when its k-th exact distance is safely below ``reach``; otherwise
   it is searched again with twice as many candidates. So ties at the k-th distance (duplicated
   coordinates) are resolved by source_id, identically in both backends and in every shard.

The log-density is DESIGN 2.4: ``log f = log k - log N - log V_d - d log r_k`` with ``N`` the
*global* star count (not the shard's) and ``V_d`` the unit d-ball volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from scipy.spatial import cKDTree

#: Smallest k-th neighbour distance used in the density (scaled feature units). Stacks of more
#: than k stars with identical features would otherwise get an infinite density.
MIN_KTH_DISTANCE = 1e-12

#: Largest k accepted (DESIGN: 1 <= nNeighbors <= 1024).
MAX_K = 1024


@dataclass
class KnnResult:
    """Exact kNN of a set of query stars.

    Attributes
    ----------
    indices : ndarray of int64, shape (n_query, k)
        Reference-row indices of the k nearest neighbours, ordered by (distance, source_id).
    kth_distance : ndarray of float64, shape (n_query,)
        Exact float64 distance to the k-th neighbour, in scaled feature units.
    requeried : int
        Number of rows whose first candidate set was too narrow and were searched again.
    """

    indices: np.ndarray
    kth_distance: np.ndarray
    requeried: int = 0


def validate_k(k, n_reference: int | None = None) -> int:
    """Return ``k`` as an int or raise ``ValueError`` naming what is allowed.

    Floats (even ``32.0``), bools and strings are refused: a neighbour count is a whole number.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(
            f"nNeighbors must be an integer in [1, {MAX_K}], got {k!r} ({type(k).__name__})"
        )
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"nNeighbors must be an integer in [1, {MAX_K}], got {k}")
    if n_reference is not None and n_reference < k + 1:
        raise ValueError(
            f"nNeighbors={k} needs at least k+1={k + 1} stars with finite features, "
            f"got {n_reference}"
        )
    return k


def log_unit_ball_volume(d: int) -> float:
    """Natural log of the volume of the unit ball in ``d`` dimensions."""
    return (d / 2.0) * math.log(math.pi) - math.lgamma(d / 2.0 + 1.0)


def log_density(kth_distance, k: int, n_total: int, d: int, xp=np):
    """Classic kNN log-density estimate (DESIGN 2.4), natural log, per unit scaled volume.

    Parameters
    ----------
    kth_distance : array
        Distance to the k-th neighbour (self excluded); floored at ``MIN_KTH_DISTANCE``.
    k : int
        Neighbour count.
    n_total : int
        Global number of stars in the job (the same for every shard).
    d : int
        Feature-space dimension.
    """
    r = xp.maximum(xp.asarray(kth_distance, dtype=xp.float64), MIN_KTH_DISTANCE)
    const = math.log(k) - math.log(n_total) - log_unit_ball_volume(d)
    return const - d * xp.log(r)


# --------------------------------------------------------------------------------------------
# exact re-rank (shared by both backends)
# --------------------------------------------------------------------------------------------

def exact_distances(X, query_rows, cand, xp=np):
    """Float64 distances from each query row to its candidates, by the fixed-order formula.

    Each arithmetic step is its own array operation (no fused kernel), so numpy and cupy round
    identically.
    """
    q = X[query_rows]
    total = None
    for j in range(X.shape[1]):
        diff = X[cand, j] - q[:, j][:, None]
        sq = diff * diff
        total = sq if total is None else total + sq
    return xp.sqrt(total)


def rerank(X, source_id, query_rows, cand, reach, k: int, xp=np):
    """Order candidates by exact (distance, source_id), drop self, and check completeness.

    Parameters
    ----------
    X : (n_ref, d) float64 array
    source_id : (n_ref,) int64 array
    query_rows : (n_query,) int array
        Reference rows of the query stars (their own row is excluded as "self").
    cand : (n_query, m) int array
        Candidate reference rows; ``-1`` pads unused slots.
    reach : (n_query,) float64 array
        Every reference star at exact distance < reach is among the candidates.

    Returns
    -------
    indices : (n_query, k) int64, kth : (n_query,) float64, ok : (n_query,) bool
    """
    valid = (cand >= 0) & (cand != query_rows[:, None])
    safe = xp.where(valid, cand, 0)
    dist = exact_distances(X, query_rows, safe, xp=xp)
    dist = xp.where(valid, dist, xp.inf)
    sid = xp.where(valid, source_id[safe], xp.iinfo(xp.int64).max)
    by_sid = xp.argsort(sid, axis=1, kind="stable")
    dist = xp.take_along_axis(dist, by_sid, axis=1)
    safe = xp.take_along_axis(safe, by_sid, axis=1)
    by_dist = xp.argsort(dist, axis=1, kind="stable")[:, :k]
    indices = xp.take_along_axis(safe, by_dist, axis=1).astype(xp.int64)
    kth = xp.take_along_axis(dist, by_dist[:, k - 1:k], axis=1)[:, 0]
    ok = xp.isfinite(kth) & (kth < reach)
    return indices, kth, ok


@numba.njit(cache=True, nogil=True)
def _rerank_rows(X, source_id, query_rows, cand, reach, k, out_idx, out_kth, ok):
    """Compiled twin of :func:`rerank` for the CPU backend (same formula, same order)."""
    n, m = cand.shape
    d = X.shape[1]
    dist = np.empty(m)
    sids = np.empty(m, dtype=np.int64)
    rows = np.empty(m, dtype=np.int64)
    for i in range(n):
        qi = query_rows[i]
        cnt = 0
        for c in range(m):
            j = cand[i, c]
            if j < 0 or j == qi:
                continue
            total = 0.0
            for t in range(d):
                diff = X[j, t] - X[qi, t]
                sq = diff * diff
                total = sq if t == 0 else total + sq
            dj = np.sqrt(total)
            sj = source_id[j]
            # insertion sort by (distance, source_id): rows arrive nearly sorted
            p = cnt
            while p > 0 and (dist[p - 1] > dj or (dist[p - 1] == dj and sids[p - 1] > sj)):
                dist[p] = dist[p - 1]
                sids[p] = sids[p - 1]
                rows[p] = rows[p - 1]
                p -= 1
            dist[p] = dj
            sids[p] = sj
            rows[p] = j
            cnt += 1
        if cnt < k:
            ok[i] = False
            out_kth[i] = np.inf
            continue
        for c in range(k):
            out_idx[i, c] = rows[c]
        out_kth[i] = dist[k - 1]
        ok[i] = dist[k - 1] < reach[i]


# --------------------------------------------------------------------------------------------
# CPU backend: cKDTree candidates + compiled re-rank
# --------------------------------------------------------------------------------------------

def knn_cpu(X, source_id, k: int, query_rows=None, workers: int = -1, tree=None) -> KnnResult:
    """Exact kNN with scipy's cKDTree for candidates.

    Parameters
    ----------
    X : (n_ref, d) float64 array
        Scaled features of every reference star (a shard's owned + halo stars, or all stars).
    source_id : (n_ref,) int64 array
    k : int
        Neighbours per star, self excluded.
    query_rows : int array, optional
        Rows of ``X`` to find neighbours for (default: all rows).
    workers : int
        Threads for the tree query (-1: all cores).
    tree : cKDTree, optional
        A tree already built on ``X``.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    source_id = np.ascontiguousarray(source_id, dtype=np.int64)
    n_ref = X.shape[0]
    k = validate_k(k, n_ref)
    all_rows = query_rows is None
    query_rows = np.arange(n_ref) if all_rows else np.asarray(query_rows, np.int64)
    tree = cKDTree(X, balanced_tree=False, compact_nodes=False) if tree is None else tree
    indices = np.empty((len(query_rows), k), dtype=np.int64)
    kth = np.empty(len(query_rows))
    ok = np.zeros(len(query_rows), dtype=bool)
    todo = np.arange(len(query_rows))
    m = k + 2  # self + k neighbours + one spare that proves the k-th is not tied
    requeried = 0
    while len(todo):
        m_eff = min(m, n_ref)
        points = X if all_rows and len(todo) == n_ref else X[query_rows[todo]]
        dist, cand = tree.query(points, k=m_eff, workers=workers)
        dist = dist.reshape(len(todo), m_eff)
        cand = cand.reshape(len(todo), m_eff).astype(np.int64)
        cand[cand >= n_ref] = -1
        if m_eff == n_ref:
            reach = np.full(len(todo), np.inf)
        else:
            # cKDTree's own float64 distances may differ from ours by an ulp: keep a margin
            reach = dist[:, -1] * (1.0 - 1e-9)
        sub_idx = np.empty((len(todo), k), dtype=np.int64)
        sub_kth = np.empty(len(todo))
        sub_ok = np.zeros(len(todo), dtype=bool)
        _rerank_rows(X, source_id, query_rows[todo], cand, reach, k, sub_idx, sub_kth, sub_ok)
        indices[todo] = sub_idx
        kth[todo] = sub_kth
        ok[todo] = sub_ok
        if m_eff == n_ref:
            break
        todo = todo[~sub_ok]
        requeried += len(todo)
        m *= 2
    return KnnResult(indices=indices, kth_distance=kth, requeried=requeried)


# --------------------------------------------------------------------------------------------
# array-module backend: tiled float32 brute force + the same exact re-rank
# --------------------------------------------------------------------------------------------

def float32_distance_error(scale, d: int):
    """Absolute bound on |d32 - d64| between stars whose features are at most ``scale`` in
    absolute value (a float or an array of per-query scales), computed from float32-rounded
    features."""
    return 8.0 * float(np.finfo(np.float32).eps) * scale * math.sqrt(d) + 1e-30


def _float32_error_bound(X_np: np.ndarray) -> float:
    """:func:`float32_distance_error` for any two stars of ``X_np``."""
    scale = float(np.max(np.abs(X_np))) if X_np.size else 0.0
    return float32_distance_error(scale, X_np.shape[1])


def knn_xp(X, source_id, k: int, query_rows=None, xp=np, tile_rows: int | None = None,
           memory_budget_bytes: int = 256 * 2**20) -> KnnResult:
    """Exact kNN by tiled brute force written against an array module (numpy or cupy).

    The candidate search runs in float32 (the T4's fast path), the re-rank in float64.
    Results equal :func:`knn_cpu` exactly.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``. Inputs may be host arrays; results are returned as NumPy.
    tile_rows : int, optional
        Query rows per tile; default chosen so one float32 distance tile fits
        ``memory_budget_bytes``.
    """
    X_np = np.ascontiguousarray(X, dtype=np.float64)
    n_ref, d = X_np.shape
    k = validate_k(k, n_ref)
    query_np = np.arange(n_ref) if query_rows is None else np.asarray(query_rows, np.int64)
    Xd = xp.asarray(X_np)
    sid_d = xp.asarray(np.ascontiguousarray(source_id, dtype=np.int64))
    X32 = Xd.astype(xp.float32)
    err = _float32_error_bound(X_np)
    if tile_rows is None:
        tile_rows = max(1, min(len(query_np), memory_budget_bytes // max(1, 8 * n_ref)))
    indices = np.empty((len(query_np), k), dtype=np.int64)
    kth = np.empty(len(query_np))
    requeried = 0
    for start in range(0, len(query_np), tile_rows):
        rows = xp.asarray(query_np[start:start + tile_rows])
        todo = xp.arange(len(rows))
        m = k + 2
        while int(todo.shape[0]):
            m_eff = min(m, n_ref)
            q = X32[rows[todo]]
            d2 = None
            for j in range(d):
                diff = q[:, j][:, None] - X32[:, j][None, :]
                sq = diff * diff
                d2 = sq if d2 is None else d2 + sq
            if m_eff < n_ref:
                cand = xp.argpartition(d2, m_eff - 1, axis=1)[:, :m_eff]
                farthest = xp.take_along_axis(d2, cand, axis=1).max(axis=1)
                # every star with exact distance < reach has float32 distance < farthest
                reach = xp.sqrt(farthest.astype(xp.float64)) - 2 * err
            else:
                cand = xp.broadcast_to(xp.arange(n_ref), (int(todo.shape[0]), n_ref))
                reach = xp.full(int(todo.shape[0]), xp.inf)
            sub_idx, sub_kth, sub_ok = rerank(Xd, sid_d, rows[todo], cand, reach, k, xp=xp)
            if m_eff == n_ref:
                sub_ok = xp.ones_like(sub_ok)
            out = start + _to_numpy(todo)
            indices[out] = _to_numpy(sub_idx)
            kth[out] = _to_numpy(sub_kth)
            todo = todo[~sub_ok]
            requeried += int(todo.shape[0])
            m *= 2
    return KnnResult(indices=indices, kth_distance=kth, requeried=requeried)


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
