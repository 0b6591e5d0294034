"""Exact kNN on a multi-level cell grid: the GPU candidate search, with a compiled CPU twin.

The tiled brute force of :func:`ray_app.core.knn.knn_xp` is O(N^2). This module finds the same
neighbours in O(N) expected work per level, with the recipe of ``knn.py`` (candidates + a
``reach`` bound -> exact float64 re-rank -> check):

1. **Grids.** Level ``l`` cuts the scaled feature space into cubes of side
   ``h_l = h_0 * GRID_LEVEL_RATIO**l`` (``TAIL_LEVEL_RATIO`` once < 1 % of the rows are left).
   Stars are sorted by the integer key of their cell, so a
   cell is a contiguous range of the sorted stars and a run of cells along the last feature is
   one range too (found by two binary searches over the distinct keys).
2. **Candidates.** For a query star in cell ``c`` the search scans the ``3**d`` block of cells
   ``c - 1 .. c + 1`` (rows of 3 cells along the last feature, skipped when their nearest
   possible point is already farther than the m-th best) and keeps the ``m`` smallest float32
   distances. One CUDA thread per query does this in :data:`GRID_KERNEL_SOURCE` (an insertion
   k-selection in registers/local memory); :func:`_grid_candidates_cpu` is its NumPy/numba
   twin, the same loops.
3. **Reach.** A star outside the block is farther than the distance from the query to the
   block's faces; a star inside the block but not kept is at least as far as the m-th kept one
   (minus the float32 error bound). The smaller of the two is the ``reach`` of
   :func:`ray_app.core.knn.rerank`, which recomputes distances in float64, orders them by
   (distance, source_id) and accepts a row only if its k-th distance is below ``reach``.
4. **Escalation.** A row that fails because the block was too small moves to the next, coarser
   level; a row that fails because ``m`` was too small (a stack of duplicated stars) doubles
   ``m``. The coarsest level has at most 2 cells per feature, so every block holds every star.
   Rows still open when ``m`` would exceed :data:`MAX_GRID_CANDIDATES`, or the last few open
   rows (:data:`BRUTE_FINISH_ROWS`), finish in the tiled brute force.

Each query starts at the first level where its own cell holds enough stars that the ball of
radius ``h_l`` (which the block always contains) is expected to hold its k neighbours, so
dense and sparse regions each get a cell size matched to their density. The choice of levels
only affects speed: the check in step 3 makes every result exact, and equal bit for bit to
:func:`ray_app.core.knn.knn_cpu`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from .knn import (
    KnnResult,
    _rerank_rows,
    _to_numpy,
    float32_distance_error,
    knn_xp,
    log_unit_ball_volume,
    rerank,
    validate_k,
)

#: Cell side ratio between consecutive levels. Smaller ratios give each star a cell size closer
#: to its density (less scanning) at the price of one sort of the stars per level.
GRID_LEVEL_RATIO = math.sqrt(2.0)

#: Cell side ratio once fewer than 1 % of the rows are left (isolated stars).
TAIL_LEVEL_RATIO = 2.0

#: Largest candidate list one query keeps (CUDA local memory per thread); rows that need more
#: (more than this many stars tied at their k-th distance) finish in the brute force.
MAX_GRID_CANDIDATES = 256

#: Largest feature dimension of the grid (the block has 3**(d-1) rows of cells).
MAX_GRID_DIM = 8

#: Most rows searched per kernel launch and re-rank; enough threads to fill an H100 (132 SMs x
#: 2048).
DEFAULT_BATCH_ROWS = 1 << 18

#: Device bytes one batch's (rows, m) work arrays may take: the candidate lists and the
#: re-rank's ~8 float64/int64 arrays, :data:`BYTES_PER_CANDIDATE` per row and candidate. Batches
#: are sized from this and m, so a large k means fewer rows per launch, not larger arrays.
BATCH_BYTES = 512 * 2**20
BYTES_PER_CANDIDATE = 64

#: When this few rows are left open, the brute force (rows x N) is cheaper than building
#: another level (a sort of all N stars).
BRUTE_FINISH_ROWS = 32

#: Cell keys must fit an int64 with room for the +1 of the last-feature range end.
_MAX_KEY = 2**62


def batch_rows_for(m: int, budget: int = BATCH_BYTES) -> int:
    """Rows per launch for candidate lists of ``m``: the work arrays stay within ``budget``."""
    return int(max(1024, min(DEFAULT_BATCH_ROWS, budget // (BYTES_PER_CANDIDATE * max(m, 1)))))


def grid_device_bytes(n_ref: int, k: int, d: int = 5) -> int:
    """Peak device memory of :func:`knn_grid` for ``n_ref`` reference stars (an estimate).

    Per star: float64 and float32 features, one level's sorted float32 copy and int32 cell
    coordinates, ~7 int64 arrays (keys, order, counts, cell starts, scan temporaries), the
    results (k int64 neighbours and the k-th distance) and the per-query bookkeeping.
    Fixed: the largest batch's work arrays (:func:`batch_rows_for`; candidate lists never
    longer than :data:`MAX_GRID_CANDIDATES`), plus the brute-force fallback's 256 MiB tile.
    """
    per_star = 8 * d + 4 * d + 4 * d + 4 * d + 8 * 7 + 8 * (k + 1) + 26
    m = min(k + 2, MAX_GRID_CANDIDATES)
    fixed = batch_rows_for(m) * m * BYTES_PER_CANDIDATE + 256 * 2**20
    return int(n_ref) * per_star + fixed


@dataclass
class GridLevel:
    """One level of the grid: the reference stars sorted by cell.

    Attributes
    ----------
    h : float
        Cell side (scaled feature units).
    ncell : (d,) int64 ndarray (host)
        Cells per feature.
    stride : (d,) int64 ndarray (host)
        Key stride per feature (the last feature has stride 1).
    order : (n,) int64 array
        Reference row of each sorted position.
    xs32 : (n, d) float32 array
        Features in sorted order.
    ukeys : (n_cells,) int64 array
        Distinct cell keys, ascending.
    cstart : (n_cells + 1,) int64 array
        First sorted position of each distinct cell (and ``n`` at the end).
    cell : (n, d) int32 array
        Cell coordinates of every reference row (unsorted order).
    count : (n,) int64 array
        Stars in each reference row's own cell (unsorted order).
    """

    h: float
    ncell: np.ndarray
    stride: np.ndarray
    order: object
    xs32: object
    ukeys: object
    cstart: object
    cell: object
    count: object

    @property
    def covers_everything(self) -> bool:
        """Every 3**d block holds every star (the last level)."""
        return bool(np.all(self.ncell <= 2))


def grid_shape(extent: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Cells per feature and key strides for side ``h``; ``None`` if the keys overflow."""
    cells = np.floor(np.asarray(extent, dtype=np.float64) / h) + 1
    if not np.all(cells < _MAX_KEY):
        return None
    ncell = cells.astype(np.int64)
    total = 1
    for c in ncell:
        total *= int(c)
    if total >= _MAX_KEY:
        return None
    stride = np.ones(len(ncell), dtype=np.int64)
    for j in range(len(ncell) - 2, -1, -1):
        stride[j] = stride[j + 1] * ncell[j + 1]
    return ncell, stride


