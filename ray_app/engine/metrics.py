"""Custom metrics on the Ray dashboard (``ray.util.metrics``; exported to Prometheus).

Names are prefixed ``ray_app_``. Metrics never break a job: without a metrics agent they are
simply not recorded.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

log = logging.getLogger(__name__)
_CACHE: dict[str, SimpleNamespace | None] = {}


def _once(name: str, build):
    """Build a group of metrics once per process; None where Ray metrics are unavailable."""
    if name not in _CACHE:
        try:
            from ray.util import metrics

            _CACHE[name] = build(metrics)
        except Exception as exc:
            log.debug("metrics unavailable: %s", exc)
            return None
    return _CACHE[name]


def pool_metrics():
    """Gauges/counters of the density pool."""
    return _once("pool", lambda m: SimpleNamespace(
        backlog=m.Gauge("ray_app_shard_backlog", "shards waiting for an actor"),
        actors=m.Gauge("ray_app_density_actors", "density actors in the pool"),
        shards_done=m.Counter("ray_app_shards_done", "shards whose density finished"),
        stars=m.Counter("ray_app_stars_processed", "owned stars processed by shards"),
        shard_seconds=m.Histogram("ray_app_shard_seconds", "kNN+density seconds per shard",
                                  boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300])))


def job_metrics():
    """Job-level gauge and counters of a driver."""
    return _once("jobs", lambda m: SimpleNamespace(
        running=m.Gauge("ray_app_jobs_running", "recovery jobs in progress"),
        completed=m.Counter("ray_app_jobs_completed", "recovery jobs completed"),
        failed=m.Counter("ray_app_jobs_failed", "recovery jobs failed")))
