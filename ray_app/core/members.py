"""Candidate member lists derived from persistence pairs (DESIGN 2.8).

A candidate's members are its *death-level core*: the superlevel component containing its peak
just before it merges into an elder component, i.e. every star connected to the peak through
stars that all come earlier than the saddle in the total order. Because the order-minimal
spanning forest has the same superlevel connectivity as the kNN graph, the core is computed on
the forest (n-1 edges) rather than on all n*k kNN edges.

For the essential class (the peak of a whole connected component, which never dies) the
"death" used for membership and significance is its *key saddle*: the saddle where the field
dies into it, or else its first merge with a component whose peak the background alone can
reach (``recovery.essential_key_saddles``).
This makes a stream that holds the global density maximum (common: a stream is the densest
thing in its field) a candidate like any other.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def core_members(rank: np.ndarray, forest_src: np.ndarray, forest_dst: np.ndarray,
                 peak: int, saddle_rank: int) -> np.ndarray:
    """Vertex indices of the superlevel component of ``peak`` at levels above ``saddle_rank``.

    Parameters
    ----------
    rank : (n,) int64
        Total-order position of each vertex (0 = densest).
    forest_src, forest_dst : int arrays
        Order-minimal spanning forest edges.
    peak : int
        The candidate's peak vertex.
    saddle_rank : int
        Rank of the saddle; only vertices with ``rank < saddle_rank`` belong to the core.

    Returns
    -------
    ndarray of int64, sorted ascending; always contains ``peak``.
    """
    n = len(rank)
    if not 0 <= peak < n:
        raise ValueError(f"peak must be a vertex index in [0, {n}), got {peak}")
    if rank[peak] >= saddle_rank:
        raise ValueError("the peak must come before its saddle in the total order")
    keep = (rank[forest_src] < saddle_rank) & (rank[forest_dst] < saddle_rank)
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8),
                        (forest_src[keep], forest_dst[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    inside = rank < saddle_rank
    return np.flatnonzero(inside & (labels == labels[peak])).astype(np.int64)

