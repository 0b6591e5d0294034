"""Persistence, pairs and members equal independent references (brute force and GUDHI)."""

import numpy as np
import pytest

from ray_app.core.knn import knn_cpu, knn_xp, log_density
from ray_app.core.members import core_members
from ray_app.core.persistence import knn_edges, merge_forests, persistence_from_edges
from ray_app.core.recovery import diagram
from tests.reference import brute_persistence


def _knn_graph(seed, n=90, k=5, backend="cpu"):
    rng = np.random.default_rng(seed)
    # a clumpy cloud: several blobs give a diagram with many pairs
    centres = rng.normal(size=(4, 5)) * 3
    X = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 5))
    sid = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    res = knn_cpu(X, sid, k) if backend == "cpu" else knn_xp(X, sid, k, xp=np)
    f = log_density(res.kth_distance, k, n, 5)
    return X, sid, f, res.indices


@pytest.mark.parametrize("backend", ["cpu", "xp"])
@pytest.mark.parametrize("seed", range(12))
def test_pairs_and_members_match_brute_force(seed, backend):
    _, sid, f, idx = _knn_graph(seed, backend=backend)
    src, dst = knn_edges(idx)
    p = persistence_from_edges(f, sid, src, dst)
    ref_pairs, ref_ess, ref_cores = brute_persistence(f, sid, list(zip(src, dst, strict=True)))
    assert sorted(zip(p.peak.tolist(), p.saddle.tolist(), strict=True)) == sorted(ref_pairs)
    assert p.essential.tolist() == ref_ess
    for peak, saddle in zip(p.peak, p.saddle, strict=True):
        core = core_members(p.rank, p.forest_src, p.forest_dst, int(peak), int(p.rank[saddle]))
        assert core.tolist() == ref_cores[(int(peak), int(saddle))]


def test_ties_resolved_by_source_id():
    # a path a - b - c with equal densities: the smaller source_id is the elder
    f = np.array([1.0, 0.0, 1.0])
    sid = np.array([30, 20, 10])
    p = persistence_from_edges(f, sid, np.array([0, 1]), np.array([1, 2]))
    assert p.essential.tolist() == [2]  # sid 10 wins the tie
    assert p.peak.tolist() == [0] and p.saddle.tolist() == [1]
    # the elder keeps its birth even when union-by-size would move the root
    f = np.array([5.0, 1.0, 4.0, 3.9, 3.8, 3.7])
    sid = np.arange(6)
    src, dst = np.array([0, 1, 2, 3, 4]), np.array([1, 2, 3, 4, 5])
    p = persistence_from_edges(f, sid, src, dst)
    assert p.essential.tolist() == [0]
    assert p.peak.tolist() == [2] and p.saddle.tolist() == [1]


@pytest.mark.parametrize("seed", range(8))
def test_diagram_matches_gudhi_tomato(seed):
    gudhi_tomato = pytest.importorskip("gudhi.clustering.tomato")
    _, sid, f, idx = _knn_graph(seed, n=400, k=8)
    p = diagram(f, sid, idx)
    ours = np.column_stack([f[p.peak], f[p.saddle]])
    n = len(f)
    adj = [set() for _ in range(n)]
    for i in range(n):
        for j in idx[i]:
            adj[i].add(int(j))
            adj[int(j)].add(i)
    t = gudhi_tomato.Tomato(graph_type="manual", density_type="manual")
    t.fit([sorted(a) for a in adj], weights=f)
    theirs = np.asarray(t.diagram_).reshape(-1, 2)
    assert len(p.essential) == t.n_leaves_ - len(theirs)
    # Mutual k-th neighbours have exactly equal densities. Where such a tie decides which star
    # is a peak, GUDHI (index order) and we (source_id order) may each report a zero-length
    # pair the other does not; zero-length pairs carry no information: compare the rest.
    ours = np.sort(ours[ours[:, 0] != ours[:, 1]], axis=0)
    theirs = np.sort(theirs[theirs[:, 0] != theirs[:, 1]], axis=0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_parts", range(1, 9))
def test_partitioned_forests_merge_exactly(n_parts):
    rng = np.random.default_rng(100 + n_parts)
    X = rng.normal(size=(2000, 5))
    X[:200] = X[:200] * 0.2  # a dense clump
    X[500:510] = X[500]  # duplicates
    sid = rng.choice(2**40, size=2000, replace=False).astype(np.int64)
    res = knn_cpu(X, sid, 10)
    f = log_density(res.kth_distance, 10, 2000, 5)
    whole = diagram(f, sid, res.indices)
    owner = rng.integers(0, n_parts, 2000)
    forests = []
    for part in range(n_parts):
        rows = np.flatnonzero(owner == part)
        src, dst = knn_edges(res.indices[rows], rows=rows)
        sub = persistence_from_edges(f, sid, src, dst)
        assert len(sub.forest_src) <= max(len(rows) * 10, 0)
        forests.append((sub.forest_src, sub.forest_dst))
    merged = merge_forests(f, sid, forests)
    assert np.array_equal(merged.peak, whole.peak)
    assert np.array_equal(merged.saddle, whole.saddle)
    assert np.array_equal(merged.essential, whole.essential)
    assert len(merged.forest_src) == len(whole.forest_src) <= 1999


def test_bad_edges_rejected():
    with pytest.raises(ValueError, match="vertex indices"):
        persistence_from_edges(np.zeros(3), np.arange(3), np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match="NaN"):
        persistence_from_edges(np.array([0.0, np.nan]), np.arange(2), np.array([0]),
                               np.array([1]))
