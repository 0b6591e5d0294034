"""Engines: who runs a job's shards. The job runner receives one (hats-import style).

* :class:`InProcessEngine` runs the shards in this process (tests, benchmarks, no Ray);
* :class:`RayEngine` runs them on a :class:`~ray_app.engine.pool.DensityPool` of named
  ``DensityActor`` s, arrays travelling through the object store once per job.

Both run the same orchestration (``orchestrate.sharded_density_and_forests``) and return the
same :class:`ShardedDensity`; the driver merges its forests exactly.
"""

from __future__ import annotations

import os
import uuid

import numpy as np

from ..core.errors import ConfigurationError
from ..core.persistence import merge_forests
from ..core.recovery import copy_diagrams, null_copy_k
from ..core.sharding import check_k_servable, choose_shard_count
from .orchestrate import (
    InProcessExecutor,
    ShardedDensity,
    sharded_density_and_forests,
    worker_backend,
)

#: CPUs a CPU density actor reserves. A GPU actor reserves none: GPU nodes advertise CPU: 0
#: (cluster.yaml) so that nothing but density actors can be placed on them.
ACTOR_CPUS = 1.0


def actor_cpus(num_gpus_per_actor: float) -> float:
    """CPUs a density actor asks Ray for: 0 with a GPU, else :data:`ACTOR_CPUS`."""
    return 0.0 if num_gpus_per_actor > 0 else ACTOR_CPUS

#: Default memory one actor may use for a shard (bytes); ``RAY_APP_MEMORY_PER_ACTOR`` overrides.
DEFAULT_MEMORY_PER_ACTOR = 4 * 2**30

#: GPU memory assumed for an actor before any GPU actor has reported its own (bytes): a T4
#: (g4dn) has 15 GiB usable. ``RAY_APP_DEVICE_MEMORY`` overrides.
DEFAULT_DEVICE_MEMORY = 15 * 2**30

__all__ = ["InProcessEngine", "RayEngine", "ShardedDensity", "default_engine"]


def env_number(name: str, default, cast=int):
    """``cast`` of the environment variable ``name`` (``default`` when unset); a value that is
    not a number is the operator's error, named as such."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a {'whole ' if cast is int else ''}number, "
                                 f"got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {raw!r}")
    return value


def _memory_per_actor(value: int | None) -> int:
    if value is not None:
        return int(value)
    return env_number("RAY_APP_MEMORY_PER_ACTOR", DEFAULT_MEMORY_PER_ACTOR)


def _copy_diagram(engine, Xs, sid, k: int):
    """One null copy's log-density and diagram through the engine's own sharded path: the
    exact merge gives what :func:`ray_app.core.recovery.copy_diagrams` gives in-process."""
    sd = engine.density_and_forests(Xs, sid, null_copy_k(k, len(Xs)))
    return sd.log_density, merge_forests(sd.log_density, sid, sd.forests)


def plan_shard_count(n_stars: int, k: int, d: int, host_bytes: int, requested: int | None,
                     device: int | None, device_source: str) -> tuple[int, dict]:
    """Shard count from the host budget and the GPU memory, and the plan for metadata.json."""
    n_shards = choose_shard_count(n_stars, k, host_bytes, requested, device_memory=device, d=d)
    plan = {"requested_shards": requested, "host_bytes_per_actor": host_bytes,
            "device_bytes_per_actor": device, "device_memory_source": device_source}
    return n_shards, plan


class InProcessEngine:
    """Runs every shard in this process, one after the other."""

    name = "in-process"

    def __init__(self, prefer_backend: str = "auto", memory_per_actor: int | None = None):
        self.backend = worker_backend(prefer_backend)
        self.memory_per_actor = _memory_per_actor(memory_per_actor)

    def check_k(self, k: int) -> None:
        """Raise ValueError with the reason when no shard plan of this engine serves ``k``."""
        mem = self.backend.device_memory()
        check_k_servable(k, self.memory_per_actor, None if mem is None else mem[0])

    def density_and_forests(self, X, source_id, k: int, shards: int | None = None,
                            progress=None) -> ShardedDensity:
        mem = self.backend.device_memory()
        n_shards, plan = plan_shard_count(len(X), k, X.shape[1], self.memory_per_actor, shards,
                                          None if mem is None else mem[0],
                                          "none (cpu)" if mem is None else "this process")
        out = sharded_density_and_forests(X, source_id, k, InProcessExecutor(self.backend),
                                          n_shards, progress=progress)
        out.memory_plan = plan
        return out

    def null_diagrams(self, copies, k: int) -> list:
        """Log-density and diagram of each null copy (see ``core.recovery.calibrate_null``)."""
        return [_copy_diagram(self, Xs, sid, k) for Xs, sid in copies]

    def close(self) -> None:
        pass


class _PoolExecutor:
    """Executor that sends one job's shard calls to the shared pool."""

    def __init__(self, pool, job: str):
        import ray

        self._ray = ray
        self.pool = pool
        self.job = job

    def prepare(self, X, sid):
        return self._ray.put(X), self._ray.put(sid)

    def density(self, ctx, tasks):
        futures = [self.pool.submit(self.job, "density", (ctx[0], ctx[1], t), t.key)
                   for t in tasks]
        return [f.result() for f in futures]

    def forest(self, ctx, log_density, calls):
        f_ref = self._ray.put(np.ascontiguousarray(log_density))
        futures = [self.pool.submit(self.job, "forest", (key, f_ref, exclude), key)
                   for key, exclude in calls]
        return [f.result() for f in futures]