def build_level(Xd, X32, origin: np.ndarray, extent: np.ndarray, h: float, xp=np
                ) -> GridLevel | None:
    """Sort the reference stars by their cell at side ``h`` (array-module code)."""
    shape = grid_shape(extent, h)
    if shape is None:
        return None
    ncell, stride = shape
    n = Xd.shape[0]
    cell = xp.floor((Xd - xp.asarray(origin)) / h).astype(xp.int64)
    # the top edge may round into a cell past the last one
    cell = xp.minimum(xp.maximum(cell, 0), xp.asarray(ncell - 1))
    key = (cell * xp.asarray(stride)).sum(axis=1)
    order = xp.argsort(key, kind="stable") if xp is np else xp.argsort(key)
    skey = key[order]
    first = xp.ones(n, dtype=bool)
    first[1:] = skey[1:] != skey[:-1]
    starts = xp.flatnonzero(first)
    cstart = xp.concatenate([starts, xp.asarray([n], dtype=starts.dtype)]).astype(xp.int64)
    cell_of_sorted = xp.cumsum(first) - 1
    count = xp.empty(n, dtype=xp.int64)
    count[order] = xp.diff(cstart)[cell_of_sorted]
    return GridLevel(h=float(h), ncell=ncell, stride=stride, order=order.astype(xp.int64),
                     xs32=xp.ascontiguousarray(X32[order]), ukeys=skey[starts],
                     cstart=cstart, cell=cell.astype(xp.int32), count=count)


