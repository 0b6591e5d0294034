"""The GPU-pinned density actor (DESIGN section 4).

One named actor per pool slot (``density-actor-<i>`` in namespace ``ray-app``), restartable,
reused across jobs so the CUDA context and CuPy memory pool stay warm. The backend is chosen in
the actor's own process (the GPU is only visible there).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray

from ..core.backend import detect_backend
from ..core.shard import shard_density, shard_forest

NAMESPACE = "ray-app"
log = logging.getLogger(__name__)


@ray.remote(max_restarts=3, max_task_retries=3)
class DensityActor:
    """Computes kNN + density and spanning forests for shards."""

    def __init__(self, prefer_backend: str = "auto"):
        self.backend = detect_backend(prefer_backend)
        self.name = ray.get_runtime_context().get_actor_name()
        log.warning("DensityActor backend: %s (%s)", self.backend.name, self.backend.reason)
        self._pending: dict[str, tuple] = {}

    def info(self) -> dict:
        return self.backend.to_dict()

    def density(self, key: str, X_ref, sid_ref, owned_rows, k: int, n_total: int) -> dict:
        t0 = time.perf_counter()
        rows = np.arange(len(X_ref)) if owned_rows is None else np.asarray(owned_rows)
        d = shard_density(X_ref, sid_ref, rows, k, n_total, backend=self.backend.knn,
                          xp=self.backend.xp)
        # keep the neighbour lists here for the forest phase: they never cross the network
        self._pending[key] = (sid_ref, rows, d.indices)
        return {"log_density": d.log_density, "kth_distance": d.kth_distance,
                "requeried": d.requeried, "seconds": time.perf_counter() - t0,
                "backend": {**self.backend.to_dict(), "actor": self.name}}

    def forest(self, key: str, log_density_ref) -> tuple:
        t0 = time.perf_counter()
        sid_ref, rows, indices = self._pending.pop(key)
        src, dst = shard_forest(log_density_ref, sid_ref, rows, indices)
        return src, dst, time.perf_counter() - t0


def get_or_create_density_actor(slot: int, num_gpus: float = 1.0, prefer_backend: str = "auto"):
    """The named actor of ``slot``, created if it does not exist yet."""
    return DensityActor.options(
        name=f"density-actor-{slot}", namespace=NAMESPACE, get_if_exists=True,
        num_gpus=num_gpus, num_cpus=1, lifetime=None,
    ).remote(prefer_backend)
