"""0-dimensional superlevel-set persistence of a vertex function on a graph (DESIGN 2.5-2.6).

Vertices enter in the *total order* (log-density descending, source_id ascending); an edge
enters with its later endpoint. Components are tracked by union-find; each component remembers
its peak (its earliest vertex). When a vertex joins two components, the one with the younger
peak dies there (elder rule): that gives a pair (birth = f(peak), death = f(saddle)). The
peak is stored apart from the union-find root, so union by size never moves a birth.

The same sweep, keeping the edges that join two different components, is Kruskal's algorithm
for a spanning forest that is *minimal for the entry order*: for every threshold it connects
exactly what the full graph connects. So a shard can replace its edges by that forest
(at most n-1 edges) and the union of shard forests has the same persistence as the whole graph
(:func:`merge_forests`). Everything here is pure NumPy + numba.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass
class Persistence:
    """H0 persistence of a vertex-filtered graph.

    Attributes
    ----------
    peak, saddle : ndarray of int64
        Vertex indices of each finite pair's peak (birth) and saddle (death), ordered by
        persistence descending, then peak order.
    essential : ndarray of int64
        Peak vertices of the classes that never die (one per connected component), in order.
    forest_src, forest_dst : ndarray of int64
        Edges of the order-minimal spanning forest, in the order they entered.
    rank : ndarray of int64
        Position of each vertex in the total order (0 = highest density).
    elder_peak : ndarray of int64
        Per pair: the peak of the component it merged into.
    younger_size, elder_size : ndarray of int64
        Per pair: star counts of the dying and the surviving component at the merge.
    """

    peak: np.ndarray
    saddle: np.ndarray
    essential: np.ndarray
    forest_src: np.ndarray
    forest_dst: np.ndarray
    rank: np.ndarray
    elder_peak: np.ndarray
    younger_size: np.ndarray
    elder_size: np.ndarray


def vertex_rank(log_density: np.ndarray, source_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and rank of vertices in the total order (log-density desc, source_id asc).

    Raises
    ------
    ValueError
        If any density is NaN (the order would be undefined). Unique source_ids are the
        caller's contract (checked when the catalogue is cleaned).
    """
    f = np.asarray(log_density, dtype=np.float64)
    sid = np.asarray(source_id, dtype=np.int64)
    if np.isnan(f).any():
        raise ValueError("log_density contains NaN; drop stars with NaN features first")
    order = np.lexsort((sid, -f))
    rank = np.empty(len(f), dtype=np.int64)
    rank[order] = np.arange(len(f))
    return order, rank


@numba.njit(cache=True, nogil=True)
def _bucket_by_later_endpoint(rank, src, dst):
    """CSR adjacency: for each vertex, the earlier endpoints of the edges it closes."""
    n = rank.shape[0]
    ptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(src.shape[0]):
        a, b = src[e], dst[e]
        if a == b:
            continue
        later = a if rank[a] > rank[b] else b
        ptr[later + 1] += 1
    for v in range(n):
        ptr[v + 1] += ptr[v]
    fill = ptr[:-1].copy()
    nbr = np.empty(ptr[n], dtype=np.int64)
    for e in range(src.shape[0]):
        a, b = src[e], dst[e]
        if a == b:
            continue
        if rank[a] > rank[b]:
            nbr[fill[a]] = b
            fill[a] += 1
        else:
            nbr[fill[b]] = a
            fill[b] += 1
    return ptr, nbr


