"""Custom metrics on the Ray dashboard (``ray.util.metrics``; exported to Prometheus).

Names are prefixed ``ray_app_``. Metrics never break a job: without a metrics agent they are
simply not recorded.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

log = logging.getLogger(__name__)
_POOL = None
_JOBS = None


def pool_metrics():
    """Gauges/counters of the density pool, created once per process (None if unavailable)."""
    global _POOL
    if _POOL is None:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            _POOL = SimpleNamespace(
                backlog=Gauge("ray_app_shard_backlog", "shards waiting for an actor"),
                actors=Gauge("ray_app_density_actors", "density actors in the pool"),
                shards_done=Counter("ray_app_shards_done", "shards whose density finished"),
                stars=Counter("ray_app_stars_processed", "owned stars processed by shards"),
                shard_seconds=Histogram("ray_app_shard_seconds", "kNN+density seconds/shard",
                                        boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]),
            )
        except Exception as exc:
            log.debug("metrics unavailable: %s", exc)
            return None
    return _POOL


def job_metrics():
    """Job-level counters (received/running/completed/failed)."""
    global _JOBS
    if _JOBS is None:
        try:
            from ray.util.metrics import Counter, Gauge

            _JOBS = SimpleNamespace(
                running=Gauge("ray_app_jobs_running", "recovery jobs in progress"),
                completed=Counter("ray_app_jobs_completed", "recovery jobs completed"),
                failed=Counter("ray_app_jobs_failed", "recovery jobs failed"),
            )
        except Exception as exc:
            log.debug("metrics unavailable: %s", exc)
            return None
    return _JOBS
