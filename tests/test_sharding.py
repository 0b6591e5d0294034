"""Sharded runs equal the single-shard run exactly, whatever the shard count or failures."""

import numpy as np
import pytest

from ray_app.core.backend import Backend, detect_backend
from ray_app.core.errors import ConfigurationError
from ray_app.core.features import stream_features
from ray_app.core.grid_knn import batch_rows_for
from ray_app.core.persistence import merge_forests
from ray_app.core.recovery import calibrate_null, candidates, density, diagram
from ray_app.core.sharding import check_k_servable, choose_shard_count, plan_shards
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import synthetic_catalogue
from ray_app.engine.engines import InProcessEngine
from ray_app.engine.orchestrate import (
    InProcessExecutor,
    MissingShardState,
    sharded_density_and_forests,
)

CPU = detect_backend("cpu")
#: the GPU actors' code path (cell-grid kNN) run by its NumPy twin
GRID = Backend("cpu", "grid", "the cell-grid kNN's NumPy twin")


def _outputs(X, sid, k, sharded):
    """Diagram, essential classes, candidates and members from a sharded run."""
    pers = merge_forests(sharded.log_density, sid, sharded.forests)
    null = calibrate_null(X, sid, k, seed=3, rounds=2)
    c = candidates(pers, sharded.log_density, 4.0, null)
    return {"f": sharded.log_density, "peak": pers.peak, "saddle": pers.saddle,
            "essential": pers.essential,
            "cands": [(x.peak, x.saddle, x.significance, tuple(x.members)) for x in c.candidates]}


def _reference(X, sid, k):
    d = density(X, sid, k)
    p = diagram(d.log_density, sid, d.indices)
    null = calibrate_null(X, sid, k, seed=3, rounds=2)
    c = candidates(p, d.log_density, 4.0, null)
    return {"f": d.log_density, "peak": p.peak, "saddle": p.saddle, "essential": p.essential,
            "cands": [(x.peak, x.saddle, x.significance, tuple(x.members)) for x in c.candidates]}


def _assert_same(a, b):
    assert np.array_equal(a["f"], b["f"])
    for name in ("peak", "saddle", "essential"):
        assert np.array_equal(a[name], b[name]), name
    assert a["cands"] == b["cands"]


@pytest.fixture(scope="module")
def synthetic():
    cols = synthetic_catalogue("gd-1", n_background=6000, n_stream=300, seed=11)
    _, X = stream_features(get_stream("gd-1").frame, cols["ra"], cols["dec"], cols["pmra"],
                           cols["pmdec"], cols["parallax"])
    # stars exactly on shard cuts and duplicated coordinates
    X[100:140, 0] = np.quantile(X[:, 0], 0.5)
    X[200:210] = X[200]
    X[300:302] = X[301]
    return X, cols["source_id"]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_shard_counts_give_identical_results(synthetic, n_shards, axis):
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    sharded = sharded_density_and_forests(X, sid, 16, InProcessExecutor(CPU), n_shards,
                                          axis=axis)
    assert sharded.shards >= min(n_shards, 2) or n_shards == 1
    _assert_same(_outputs(X, sid, 16, sharded), ref)


@pytest.mark.parametrize("n_shards", [1, 3, 8])
def test_grid_knn_shards_give_identical_results(synthetic, n_shards):
    """The GPU path's kNN (its NumPy twin here) in every shard: the same outputs as the
    single-shard cKDTree run."""
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    sharded = sharded_density_and_forests(X, sid, 16, InProcessExecutor(GRID), n_shards)
    assert sharded.backend["knn"] == "grid"
    _assert_same(_outputs(X, sid, 16, sharded), ref)


@pytest.mark.parametrize("n_shards", [2, 3, 5, 8])
def test_real_gd1_field_sharded(gd1_field, n_shards):
    t, _ = gd1_field
    _, X = stream_features(get_stream("gd-1").frame, t["ra"].to_numpy(), t["dec"].to_numpy(),
                           t["pmra"].to_numpy(), t["pmdec"].to_numpy(),
                           t["parallax"].to_numpy())
    sid = t["source_id"].to_numpy()
    ref = _reference(X, sid, 32)
    assert ref["cands"], "GD-1 should be a candidate at sigma 4"
    backend = GRID if n_shards == 3 else CPU
    sharded = sharded_density_and_forests(X, sid, 32, InProcessExecutor(backend), n_shards)
    _assert_same(_outputs(X, sid, 32, sharded), ref)


