"""kNN + density: both backends equal a brute-force reference and each other, bit for bit."""

import numpy as np
import pytest

from ray_app.core.knn import knn_cpu, knn_xp, log_density, validate_k
from tests.reference import brute_knn, brute_log_density


def _catalogue(rng, n, dup=0):
    X = rng.normal(size=(n, 5)) * np.array([3.0, 0.5, 1.0, 1.0, 0.3])
    for i in range(dup):  # exact duplicates, the hard case for tie-breaking
        X[2 * i + 1] = X[2 * i]
    X[dup * 2: dup * 2 + 4] = X[dup * 2]
    sid = rng.choice(2**40, size=n, replace=False).astype(np.int64)
    return X, sid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 4, 9])
def test_backends_match_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    X, sid = _catalogue(rng, 120, dup=seed % 3)
    ref_idx, ref_kth = brute_knn(X, sid, k)
    cpu = knn_cpu(X, sid, k)
    xp = knn_xp(X, sid, k, xp=np, tile_rows=17)
    assert np.array_equal(cpu.indices, ref_idx)
    assert np.array_equal(xp.indices, ref_idx)
    np.testing.assert_allclose(cpu.kth_distance, ref_kth, rtol=1e-12, atol=0)
    # the two backends agree exactly, not just closely
    assert np.array_equal(cpu.kth_distance, xp.kth_distance)


def test_query_subset_matches_full(rng):
    X, sid = _catalogue(rng, 300, dup=2)
    full = knn_cpu(X, sid, 8)
    rows = rng.choice(300, 50, replace=False)
    part = knn_cpu(X, sid, 8, query_rows=rows)
    part_xp = knn_xp(X, sid, 8, query_rows=rows, xp=np)
    assert np.array_equal(part.indices, full.indices[rows])
    assert np.array_equal(part_xp.indices, full.indices[rows])
    assert np.array_equal(part.kth_distance, full.kth_distance[rows])


def test_duplicate_stack_larger_than_k(rng):
    X, sid = _catalogue(rng, 60)
    X[:12] = X[0]  # 12 identical stars, k = 5: the k-th distance is 0
    cpu = knn_cpu(X, sid, 5)
    xp = knn_xp(X, sid, 5, xp=np)
    ref_idx, _ = brute_knn(X, sid, 5)
    assert np.array_equal(cpu.indices, ref_idx)
    assert np.array_equal(xp.indices, ref_idx)
    f = log_density(cpu.kth_distance, 5, 60, 5)
    assert np.all(np.isfinite(f))  # floored, never infinite


def test_log_density_formula(rng):
    kth = rng.uniform(0.1, 2.0, 50)
    np.testing.assert_allclose(log_density(kth, 7, 1000, 5), brute_log_density(kth, 7, 1000, 5),
                               rtol=1e-13)
    # N is the global count: doubling N lowers every log-density by log 2
    np.testing.assert_allclose(log_density(kth, 7, 2000, 5) - log_density(kth, 7, 1000, 5),
                               -np.log(2), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1025, 3.5, 32.0, "32", True, None])
def test_validate_k_rejects(bad):
    with pytest.raises(ValueError, match="nNeighbors"):
        validate_k(bad)


def test_validate_k_needs_enough_stars():
    with pytest.raises(ValueError, match="at least k\\+1=33"):
        validate_k(32, 20)
    assert validate_k(np.int64(16), 17) == 16


@pytest.mark.gpu
def test_cupy_backend_matches_numpy(rng):
    """One test body, both array modules: CuPy must equal the NumPy twin exactly."""
    from ray_app.core.backend import detect_backend

    backend = detect_backend("cupy")  # raises (fails) if the GPU is unusable
    X, sid = _catalogue(rng, 5000, dup=3)
    a = knn_xp(X, sid, 32, xp=np)
    b = knn_xp(X, sid, 32, xp=backend.xp)
    c = knn_cpu(X, sid, 32)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, c.indices)
    assert np.array_equal(a.kth_distance, b.kth_distance)
