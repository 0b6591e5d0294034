"""The GPU-pinned density actor (DESIGN section 4).

Named ``density-actor-<i>`` in namespace ``ray-app`` (visible as such in the dashboard),
restartable (``max_restarts``/``max_task_retries``), reused across jobs so the CUDA context and
CuPy memory pool stay warm. The backend is chosen in the actor's own process, where the GPU is
visible, by trying a tiny CuPy allocation.
"""

from __future__ import annotations

import logging
import os

import ray

from .orchestrate import DensityTask, ShardWorker, worker_backend

NAMESPACE = "ray-app"
log = logging.getLogger(__name__)


@ray.remote(max_restarts=3, max_task_retries=3)
class DensityActor:
    """Computes kNN + density, then spanning forests, for shards of any job."""

    def __init__(self, prefer_backend: str = "auto"):
        self.backend = worker_backend(prefer_backend)
        self.worker = ShardWorker(self.backend)
        ctx = ray.get_runtime_context()
        self.name = ctx.get_actor_name()
        self.node_id = ctx.get_node_id()
        log.warning("%s on node %s: backend %s (%s), CUDA_VISIBLE_DEVICES=%s", self.name,
                    self.node_id[:8], self.backend.name, self.backend.reason,
                    os.environ.get("CUDA_VISIBLE_DEVICES"))

    def info(self) -> dict:
        return {**self.backend.to_dict(), "actor": self.name, "node_id": self.node_id,
                "device_memory": self.backend.device_memory()}

    def density(self, X, sid, task: DensityTask) -> dict:
        out = self.worker.density(X, sid, task)
        out["actor"] = self.name
        out["node_id"] = self.node_id
        return out

    def forest(self, key: str, log_density, exclude=None):
        return self.worker.forest(key, log_density, exclude)

    def drop(self, key: str) -> None:
        self.worker.drop(key)


def density_actor(slot: int, num_gpus: float, num_cpus: float, prefer_backend: str,
                  prefix: str = "density-actor"):
    """The named actor of pool ``slot``, created if it does not exist yet."""
    return DensityActor.options(
        name=f"{prefix}-{slot}", namespace=NAMESPACE, get_if_exists=True,
        num_gpus=num_gpus, num_cpus=num_cpus,
    ).remote(prefer_backend)
