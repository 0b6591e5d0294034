"""The cell-grid kNN (the GPU path) equals the brute-force reference and cKDTree, bit for bit.

The NumPy twin of the CUDA kernel runs here, and so does the kernel's own CUDA source,
compiled for the host with g++ (tests/kernel_host.py) and compared call by call with the twin.
On a GPU the kernel runs in the ``gpu`` test at the end (one test body, both array modules);
where CuPy is installed it is also compiled with NVRTC for the T4 and the H100.
"""

import numpy as np
import pytest

from ray_app.core import grid_knn
from ray_app.core.grid_knn import GridStats, build_level, knn_grid, start_count
from ray_app.core.knn import knn_cpu
from ray_app.core.recovery import density
from tests.reference import brute_knn


def _sky(rng, n, d=5, dup=0):
    """Anisotropic field + a dense clump + far outliers + duplicated stars."""
    X = rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, d)
    clump = slice(n // 10, n // 5)
    X[clump] = X[n // 10] + rng.normal(size=(n // 5 - n // 10, d)) * 1e-3
    X[-3:] = X[-3:] * 200.0  # isolated stars: many levels up before k neighbours
    for i in range(dup):
        X[2 * i + 1] = X[2 * i]
    sid = rng.choice(2**40, size=n, replace=False).astype(np.int64)
    return X, sid


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 12])
def test_grid_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    X, sid = _sky(rng, 150, dup=3)
    ref_idx, ref_kth = brute_knn(X, sid, k)
    res = knn_grid(X, sid, k)
    assert np.array_equal(res.indices, ref_idx)
    np.testing.assert_allclose(res.kth_distance, ref_kth, rtol=1e-12, atol=0)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("k", [1, 32])
def test_grid_equals_cpu_backend(rng, d, k):
    X, sid = _sky(rng, 4000, d=d, dup=5)
    stats = GridStats()
    cpu = knn_cpu(X, sid, k)
    grid = knn_grid(X, sid, k, stats=stats, batch_rows=997)
    assert np.array_equal(grid.indices, cpu.indices)
    assert np.array_equal(grid.kth_distance, cpu.kth_distance)
    # a grid search, not a hidden brute force: far fewer distances than N^2 (in 7-D a
    # 3**7 block of 4000 stars is most of them: the grid pays off at larger N there)
    assert stats.brute_rows <= 64
    if d <= 5:
        assert stats.scanned < 0.25 * len(X) ** 2


def test_stars_on_cell_faces(rng):
    """A lattice with the finest cell equal to its spacing: every star on a face, many ties."""
    g = np.arange(7, dtype=np.float64)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    X = np.concatenate([X, X[:40]])  # and duplicated lattice points
    sid = rng.choice(2**40, size=len(X), replace=False).astype(np.int64)
    for k in (1, 6, 26):
        ref_idx, _ = brute_knn(X, sid, k)
        res = knn_grid(X, sid, k, finest_cell=1.0)
        assert np.array_equal(res.indices, ref_idx), k


def test_duplicate_stack_beyond_the_kernel_list(rng):
    """More identical stars than MAX_GRID_CANDIDATES: m doubles, then the brute force ends it."""
    X, sid = _sky(rng, 1200)
    X[:grid_knn.MAX_GRID_CANDIDATES + 40] = X[0]
    stats = GridStats()
    res = knn_grid(X, sid, 8, stats=stats)
    cpu = knn_cpu(X, sid, 8)
    assert np.array_equal(res.indices, cpu.indices)
    assert stats.brute_rows >= grid_knn.MAX_GRID_CANDIDATES
    assert res.requeried > 0


def test_query_subset_and_small_inputs(rng):
    X, sid = _sky(rng, 600)
    rows = rng.choice(600, 77, replace=False)
    full = knn_cpu(X, sid, 9)
    part = knn_grid(X, sid, 9, query_rows=rows)
    assert np.array_equal(part.indices, full.indices[rows])
    # exactly k + 1 stars; all stars identical; more features than the grid handles
    for Xs in (X[:10], np.repeat(X[:1], 10, axis=0), rng.normal(size=(40, 9))):
        s = sid[: len(Xs)]
        assert np.array_equal(knn_grid(Xs, s, 9 if len(Xs) == 10 else 4).indices,
                              knn_cpu(Xs, s, 9 if len(Xs) == 10 else 4).indices)


def test_density_backends_agree(rng):
    X, sid = _sky(rng, 3000)
    a = density(X, sid, 16, backend="cpu")
    b = density(X, sid, 16, backend="grid")
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.log_density, b.log_density)
    with pytest.raises(ValueError, match="'cpu', 'grid' or 'xp'"):
        density(X, sid, 16, backend="kdtree")
    with pytest.raises(ValueError, match="finest_cell must be > 0"):
        knn_grid(X, sid, 4, finest_cell=0.0)