def query_gaps(Xd, rows, level: GridLevel, origin: np.ndarray, margin: float, xp=np):
    """Distances from each query to its cell's lower and upper faces, and the block bound.

    Returns
    -------
    lo_gap, hi_gap : (n_rows, d) float64
        Lower bounds on the distance, along each feature, from the query to any star in the
        previous (next) cell; ``margin`` covers the rounding of the cell assignment.
    bound : (n_rows,) float64
        Lower bound on the distance to any star outside the query's 3**d block (``inf`` when
        the block reaches both ends of the grid in every feature).
    """
    c = level.cell[rows]
    q = Xd[rows]
    lo_edge = xp.asarray(origin) + c.astype(xp.float64) * level.h
    lo_gap = xp.maximum(q - lo_edge - margin, 0.0)
    hi_gap = xp.maximum(lo_edge + level.h - q - margin, 0.0)
    ncell = xp.asarray(level.ncell)
    below = xp.where(c - 1 > 0, lo_gap + level.h, xp.inf)
    above = xp.where(c + 1 < ncell - 1, hi_gap + level.h, xp.inf)
    bound = xp.minimum(below, above).min(axis=1)
    return lo_gap, hi_gap, bound


# --------------------------------------------------------------------------------------------
# candidate search: the CUDA kernel and its CPU twin (the same loops)
# --------------------------------------------------------------------------------------------