def test_too_narrow_halo_is_fixed_not_ignored(synthetic):
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    sharded = sharded_density_and_forests(X, sid, 16, InProcessExecutor(CPU), 5, halo=0.05)
    assert sharded.halo_fixups > len(X) // 4  # most stars needed the fix-up shard
    _assert_same(_outputs(X, sid, 16, sharded), ref)


def test_shards_smaller_than_k():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 5))
    sid = rng.choice(10**12, 120, replace=False).astype(np.int64)
    shards = plan_shards(X, 8, halo=0.01, min_reference=33)
    assert min(len(s.owned) for s in shards) < 32
    assert all(len(s.ref) >= 33 for s in shards)
    d = density(X, sid, 32)
    whole = diagram(d.log_density, sid, d.indices)
    sharded = sharded_density_and_forests(X, sid, 32, InProcessExecutor(CPU), 8)
    merged = merge_forests(sharded.log_density, sid, sharded.forests)
    assert np.array_equal(sharded.log_density, d.log_density)
    assert np.array_equal(merged.peak, whole.peak) and np.array_equal(merged.saddle,
                                                                       whole.saddle)
    assert np.array_equal(merged.essential, whole.essential)
    # too small to calibrate a significance: a clear error, not a made-up sigma
    with pytest.raises(ValueError, match="at least 8 noise peaks"):
        calibrate_null(X, sid, 32)


class _ForgetfulExecutor(InProcessExecutor):
    """Loses every shard's state once between the phases (an actor restart)."""

    forgot = False

    def forest(self, ctx, log_density, calls):
        if not self.forgot:
            self.forgot = True
            self.worker._pending.clear()
        return super().forest(ctx, log_density, calls)


def test_lost_shard_state_is_recomputed(synthetic):
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    sharded = sharded_density_and_forests(X, sid, 16, _ForgetfulExecutor(CPU), 4)
    assert sharded.forest_retries >= 4
    _assert_same(_outputs(X, sid, 16, sharded), ref)
    assert isinstance(InProcessExecutor(CPU).forest(None, None, [("nope", None)])[0],
                      MissingShardState)


def test_job_larger_than_actor_memory_is_split(synthetic):
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    engine = InProcessEngine(prefer_backend="cpu", memory_per_actor=2 * 2**20)  # 2 MiB
    assert choose_shard_count(len(X), 16, 2 * 2**20) > 1
    sharded = engine.density_and_forests(X, sid, 16)
    assert sharded.shards > 1
    _assert_same(_outputs(X, sid, 16, sharded), ref)


def test_gpu_memory_raises_the_shard_count():
    """A shard must fit the GPU's free memory as well as the host budget."""
    from ray_app.core.grid_knn import grid_device_bytes

    n, k, host = 200_000_000, 32, 2**50  # host memory no limit: only the GPU decides
    assert choose_shard_count(n, k, host) == 1
    t4 = 15 * 2**30
    on_t4 = choose_shard_count(n, k, host, device_memory=t4)
    on_h100 = choose_shard_count(n, k, host, device_memory=78 * 2**30)
    assert on_t4 > on_h100 >= 1
    # each planned shard (with its ~25 % halo) fits what the device has
    assert grid_device_bytes(1.25 * n / on_t4, k) <= 0.8 * t4
    assert choose_shard_count(n, k, host, requested=40, device_memory=t4) == max(40, on_t4)
    with pytest.raises(ConfigurationError, match="device memory 1000000 bytes is too small"):
        choose_shard_count(1000, k, host, device_memory=10**6)


