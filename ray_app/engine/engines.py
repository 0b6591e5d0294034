"""Engines: who runs the shard stages. The job runner receives one (hats-import style).

* :class:`InProcessEngine` calls the stage functions directly (tests, benchmarks);
* :class:`RayEngine` runs them on named ``DensityActor`` actors through the object store.

Both return the same :class:`ShardedDensity`; the driver merges its forests exactly.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..core.backend import detect_backend
from ..core.shard import shard_density, shard_forest


@dataclass
class ShardedDensity:
    """Global kNN/density results gathered from the shards, plus their forests."""

    log_density: np.ndarray
    kth_distance: np.ndarray
    forests: list[tuple[np.ndarray, np.ndarray]]
    backend: dict
    shard_seconds: list[float] = field(default_factory=list)
    requeried: int = 0


class InProcessEngine:
    """Runs the shard stages in this process (one shard)."""

    name = "in-process"

    def __init__(self, prefer_backend: str = "auto"):
        self.backend = detect_backend(prefer_backend)

    def density_and_forests(self, X, source_id, k: int) -> ShardedDensity:
        t0 = time.perf_counter()
        rows = np.arange(len(X))
        d = shard_density(X, source_id, rows, k, len(X), backend=self.backend.knn,
                          xp=self.backend.xp)
        forest = shard_forest(d.log_density, source_id, rows, d.indices)
        return ShardedDensity(d.log_density, d.kth_distance, [forest], self.backend.to_dict(),
                              [time.perf_counter() - t0], d.requeried)

    def close(self) -> None:
        pass


class RayEngine:
    """Runs shards on ``DensityActor`` actors of a Ray cluster (local or remote).

    Parameters
    ----------
    address : str, optional
        Ray address; default starts (or joins) a local instance.
    num_cpus : int, optional
        CPUs for a new local instance.
    num_gpus_per_actor : float
        GPUs per actor (0 on machines without GPUs; 1 on the cluster).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 num_gpus_per_actor: float | None = None, prefer_backend: str = "auto"):
        import ray

        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=True, logging_level="WARNING")
            self._owns_ray = True
        if num_gpus_per_actor is None:
            num_gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        from .actors import get_or_create_density_actor

        self._actor = get_or_create_density_actor(0, num_gpus=num_gpus_per_actor,
                                                  prefer_backend=prefer_backend)

    def density_and_forests(self, X, source_id, k: int) -> ShardedDensity:
        ray = self._ray
        key = uuid.uuid4().hex
        X_ref = ray.put(np.ascontiguousarray(X))
        sid_ref = ray.put(np.ascontiguousarray(source_id))
        n = len(X)
        dens = ray.get(self._actor.density.remote(key, X_ref, sid_ref, None, k, n))
        src, dst, forest_seconds = ray.get(self._actor.forest.remote(key, dens["log_density"]))
        return ShardedDensity(dens["log_density"], dens["kth_distance"], [(src, dst)],
                              dens["backend"], [dens["seconds"] + forest_seconds],
                              dens["requeried"])

    def close(self) -> None:
        if self._owns_ray:
            self._ray.shutdown()


def default_engine(kind: str = "ray", **kwargs):
    """Engine by name: ``ray`` (default) or ``in-process`` (``RAY_APP_ENGINE`` overrides)."""
    kind = os.environ.get("RAY_APP_ENGINE", kind)
    if kind == "ray":
        return RayEngine(**kwargs)
    if kind == "in-process":
        return InProcessEngine(**{k: v for k, v in kwargs.items() if k == "prefer_backend"})
    raise ValueError(f"engine must be 'ray' or 'in-process', got {kind!r}")
