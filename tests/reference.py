"""Independent brute-force references used by the tests (small N only).

Written from the definitions, sharing no code with ray_app: full distance matrices for kNN, and
for persistence a from-scratch recomputation of the connected components (BFS) of every
superlevel set, one vertex at a time.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def brute_knn(X, sid, k):
    """Neighbours ordered by (distance, source_id), self excluded; k-th distances."""
    n = len(X)
    diff = X[:, None, :] - X[None, :, :]
    d = np.sqrt((diff**2).sum(-1))
    idx = np.empty((n, k), dtype=np.int64)
    kth = np.empty(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        others.sort(key=lambda j: (d[i, j], sid[j]))
        idx[i] = others[:k]
        kth[i] = d[i, others[k - 1]]
    return idx, kth


def brute_log_density(kth, k, n, dim):
    log_vd = dim / 2 * math.log(math.pi) - math.lgamma(dim / 2 + 1)
    return math.log(k) - math.log(n) - log_vd - dim * np.log(kth)


def _components(active, adj):
    label = {}
    comps = []
    for s in active:
        if s in label:
            continue
        comp = []
        q = deque([s])
        label[s] = len(comps)
        while q:
            u = q.popleft()
            comp.append(u)
            for w in adj[u]:
                if w in active and w not in label:
                    label[w] = len(comps)
                    q.append(w)
        comps.append(comp)
    return comps, label


def brute_persistence(f, sid, edges):
    """Pairs (peak, saddle), essential peaks and death-level cores, from the definitions.

    Vertices enter in (f desc, sid asc) order. After each entry, the components of the induced
    subgraph are recomputed from scratch; a component's peak is its earliest vertex. When the
    new vertex joins several old components, all but the one with the earliest peak die.
    """
    n = len(f)
    order = sorted(range(n), key=lambda v: (-f[v], sid[v]))
    pos = {v: i for i, v in enumerate(order)}
    adj = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    active: set[int] = set()
    pairs = []
    cores = {}
    for v in order:
        before, label = _components(active, adj)
        touching = sorted({label[u] for u in adj[v] if u in active})
        peaks = [min(before[c], key=lambda u: pos[u]) for c in touching]
        if len(peaks) > 1:
            elder = min(peaks, key=lambda u: pos[u])
            for c, p in zip(touching, peaks, strict=True):
                if p != elder:
                    pairs.append((p, v))
                    cores[(p, v)] = sorted(before[c])
        active.add(v)
    final, _ = _components(active, adj)
    essential = sorted((min(c, key=lambda u: pos[u]) for c in final), key=lambda u: pos[u])
    return pairs, essential, cores