GRID_KERNEL_SOURCE = r"""
// Compiled with -DGRID_D=<features> -DGRID_M=<candidates per query>.
// NVRTC has no math headers: +inf from its bit pattern.
#define GRID_INF __int_as_float(0x7f800000)
__device__ __forceinline__ long long lower_bound_key(const long long* __restrict__ keys,
                                                     long long n, long long value) {
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) >> 1;
        if (keys[mid] < value) lo = mid + 1; else hi = mid;
    }
    return lo;
}

extern "C" __global__ void grid_candidates(
        const float* __restrict__ xs, const long long* __restrict__ order,
        const long long* __restrict__ ukeys, const long long* __restrict__ cstart,
        const long long n_cells,
        const float* __restrict__ q, const int* __restrict__ qcell,
        const float* __restrict__ lo_gap, const float* __restrict__ hi_gap,
        const int* __restrict__ ncell, const long long* __restrict__ stride,
        const long long nq, long long* __restrict__ out_idx, float* __restrict__ out_d2,
        long long* __restrict__ out_scanned) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= nq) return;
    float qv[GRID_D], lg[GRID_D], hg[GRID_D];
    int qc[GRID_D];
    for (int j = 0; j < GRID_D; ++j) {
        qv[j] = q[i * GRID_D + j];
        qc[j] = qcell[i * GRID_D + j];
        lg[j] = lo_gap[i * GRID_D + j];
        hg[j] = hi_gap[i * GRID_D + j];
    }
    float best_d[GRID_M];
    long long best_p[GRID_M];
    int found = 0;
    float worst = GRID_INF;
    long long scanned = 0;
    int n_rows = 1;
    for (int j = 0; j < GRID_D - 1; ++j) n_rows *= 3;
    const int last = GRID_D - 1;
    const int c_lo = qc[last] > 0 ? qc[last] - 1 : 0;
    const int c_hi = qc[last] + 1 < ncell[last] ? qc[last] + 1 : ncell[last] - 1;
    for (int t = 0; t < n_rows; ++t) {
        // digit 0, 1, 2 -> offset 0, -1, +1: the query's own row of cells comes first
        long long key = 0;
        float lb = 0.0f;
        int rest = t;
        bool inside = true;
        for (int j = 0; j < GRID_D - 1; ++j) {
            int digit = rest % 3;
            rest /= 3;
            int off = digit == 0 ? 0 : (digit == 1 ? -1 : 1);
            int c = qc[j] + off;
            if (c < 0 || c >= ncell[j]) { inside = false; break; }
            float g = off < 0 ? lg[j] : (off > 0 ? hg[j] : 0.0f);
            lb += g * g;
            key += (long long)c * stride[j];
        }
        if (!inside) continue;
        if (found == GRID_M && lb >= worst) continue;
        long long a = lower_bound_key(ukeys, n_cells, key + c_lo);
        long long b = lower_bound_key(ukeys, n_cells, key + c_hi + 1);
        long long p_end = cstart[b];
        for (long long p = cstart[a]; p < p_end; ++p) {
            float s = 0.0f;
            for (int j = 0; j < GRID_D; ++j) {
                float dx = xs[p * GRID_D + j] - qv[j];
                s += dx * dx;
            }
            ++scanned;
            if (found < GRID_M || s < worst) {
                int pos = found < GRID_M ? found : GRID_M - 1;
                while (pos > 0 && best_d[pos - 1] > s) {
                    best_d[pos] = best_d[pos - 1];
                    best_p[pos] = best_p[pos - 1];
                    --pos;
                }
                best_d[pos] = s;
                best_p[pos] = p;
                if (found < GRID_M) ++found;
                if (found == GRID_M) worst = best_d[GRID_M - 1];
            }
        }
    }
    for (int c = 0; c < GRID_M; ++c) {
        out_idx[i * GRID_M + c] = c < found ? order[best_p[c]] : -1;
    }
    out_d2[i] = found == GRID_M ? worst : GRID_INF;
    out_scanned[i] = scanned;
}
"""


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid_candidates_cpu(xs, order, ukeys, cstart, q, qcell, lo_gap, hi_gap, ncell, stride,
                         m, out_idx, out_d2, out_scanned):  # pragma: no cover - compiled
    """CPU twin of the ``grid_candidates`` CUDA kernel: the same loops, one query per
    iteration (see :data:`GRID_KERNEL_SOURCE`)."""
    nq, d = q.shape
    n_rows = 3 ** (d - 1)
    last = d - 1
    for i in numba.prange(nq):
        best_d = np.empty(m, dtype=np.float32)
        best_p = np.empty(m, dtype=np.int64)
        found = 0
        worst = np.float32(np.inf)
        scanned = 0
        c_lo = max(qcell[i, last] - 1, 0)
        c_hi = min(qcell[i, last] + 1, ncell[last] - 1)
        for t in range(n_rows):
            key = 0
            lb = np.float32(0.0)
            rest = t
            inside = True
            for j in range(d - 1):
                digit = rest % 3
                rest //= 3
                off = 0 if digit == 0 else (-1 if digit == 1 else 1)
                c = qcell[i, j] + off
                if c < 0 or c >= ncell[j]:
                    inside = False
                    break
                g = lo_gap[i, j] if off < 0 else (hi_gap[i, j] if off > 0 else np.float32(0.0))
                lb += g * g
                key += c * stride[j]
            if not inside:
                continue
            if found == m and lb >= worst:
                continue
            a = np.searchsorted(ukeys, key + c_lo)
            b = np.searchsorted(ukeys, key + c_hi + 1)
            for p in range(cstart[a], cstart[b]):
                s = np.float32(0.0)
                for j in range(d):
                    dx = xs[p, j] - q[i, j]
                    s += dx * dx
                scanned += 1
                if found < m or s < worst:
                    pos = found if found < m else m - 1
                    while pos > 0 and best_d[pos - 1] > s:
                        best_d[pos] = best_d[pos - 1]
                        best_p[pos] = best_p[pos - 1]
                        pos -= 1
                    best_d[pos] = s
                    best_p[pos] = p
                    if found < m:
                        found += 1
                    if found == m:
                        worst = best_d[m - 1]
        for c in range(m):
            out_idx[i, c] = order[best_p[c]] if c < found else -1
        out_d2[i] = worst if found == m else np.float32(np.inf)
        out_scanned[i] = scanned


#: NVRTC options of every build. NVRTC fuses a*b+c into one FMA by default (one rounding
#: instead of two); the numba twin and the host build round twice, so without ``--fmad=false``
#: the float32 distances, and with them the ``scanned`` counts and the candidate order at
#: ties, could differ by an ulp between the GPU and its twins.
NVRTC_OPTIONS = ("--fmad=false",)


@lru_cache(maxsize=64)
def _cuda_kernel(d: int, m: int):
    """The ``grid_candidates`` kernel compiled for ``d`` features and ``m`` candidates."""
    import cupy

    return cupy.RawKernel(GRID_KERNEL_SOURCE, "grid_candidates",
                          options=(*NVRTC_OPTIONS, f"-DGRID_D={d}", f"-DGRID_M={m}"))