@pytest.mark.parametrize("k", [32, 254, 255, 700, 1024])
def test_large_k_plans_fit_a_t4(k):
    """Candidate lists are capped (MAX_GRID_CANDIDATES) and batches sized from the memory
    budget, so the fixed device buffers stay bounded whatever k, and any k up to 1024 has a
    plan on a T4 (it raised at k ~ 700 when batches were a fixed row count)."""
    from ray_app.core.grid_knn import BATCH_BYTES, MAX_GRID_CANDIDATES, grid_device_bytes

    t4 = 15 * 2**30
    fixed = grid_device_bytes(0, k)
    assert fixed <= BATCH_BYTES + 256 * 2**20
    m = min(k + 2, MAX_GRID_CANDIDATES)
    assert batch_rows_for(m) * m * 64 <= BATCH_BYTES
    n_shards = choose_shard_count(10_000_000, k, 4 * 2**30, device_memory=t4)
    assert grid_device_bytes(1.25 * 10_000_000 / n_shards, k) <= 0.8 * t4
    check_k_servable(k, 4 * 2**30, t4)  # no error


def test_a_k_the_cluster_cannot_serve_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"nNeighbors=1024 cannot be served here: one shard "
                                         r"needs about \d+ MiB of host memory"):
        check_k_servable(1024, 16 * 2**20)
    check_k_servable(8, 16 * 2**20)
    with pytest.raises(ValueError, match="nNeighbors=32 cannot be served here: the GPU kNN"):
        check_k_servable(32, 2**30, device_memory=2**29)


def test_grid_knn_at_k_beyond_the_candidate_cap_is_exact(rng):
    """k + 2 > MAX_GRID_CANDIDATES: no candidate list fits a thread; the tiled brute force
    answers, exactly (the list once started at k + 2 = 1026 per thread)."""
    from ray_app.core import grid_knn
    from ray_app.core.knn import knn_cpu

    X = rng.normal(size=(1500, 5))
    sid = np.arange(1500, dtype=np.int64)
    stats = grid_knn.GridStats()
    got = grid_knn.knn_grid(X, sid, 300, stats=stats)
    want = knn_cpu(X, sid, 300)
    assert stats.brute_rows == 1500 and stats.levels == 0
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.kth_distance, want.kth_distance)


def test_memory_plan_is_reported(synthetic):
    X, sid = synthetic
    sharded = InProcessEngine(prefer_backend="cpu").density_and_forests(X, sid, 16)
    plan = sharded.memory_plan
    assert plan["device_bytes_per_actor"] is None and plan["device_memory_source"] == "none (cpu)"
    assert plan["host_bytes_per_actor"] > 0


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", True])
def test_bad_shard_count(bad):
    with pytest.raises(ValueError, match="shards"):
        choose_shard_count(1000, 8, 2**30, bad)


def test_cpu_grid_knn_is_selectable(synthetic, monkeypatch):
    """RAY_APP_CPU_KNN=grid runs the cell grid's twin on CPU actors: same outputs."""
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    monkeypatch.setenv("RAY_APP_CPU_KNN", "grid")
    sharded = InProcessEngine(prefer_backend="cpu").density_and_forests(X, sid, 16, shards=2)
    assert sharded.backend["knn"] == "grid"
    _assert_same(_outputs(X, sid, 16, sharded), ref)
    monkeypatch.setenv("RAY_APP_CPU_KNN", "kdtree")
    with pytest.raises(ConfigurationError,
                       match="RAY_APP_CPU_KNN.*'cpu' or 'grid', got 'kdtree'"):
        InProcessEngine(prefer_backend="cpu")


@pytest.mark.gpu
def test_gpu_engine_plans_shards_with_the_device_memory(synthetic):
    """On a GPU: the cell-grid kernel in every shard, the plan from cudaMemGetInfo."""
    X, sid = synthetic
    ref = _reference(X, sid, 16)
    sharded = InProcessEngine(prefer_backend="cupy").density_and_forests(X, sid, 16, shards=3)
    assert sharded.backend["name"] == "cupy" and sharded.backend["knn"] == "grid"
    assert sharded.memory_plan["device_memory_source"] == "this process"
    assert sharded.memory_plan["device_bytes_per_actor"] > 2**30
    _assert_same(_outputs(X, sid, 16, sharded), ref)
