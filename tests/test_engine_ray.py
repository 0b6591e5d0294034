"""The Ray engine on a real multi-node cluster (ray.cluster_utils.Cluster, fake GPUs)."""

import threading
import time

import numpy as np
import pytest

from ray_app.core.backend import detect_backend
from ray_app.core.features import stream_features
from ray_app.core.persistence import merge_forests
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import synthetic_catalogue
from ray_app.engine.orchestrate import (
    DensityTask,
    InProcessExecutor,
    sharded_density_and_forests,
)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # as in cluster.yaml: a CPU head, GPU workers that advertise no CPU
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    workers = [c.add_node(num_cpus=0, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="ERROR")
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def catalogue():
    cols = synthetic_catalogue("gd-1", n_background=5000, n_stream=250, seed=21)
    _, X = stream_features(get_stream("gd-1").frame, cols["ra"], cols["dec"], cols["pmra"],
                           cols["pmdec"], cols["parallax"])
    return X, cols["source_id"]


def _diagram(X, sid, sharded):
    p = merge_forests(sharded.log_density, sid, sharded.forests)
    return sharded.log_density, p.peak, p.saddle, p.essential


def test_shards_run_on_gpu_workers_and_survive_an_actor_kill(cluster, catalogue):
    import ray

    from ray_app.engine.engines import RayEngine

    c, workers = cluster
    X, sid = catalogue
    reference = sharded_density_and_forests(X, sid, 16, InProcessExecutor(detect_backend("cpu")))
    engine = RayEngine(num_gpus_per_actor=1, max_actors=2, idle_release_s=600)
    killed = []

    def kill_one_actor_between_phases(done, total):
        if done == total and not killed:  # every density done, no forest started yet
            actor = ray.get_actor("density-actor-0", namespace="ray-app")
            ray.kill(actor, no_restart=False)  # it restarts empty-handed
            killed.append(True)

    sharded = engine.density_and_forests(X, sid, 16, shards=4,
                                         progress=kill_one_actor_between_phases)
    assert killed
    worker_ids = {w.node_id for w in workers}
    assert set(sharded.placement) <= worker_ids, "shards must run on the GPU worker nodes"
    assert c.head_node.node_id not in sharded.placement
    assert sharded.forest_retries >= 1  # the killed actor's shards were recomputed
    for a, b in zip(_diagram(X, sid, sharded), _diagram(X, sid, reference), strict=True):
        assert np.array_equal(a, b)
    engine.pool.shutdown()


def test_jobs_interleave_fairly_on_one_actor(cluster, catalogue):
    from ray_app.engine.pool import DensityPool

    X, sid = catalogue
    import ray

    X_ref, sid_ref = ray.put(X), ray.put(sid)
    pool = DensityPool(max_actors=1, num_gpus=1, idle_release_s=600)
    rows = np.arange(len(X))
    finished = []
    lock = threading.Lock()

    def submit(job, i):
        task = DensityTask(f"{job}-{i}", rows, rows, 16, len(X))
        fut = pool.submit(job, "density", (X_ref, sid_ref, task), task.key)
        fut.add_done_callback(lambda _f, name=f"{job}{i}": (lock.acquire(),
                                                             finished.append(name),
                                                             lock.release()))
        return fut

    big = [submit("A", i) for i in range(5)]
    small = [submit("B", i) for i in range(2)]
    for f in big + small:
        f.result(timeout=300)
    # round robin: the small job does not wait for the whole big job
    assert finished.index("B1") < finished.index("A4"), finished
    pool.shutdown()


def test_pool_grows_with_backlog_and_releases_idle_actors(cluster, catalogue):
    import ray

    from ray_app.engine.pool import DensityPool

    X, sid = catalogue
    X_ref, sid_ref = ray.put(X), ray.put(sid)
    pool = DensityPool(max_actors=2, num_gpus=1, idle_release_s=1.0, name_prefix="grow")
    rows = np.arange(len(X))
    futs = [pool.submit("J", "density", (X_ref, sid_ref, DensityTask(f"J-{i}", rows, rows, 8,
                                                                     len(X))), f"J-{i}")
            for i in range(4)]
    peak, asked = 0, []

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    cpu_tasks = [where.remote() for _ in range(6)]  # CPU-only work while GPU actors run
    while not all(f.done() for f in futs):
        peak = max(peak, pool.size())
        asked.append(_requested_bundles())
        time.sleep(0.05)
    assert peak == 2  # grew to the limit, not beyond
    assert [{"GPU": 1}, {"GPU": 1}] in asked  # asked the autoscaler for two GPU bundles
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU", 0) > 0}
    assert not set(ray.get(cpu_tasks)) & gpu_nodes, "CPU-only work landed on a GPU node"
    for i in range(4):  # release the shard states so the actors are idle
        pool.submit("J", "drop", (f"J-{i}",), f"J-{i}").result(timeout=60)
    deadline = time.time() + 30
    while pool.size() and time.time() < deadline:
        time.sleep(0.2)
    assert pool.size() == 0, "idle actors must be released (nodes can scale to zero)"
    # the pool, still alive, has replaced its demand by zero bundles (Ray issue 19785: a
    # request persists until replaced, and would keep the GPU nodes forever)
    assert _requested_bundles() == []
    pool.shutdown()


def _requested_bundles():
    """The standing ``request_resources`` demand, as the (v1) autoscaler reads it."""
    import json

    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return None if raw is None else json.loads(raw)


def test_gpu_actors_requested_on_a_cluster_that_starts_without_gpus(cluster, monkeypatch):
    """An autoscaling cluster has no GPU node at first: the engine must still ask for GPU
    actors (their pending demand is what scales it up) when told so."""
    from ray_app.engine.engines import RayEngine

    monkeypatch.setenv("RAY_APP_GPUS_PER_ACTOR", "1")
    monkeypatch.setenv("RAY_APP_MAX_ACTORS", "8")
    engine = RayEngine()
    assert engine.pool.num_gpus == 1.0 and engine.pool.max_actors == 8
    engine.pool.shutdown()


def test_removing_a_node_mid_job_gives_identical_outputs(cluster, catalogue):
    """A GPU node goes away between the density and forest phases (a spot reclaim): the
    shards its actor held are recomputed elsewhere and the diagram does not change."""
    import ray

    from ray_app.engine.engines import RayEngine

    c, workers = cluster
    X, sid = catalogue
    reference = sharded_density_and_forests(X, sid, 16, InProcessExecutor(detect_backend("cpu")))
    spare = c.add_node(num_cpus=0, num_gpus=1)  # where the lost actor can restart
    c.wait_for_nodes()
    engine = RayEngine(num_gpus_per_actor=1, max_actors=2, idle_release_s=600)
    removed = []

    def remove_a_node_between_phases(done, total):
        if done == total and not removed:
            actor = ray.get_actor("density-actor-0", namespace="ray-app")
            node_id = ray.get(actor.info.remote())["node_id"]
            node = next(n for n in [*workers, spare] if n.node_id == node_id)
            c.remove_node(node)
            removed.append(node)

    sharded = engine.density_and_forests(X, sid, 16, shards=4,
                                         progress=remove_a_node_between_phases)
    assert removed
    gone = removed[0].node_id
    assert sharded.forest_retries >= 1
    for a, b in zip(_diagram(X, sid, sharded), _diagram(X, sid, reference), strict=True):
        assert np.array_equal(a, b)
    engine.pool.shutdown()
    # give the module's cluster back its two GPU workers
    if gone != spare.node_id:
        workers[:] = [w for w in workers if w.node_id != gone] + [spare]


def test_null_calibration_on_the_actors_equals_the_in_process_one(cluster, catalogue):
    """The null copies' kNN runs on the pool's (GPU-node) actors, all copies at once; the
    null model is the one the driver's process would have computed, bit for bit."""
    from ray_app.core.recovery import calibrate_null
    from ray_app.engine.engines import InProcessEngine, RayEngine

    X, sid = catalogue
    cell = (2.0, 2.0)
    reference = calibrate_null(X, sid, 16, seed=5, max_stars=3000, rounds=6, shuffle_cell=cell)
    engine = RayEngine(num_gpus_per_actor=1, max_actors=2, idle_release_s=600)
    assert engine.null_on_pool  # GPU actors: the copies go to them
    try:
        models = [calibrate_null(X, sid, 16, seed=5, max_stars=3000, rounds=6,
                                 shuffle_cell=cell, diagrams_of=e.null_diagrams)
                  for e in (engine, InProcessEngine("cpu"))]
        actors = engine.pool.size()  # the copies were measured by actors
    finally:
        engine.close()
    for null in models:
        assert null.threshold == reference.threshold and null.scale == reference.scale
        np.testing.assert_array_equal(null.sorted_null, reference.sorted_null)
        np.testing.assert_array_equal(null.essential_null, reference.essential_null)
        assert null.background_ceiling == reference.background_ceiling
    assert actors >= 1


def test_null_on_pool_defaults_to_gpu_actors_only(cluster, monkeypatch):
    from ray_app.core.errors import ConfigurationError
    from ray_app.engine.engines import RayEngine

    cpu = RayEngine(num_gpus_per_actor=0, max_actors=1)
    assert not cpu.null_on_pool  # CPU actors: the driver's cKDTree (all cores) is faster
    cpu.pool.shutdown()
    monkeypatch.setenv("RAY_APP_NULL_ON_POOL", "1")
    forced = RayEngine(num_gpus_per_actor=0, max_actors=1)
    assert forced.null_on_pool
    forced.pool.shutdown()
    monkeypatch.setenv("RAY_APP_NULL_ON_POOL", "maybe")
    with pytest.raises(ConfigurationError, match="RAY_APP_NULL_ON_POOL"):
        RayEngine(num_gpus_per_actor=1, max_actors=1)