def grid_candidates(level: GridLevel, q32, qcell, lo_gap32, hi_gap32, m: int, xp=np):
    """The ``m`` nearest stars of each query inside its 3**d block (float32 distances).

    Returns
    -------
    cand : (n_q, m) int64 reference rows (``-1`` pads when the block holds fewer than ``m``)
    d2_m : (n_q,) float32 squared distance of the m-th candidate (``inf`` if fewer)
    scanned : (n_q,) int64 distances evaluated per query (the work of the search)
    """
    nq, d = q32.shape
    cand = xp.empty((nq, m), dtype=xp.int64)
    d2_m = xp.empty(nq, dtype=xp.float32)
    scanned = xp.empty(nq, dtype=xp.int64)
    if nq == 0:
        return cand, d2_m, scanned
    if xp is np:
        _grid_candidates_cpu(level.xs32, level.order, level.ukeys, level.cstart, q32,
                             qcell, lo_gap32, hi_gap32, level.ncell.astype(np.int32),
                             level.stride, m, cand, d2_m, scanned)
        return cand, d2_m, scanned
    kernel = _cuda_kernel(d, m)
    threads = 128
    blocks = (nq + threads - 1) // threads
    kernel((blocks,), (threads,), (
        level.xs32, level.order, level.ukeys, level.cstart, np.int64(len(level.ukeys)),
        xp.ascontiguousarray(q32), xp.ascontiguousarray(qcell),
        xp.ascontiguousarray(lo_gap32), xp.ascontiguousarray(hi_gap32),
        xp.asarray(level.ncell.astype(np.int32)), xp.asarray(level.stride), np.int64(nq),
        cand, d2_m, scanned))
    return cand, d2_m, scanned


# --------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------

def estimate_kth_distance(X_np: np.ndarray, k: int, rng: np.random.Generator,
                          n_query: int = 512, n_ref: int = 8192) -> np.ndarray:
    """Rough k-th neighbour distances of a random sample of stars (for the finest level).

    The k-th neighbour in a random subsample of ``n_ref`` stars, rescaled to the full set by
    the kNN density relation ``r ~ (k / N)^(1/d)``. Only the speed of the grid search depends
    on it.
    """
    n, d = X_np.shape
    ref = rng.choice(n, size=min(n, n_ref), replace=False)
    qry = ref[: min(len(ref), n_query)]
    kk = int(min(len(ref) - 1, max(1, round(k * len(ref) / n))))
    diff = X_np[qry][:, None, :] - X_np[ref][None, :, :]
    dist = np.sqrt(np.einsum("qrj,qrj->qr", diff, diff))
    r = np.partition(dist, kk, axis=1)[:, kk]  # self is the 0-th
    return r * (k * len(ref) / (n * kk)) ** (1.0 / d)


def start_count(k: int, d: int) -> int:
    """Own-cell occupancy at which a query starts: the ball of radius ``h`` (always inside its
    block) is then expected to hold 1.5x the k + 1 stars the check needs."""
    return max(1, math.ceil(1.5 * (k + 1) / math.exp(log_unit_ball_volume(d))))


@dataclass
class GridStats:
    """Work done by one :func:`knn_grid` call (for benchmarks and tests)."""

    levels: int = 0
    scanned: int = 0
    searches: int = 0
    brute_rows: int = 0