def test_levels_sort_stars_by_cell(rng):
    X, _ = _sky(rng, 500, d=3)
    origin = X.min(axis=0)
    extent = X.max(axis=0) - origin
    level = build_level(X, X.astype(np.float32), origin, extent, 0.7)
    cell = np.floor((X - origin) / 0.7).astype(np.int64)
    keys = (cell * level.stride).sum(axis=1)
    assert np.all(np.diff(keys[level.order]) >= 0)
    assert np.array_equal(level.cell, cell)
    # each star's own-cell count, and every cell is one contiguous range
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    assert np.array_equal(level.count, counts[inverse])
    assert np.array_equal(np.diff(level.cstart), counts)
    assert start_count(32, 5) == 10 and start_count(1, 1) == 2
    # keys that would not fit an int64 make the level unbuildable, not wrong
    assert build_level(X, X.astype(np.float32), origin, extent * 1e30, 1e-30) is None


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    from tests.kernel_host import HostKernel, have_compiler

    if not have_compiler():
        pytest.skip("g++ not found: cannot run the CUDA source on the host")
    return HostKernel(tmp_path_factory.mktemp("grid_kernel"))


@pytest.mark.parametrize("d,k", [(5, 32), (3, 4), (1, 2), (5, 1)])
def test_cuda_source_equals_its_twin_and_is_exact(rng, monkeypatch, host_kernel, d, k):
    """The kernel's own CUDA text (compiled for the host, see tests/kernel_host.py) returns
    the twin's candidates bit for bit on every call of a whole search, and the search run on
    it is exact."""
    twin = grid_knn._grid_candidates_cpu
    compared = []

    def both(xs, order, ukeys, cstart, q, qcell, lo, hi, ncell, stride, m, idx, d2, scanned):
        twin(xs, order, ukeys, cstart, q, qcell, lo, hi, ncell, stride, m, idx, d2, scanned)
        idx_k, d2_k, sc_k = np.empty_like(idx), np.empty_like(d2), np.empty_like(scanned)
        host_kernel(xs, order, ukeys, cstart, q, qcell, lo, hi, ncell, stride, m, idx_k, d2_k,
                    sc_k)
        assert np.array_equal(idx_k, idx) and np.array_equal(d2_k, d2)
        assert np.array_equal(sc_k, scanned)
        compared.append(len(q))

    monkeypatch.setattr(grid_knn, "_grid_candidates_cpu", both)
    X, sid = _sky(rng, 3000, d=d, dup=4)
    X[:40] = X[0]  # a stack: m doubles
    res = knn_grid(X, sid, k, batch_rows=1001)
    cpu = knn_cpu(X, sid, k)
    assert np.array_equal(res.indices, cpu.indices)
    assert np.array_equal(res.kth_distance, cpu.kth_distance)
    assert sum(compared) >= len(X)


def test_kernel_compiles_with_nvrtc():
    """The CUDA source compiles for the T4 (sm_75) and the H100 (sm_90) with the options of
    the real build, and without fused multiply-adds (the twins round a*b+c twice); needs
    CuPy's NVRTC (no GPU)."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    assert "--fmad=false" in grid_knn.NVRTC_OPTIONS
    for arch in ("compute_75", "compute_90"):
        for d, m in ((5, 34), (1, 2), (8, 256)):
            prog = nvrtc.createProgram(grid_knn.GRID_KERNEL_SOURCE, "grid.cu", [], [])
            try:
                nvrtc.compileProgram(prog, [f"-arch={arch}", *grid_knn.NVRTC_OPTIONS,
                                            f"-DGRID_D={d}", f"-DGRID_M={m}"])
            except Exception as exc:
                raise AssertionError(nvrtc.getProgramLog(prog)) from exc
            ptx = nvrtc.getPTX(prog)
            assert b"grid_candidates" in ptx
            assert b"fma.rn.f32" not in ptx, "a float32 multiply-add was fused"


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 32])
def test_cupy_kernel_matches_numpy_twin(rng, k):
    """One test body, both array modules: the CUDA kernel equals its NumPy twin exactly."""
    from ray_app.core.backend import detect_backend

    cp = detect_backend("cupy").xp
    X, sid = _sky(rng, 20000, dup=4)
    X[:300] = X[0]
    out = {}
    for name, xp in (("numpy", np), ("cupy", cp)):
        stats = GridStats()
        out[name] = (knn_grid(X, sid, k, xp=xp, stats=stats), stats)
    cpu = knn_cpu(X, sid, k)
    for res, _ in out.values():
        assert np.array_equal(res.indices, cpu.indices)
        assert np.array_equal(res.kth_distance, cpu.kth_distance)
    # the same loops do about the same work (float32 rounding may move a few prunings)
    a, b = out["numpy"][1].scanned, out["cupy"][1].scanned
    assert abs(a - b) <= 0.01 * a