class RayEngine:
    """Runs shards on a pool of density actors of a Ray cluster (local or remote).

    Parameters
    ----------
    address : str, optional
        Ray address; default joins the job's cluster or starts a local instance.
    num_cpus : int, optional
        CPUs for a new local instance.
    num_gpus_per_actor : float, optional
        GPUs per actor; default ``RAY_APP_GPUS_PER_ACTOR``, else 1 when the cluster has GPUs
        now, else 0. On an autoscaling cluster that starts with no GPU node, set
        ``RAY_APP_GPUS_PER_ACTOR=1``: the pending GPU actors are what makes it scale up.
    max_actors : int, optional
        Pool size limit (``RAY_APP_MAX_ACTORS``; default 1 per GPU seen, at least 1).
    memory_per_actor : int, optional
        Bytes a shard may use; bigger jobs are split into more shards.
    idle_release_s : float
        Idle actors are released after this many seconds.
    log_to_driver : bool
        Stream the actors' log lines to this process (a new local instance only). The local
        CLI turns it off so they do not cut into its progress bar; they stay in Ray's session
        logs (``/tmp/ray/session_latest/logs``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 num_gpus_per_actor: float | None = None, max_actors: int | None = None,
                 prefer_backend: str = "auto", memory_per_actor: int | None = None,
                 idle_release_s: float = 300.0, min_actors: int = 0,
                 log_to_driver: bool = True):
        import ray

        from .pool import DensityPool

        self._ray = ray
        self._owns_ray = False
        cpu_knn = os.environ.get("RAY_APP_CPU_KNN", "cpu")
        if cpu_knn not in ("cpu", "grid"):  # the actors read it: refuse before any job
            raise ConfigurationError(f"RAY_APP_CPU_KNN must be 'cpu' or 'grid', got {cpu_knn!r}")
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=log_to_driver)
            self._owns_ray = True
        gpus = ray.cluster_resources().get("GPU", 0)
        if num_gpus_per_actor is None:
            num_gpus_per_actor = env_number("RAY_APP_GPUS_PER_ACTOR", None, float)
        if num_gpus_per_actor is None:
            num_gpus_per_actor = 1.0 if gpus >= 1 else 0.0
        if max_actors is None:
            max_actors = env_number("RAY_APP_MAX_ACTORS", 0) or max(
                1, int(gpus // num_gpus_per_actor) if num_gpus_per_actor else 1)
        if self._owns_ray and num_gpus_per_actor > gpus:
            # a local instance has no autoscaler: such an actor would wait forever
            ray.shutdown()
            raise ValueError(f"RAY_APP_GPUS_PER_ACTOR={num_gpus_per_actor:g} but this local "
                             f"Ray instance has {gpus:g} GPU(s): unset it, or run on a "
                             "cluster that can add GPU nodes")
        cpus = ray.cluster_resources().get("CPU", 0)
        per_actor = actor_cpus(num_gpus_per_actor)
        if self._owns_ray and max_actors * per_actor > cpus:
            ray.shutdown()
            raise ValueError(f"--max-actors {max_actors} needs {max_actors * per_actor:g} CPUs "
                             f"({per_actor:g} per density actor) but this local Ray instance "
                             f"has {cpus:g}: lower --max-actors or raise --num-cpus")
        self.memory_per_actor = _memory_per_actor(memory_per_actor)
        on_pool = os.environ.get("RAY_APP_NULL_ON_POOL", "auto")
        if on_pool not in ("auto", "0", "1"):
            raise ConfigurationError(f"RAY_APP_NULL_ON_POOL must be auto, 0 or 1, got "
                                     f"{on_pool!r}")
        self.null_on_pool = num_gpus_per_actor > 0 if on_pool == "auto" else on_pool == "1"
        self.pool = DensityPool(max_actors=max_actors, num_gpus=num_gpus_per_actor,
                                num_cpus=per_actor,
                                prefer_backend=prefer_backend, idle_release_s=idle_release_s,
                                min_actors=min_actors)

    def device_memory(self) -> tuple[int | None, str]:
        """GPU bytes to plan one actor's shard with, and where the figure comes from."""
        reported = self.pool.device_memory()
        if reported is not None:
            return reported, "reported by the actors"
        if self.pool.num_gpus <= 0:
            return None, "none (cpu actors)"
        default = env_number("RAY_APP_DEVICE_MEMORY", DEFAULT_DEVICE_MEMORY)
        return int(default * min(1.0, self.pool.num_gpus)), "RAY_APP_DEVICE_MEMORY default"

    def check_k(self, k: int) -> None:
        """Raise ValueError with the reason when no shard plan of this cluster serves ``k``."""
        check_k_servable(k, self.memory_per_actor, self.device_memory()[0])

    def density_and_forests(self, X, source_id, k: int, shards: int | None = None,
                            progress=None) -> ShardedDensity:
        device, source = self.device_memory()
        n_shards, plan = plan_shard_count(len(X), k, X.shape[1], self.memory_per_actor, shards,
                                          device, source)
        executor = _PoolExecutor(self.pool, uuid.uuid4().hex[:12])
        out = sharded_density_and_forests(X, source_id, k, executor, n_shards,
                                          progress=progress)
        out.memory_plan = plan
        return out

    def null_diagrams(self, copies, k: int) -> list:
        """Log-density and diagram of each null copy.

        With GPU actors (or ``RAY_APP_NULL_ON_POOL=1``) the copies' kNN runs on the pool's
        actors, all copies in flight at once, instead of in the driver's process one after
        the other (a cluster's CPU head is then free for the next job). Otherwise in this
        process: with CPU actors on one machine the driver's cKDTree, which uses every core,
        is faster than one-CPU actors (measured, benchmarks/RESULTS.md).
        """
        from concurrent.futures import ThreadPoolExecutor

        if not self.null_on_pool:
            return copy_diagrams(copies, k)
        with ThreadPoolExecutor(max_workers=max(1, len(copies)),
                                thread_name_prefix="null-copy") as threads:
            return list(threads.map(lambda c: _copy_diagram(self, c[0], c[1], k), copies))

    def close(self) -> None:
        self.pool.shutdown()
        if self._owns_ray:
            self._ray.shutdown()


def default_engine(kind: str = "ray", **kwargs):
    """Engine by name: ``ray`` (default) or ``in-process`` (``RAY_APP_ENGINE`` overrides)."""
    kind = os.environ.get("RAY_APP_ENGINE", kind)
    if kind == "ray":
        return RayEngine(**kwargs)
    if kind == "in-process":
        allowed = {"prefer_backend", "memory_per_actor"}
        return InProcessEngine(**{k: v for k, v in kwargs.items() if k in allowed})
    raise ConfigurationError(f"RAY_APP_ENGINE must be 'ray' or 'in-process', got {kind!r}")