def knn_grid(X, source_id, k: int, query_rows=None, xp=np, batch_rows: int | None = None,
             stats: GridStats | None = None, seed: int = 0,
             finest_cell: float | None = None) -> KnnResult:
    """Exact kNN by multi-level cell-grid search (module docstring); equals :func:`knn_cpu`.

    Parameters
    ----------
    X : (n_ref, d) float64 array
        Scaled features of every reference star.
    source_id : (n_ref,) int64 array
    k : int
        Neighbours per star, self excluded.
    query_rows : int array, optional
        Rows of ``X`` to find neighbours for (default: all rows).
    xp : module
        ``numpy`` (compiled CPU twin) or ``cupy`` (CUDA kernel). Results are NumPy arrays.
    batch_rows : int, optional
        Query rows per kernel launch and re-rank; default :func:`batch_rows_for` the
        candidate-list length (the work arrays stay within :data:`BATCH_BYTES`).
    stats : GridStats, optional
        Filled with the work done (levels built, distances evaluated, brute-force rows).
    seed : int
        Seed of the sample that sets the finest cell size (speed only, never the result).
    finest_cell : float, optional
        Side of the finest level's cells instead of the sampled estimate (tests: put stars
        exactly on cell faces).
    """
    X_np = np.ascontiguousarray(X, dtype=np.float64)
    sid_np = np.ascontiguousarray(source_id, dtype=np.int64)
    n_ref, d = X_np.shape
    k = validate_k(k, n_ref)
    query_np = np.arange(n_ref) if query_rows is None else np.asarray(query_rows, np.int64)
    stats = GridStats() if stats is None else stats
    if d > MAX_GRID_DIM or k + 2 > MAX_GRID_CANDIDATES:
        # no block of 3**(d-1) cell rows, or no candidate list of k + 2 that fits a thread:
        # the tiled brute force is exact and bounded in memory
        stats.brute_rows += len(query_np)
        return knn_xp(X_np, sid_np, k, query_rows=query_np, xp=xp)

    Xd = xp.asarray(X_np)
    origin = _to_numpy(Xd.min(axis=0))
    extent = _to_numpy(Xd.max(axis=0)) - origin
    scale = float(np.max(np.maximum(np.abs(origin), np.abs(origin + extent))))
    rng = np.random.default_rng(seed)
    # float32 features relative to the median (of a sample: any centre is correct): rounding
    # errors then scale with each star's own distance from the bulk, not with the farthest
    # outlier (see float32_error_bound)
    center = np.median(X_np[rng.choice(n_ref, size=min(n_ref, 65536), replace=False)], axis=0)
    # the cell assignment floor((x - origin) / h) is rounded: faces are trusted to this margin
    margin = 64 * np.finfo(np.float64).eps * (scale + float(extent.max()) + 1.0)
    widest = float(extent.max())
    if finest_cell is None:
        r_est = estimate_kth_distance(X_np, k, rng)
        positive = r_est[r_est > 0]
        # a star starts where its cell holds ~start_count stars: at h ~ 1.1 r_k for d = 5, so
        # the densest 1 % start on the first level and no level is built for nobody
        h = float(np.quantile(positive, 0.01)) if len(positive) else widest / 2**10
        h = max(h, widest * 2.0 ** (-60.0 / d), 1e-300)
    elif not finest_cell > 0:
        raise ValueError(f"finest_cell must be > 0 (scaled feature units), got {finest_cell}")
    else:
        h = float(finest_cell)

    X32 = (Xd - xp.asarray(center)).astype(xp.float32)
    sid_d = xp.asarray(sid_np)
    # the bookkeeping stays on the array module's device: one transfer of the results at the end
    n_q = len(query_np)
    query_d = xp.asarray(query_np)
    indices = xp.empty((n_q, k), dtype=xp.int64)
    kth = xp.empty(n_q, dtype=xp.float64)
    started = xp.zeros(n_q, dtype=bool)
    m_of = xp.full(n_q, min(k + 2, n_ref, MAX_GRID_CANDIDATES), dtype=xp.int64)
    open_rows = xp.ones(n_q, dtype=bool)
    needed = start_count(k, d)
    m_cap = min(MAX_GRID_CANDIDATES, n_ref)
    requeried = 0

    def finish_brute(todo):
        """Rows ``todo`` (positions in the query list) by the tiled brute force."""
        if not todo.size:
            return
        brute = knn_xp(X_np, sid_np, k, query_rows=query_np[_to_numpy(todo)], xp=xp)
        indices[todo] = xp.asarray(brute.indices)
        kth[todo] = xp.asarray(brute.kth_distance)
        open_rows[todo] = False
        stats.brute_rows += int(todo.size)

    while bool(open_rows.any()):
        level = build_level(Xd, X32, origin, extent, h, xp=xp)
        # the sparse tail (< 1 % of the rows) climbs faster: each level is a sort of all stars
        h *= GRID_LEVEL_RATIO if int(open_rows.sum()) * 100 > n_q else TAIL_LEVEL_RATIO
        if level is None:  # too fine to key: no query can start here
            continue
        stats.levels += 1
        last_level = level.covers_everything
        started |= open_rows & ((level.count[query_d] >= needed) | last_level)
        here = xp.flatnonzero(open_rows & started)
        if not here.size:
            continue
        # cell-coherent order: neighbouring threads read the same cells
        rank = xp.empty(n_ref, dtype=xp.int64)
        rank[level.order] = xp.arange(n_ref)
        here = here[xp.argsort(rank[query_d[here]])]
        while here.size:
            failed_m = []
            failed_block = []
            for m in _to_numpy(xp.unique(m_of[here])).tolist():
                group = here[m_of[here] == m]
                rows_per = batch_rows or batch_rows_for(int(m))
                for b0 in range(0, int(group.size), rows_per):
                    part = group[b0:b0 + rows_per]
                    ok, m_limited = _search(level, Xd, X32, sid_d, query_d[part], int(m), k,
                                            origin, center, margin, xp, indices, kth, part,
                                            stats)
                    open_rows[part[ok]] = False
                    failed_m.append(part[~ok & m_limited])
                    failed_block.append(part[~ok & ~m_limited])
            failed_m = xp.concatenate(failed_m)
            failed_block = xp.concatenate(failed_block)
            requeried += int(failed_m.size + failed_block.size)
            m_of[failed_m] *= 2
            fits = m_of[failed_m] <= m_cap
            finish_brute(failed_m[~fits])
            if last_level:  # its block holds every star: a failure there is not the grid's
                finish_brute(failed_block)
            here = failed_m[fits]
        if int(open_rows.sum()) <= BRUTE_FINISH_ROWS:
            finish_brute(xp.flatnonzero(open_rows))
    return KnnResult(indices=_to_numpy(indices), kth_distance=_to_numpy(kth),
                     requeried=requeried)