@numba.njit(cache=True, nogil=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@numba.njit(cache=True, nogil=True)
def _sweep(order, rank, ptr, nbr):
    """Elder-rule union-find over vertices in order; returns pairs, roots and forest edges."""
    n = order.shape[0]
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    peak = np.arange(n)
    pair_peak = np.empty(n, dtype=np.int64)
    pair_saddle = np.empty(n, dtype=np.int64)
    pair_elder = np.empty(n, dtype=np.int64)
    pair_ysize = np.empty(n, dtype=np.int64)
    pair_esize = np.empty(n, dtype=np.int64)
    n_pairs = 0
    f_src = np.empty(max(n - 1, 0), dtype=np.int64)
    f_dst = np.empty(max(n - 1, 0), dtype=np.int64)
    n_forest = 0
    for t in range(n):
        v = order[t]
        for p in range(ptr[v], ptr[v + 1]):
            u = nbr[p]
            ru = _find(parent, u)
            rv = _find(parent, v)
            if ru == rv:
                continue
            f_src[n_forest] = u
            f_dst[n_forest] = v
            n_forest += 1
            pu = peak[ru]
            pv = peak[rv]
            elder = pu if rank[pu] < rank[pv] else pv
            younger = pv if elder == pu else pu
            if younger != v:  # v's own singleton dying on arrival is not a pair
                pair_peak[n_pairs] = younger
                pair_saddle[n_pairs] = v
                pair_elder[n_pairs] = elder
                pair_ysize[n_pairs] = size[ru] if elder == pv else size[rv]
                pair_esize[n_pairs] = size[rv] if elder == pv else size[ru]
                n_pairs += 1
            if size[ru] < size[rv]:
                ru, rv = rv, ru
            parent[rv] = ru
            size[ru] += size[rv]
            peak[ru] = elder
    n_roots = 0
    for t in range(n):
        v = order[t]
        if _find(parent, v) == v:
            n_roots += 1
    roots = np.empty(n_roots, dtype=np.int64)
    i = 0
    for t in range(n):
        v = order[t]
        if parent[v] == v:
            roots[i] = peak[v]
            i += 1
    return (pair_peak[:n_pairs], pair_saddle[:n_pairs], roots, f_src[:n_forest],
            f_dst[:n_forest], pair_elder[:n_pairs], pair_ysize[:n_pairs], pair_esize[:n_pairs])


def persistence_from_edges(log_density, source_id, src, dst) -> Persistence:
    """H0 superlevel persistence of the graph (vertices, edges src[i]-dst[i]).

    Parameters
    ----------
    log_density : (n,) float64
        Vertex function; no NaN.
    source_id : (n,) int64
        Unique ids, the tie-breaker of the total order.
    src, dst : (m,) int arrays
        Undirected edges as vertex indices; duplicates and self-loops are harmless.
    """
    f = np.asarray(log_density, dtype=np.float64)
    order, rank = vertex_rank(f, source_id)
    src = np.ascontiguousarray(src, dtype=np.int64)
    dst = np.ascontiguousarray(dst, dtype=np.int64)
    if len(src) != len(dst):
        raise ValueError(f"src and dst must have equal length, got {len(src)} and {len(dst)}")
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= len(f)):
        raise ValueError(f"edge endpoints must be vertex indices in [0, {len(f)})")
    ptr, nbr = _bucket_by_later_endpoint(rank, src, dst)
    peak, saddle, roots, fs, fd, elder, ysize, esize = _sweep(order, rank, ptr, nbr)
    pers = f[peak] - f[saddle]
    sort = np.lexsort((rank[peak], -pers))
    roots = roots[np.argsort(rank[roots])]
    return Persistence(peak=peak[sort], saddle=saddle[sort], essential=roots,
                       forest_src=fs, forest_dst=fd, rank=rank, elder_peak=elder[sort],
                       younger_size=ysize[sort], elder_size=esize[sort])


def knn_edges(indices: np.ndarray, rows: np.ndarray | None = None):
    """Directed kNN edges (row -> neighbour) as flat (src, dst) arrays.

    The symmetrized graph of DESIGN 2.5 is the undirected reading of these edges: u-v exists
    when either lists the other, which is exactly what the sweep sees.
    """
    n, k = indices.shape
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    return np.repeat(rows, k), indices.reshape(-1)


def spanning_forest(log_density, source_id, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a graph to its order-minimal spanning forest (at most n-1 edges).

    The forest has the same superlevel connectivity as the graph at every threshold, so its
    persistence equals the graph's. Edges are returned as vertex indices.
    """
    p = persistence_from_edges(log_density, source_id, src, dst)
    return p.forest_src, p.forest_dst


def merge_forests(log_density, source_id, forests) -> Persistence:
    """Exact global persistence from per-partition forests (Kruskal over their union).

    Parameters
    ----------
    forests : iterable of (src, dst)
        Each partition's spanning forest in *global* vertex indices.
    """
    parts = list(forests)
    src = np.concatenate([np.asarray(s, np.int64) for s, _ in parts]) if parts else np.empty(0)
    dst = np.concatenate([np.asarray(d, np.int64) for _, d in parts]) if parts else np.empty(0)
    return persistence_from_edges(log_density, source_id, src, dst)