def float32_error_bound(Xd, rows, center: np.ndarray, h: float, xp=np):
    """Bound on |d32 - d64| between each query and any star of its 3**d block.

    Both stars' features relative to ``center`` are at most ``|q - center|_inf + 2 h`` (the
    block spans two cells either side of the query), and each float32 rounding is relative;
    so :func:`ray_app.core.knn.float32_distance_error` applies with that local scale instead
    of the global largest feature.
    """
    local = xp.abs(Xd[rows] - xp.asarray(center)).max(axis=1) + 2.0 * h
    return float32_distance_error(local, Xd.shape[1])


def _search(level, Xd, X32, sid_d, rows, m, k, origin, center, margin, xp, indices, kth,
            out, stats) -> tuple[np.ndarray, np.ndarray]:
    """Candidates + exact re-rank for one batch of query rows at one level.

    ``rows`` are reference rows of the queries; accepted rows are written into ``indices`` /
    ``kth`` at positions ``out`` (all arrays of ``xp``). Returns (ok, m_limited): whether each
    row is final, and whether a failure is due to ``m`` (the block holds more stars than were
    kept) rather than to the block's size.
    """
    lo_gap, hi_gap, bound = query_gaps(Xd, rows, level, origin, margin, xp=xp)
    err = float32_error_bound(Xd, rows, center, level.h, xp=xp)
    # float32 gaps rounded down so the kernel's row pruning never skips a closer star
    lo32 = xp.maximum(lo_gap - err[:, None], 0.0).astype(xp.float32)
    hi32 = xp.maximum(hi_gap - err[:, None], 0.0).astype(xp.float32)
    lo32 = xp.where(lo32.astype(xp.float64) > lo_gap, xp.nextafter(lo32, xp.float32(0)), lo32)
    hi32 = xp.where(hi32.astype(xp.float64) > hi_gap, xp.nextafter(hi32, xp.float32(0)), hi32)
    cand, d2_m, scanned = grid_candidates(level, X32[rows], level.cell[rows], lo32, hi32, m,
                                          xp=xp)
    stats.scanned += int(scanned.sum())
    stats.searches += int(rows.size)
    kept_reach = xp.sqrt(d2_m.astype(xp.float64)) - 2 * err
    reach = xp.minimum(bound, kept_reach)
    if xp is np:  # the compiled twin of rerank (same formula, same order)
        sub_idx = np.empty((len(rows), k), dtype=np.int64)
        sub_kth = np.empty(len(rows))
        ok = np.zeros(len(rows), dtype=bool)
        _rerank_rows(Xd, sid_d, rows, cand, reach, k, sub_idx, sub_kth, ok)
    else:
        sub_idx, sub_kth, ok = rerank(Xd, sid_d, rows, cand, reach, k, xp=xp)
    indices[out[ok]] = sub_idx[ok]
    kth[out[ok]] = sub_kth[ok]
    return ok, kept_reach < bound
