"""Custom metrics on the Ray dashboard (``ray.util.metrics``; exported to Prometheus).

Ray exports every application metric with its own ``ray_`` prefix, so the names declared
here start with ``app_`` and reach Prometheus and Grafana as the documented ``ray_app_*``
(declaring ``ray_app_x`` would export ``ray_ray_app_x``). Job counters carry a ``stream``
tag (the registry key, or ``region``): bounded cardinality, unlike a job id. Metrics never
break a job: without a metrics agent they are simply not recorded.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

log = logging.getLogger(__name__)
_CACHE: dict[str, SimpleNamespace | None] = {}
#: What Ray puts before every application metric's name when it exports it.
RAY_EXPORT_PREFIX = "ray_"
#: Our prefix as declared, so that exported names read ``ray_app_*``.
PREFIX = "app_"


def exported_name(name: str) -> str:
    """The name Prometheus sees for a metric declared as ``name``."""
    return RAY_EXPORT_PREFIX + name


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
        backlog=m.Gauge(PREFIX + "shard_backlog", "shards waiting for an actor"),
        actors=m.Gauge(PREFIX + "density_actors", "density actors in the pool"),
        shards_done=m.Counter(PREFIX + "shards_done", "shards whose density finished"),
        stars=m.Counter(PREFIX + "stars_processed", "owned stars processed by shards"),
        shard_seconds=m.Histogram(PREFIX + "shard_seconds", "kNN+density seconds per shard",
                                  boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300])))


def job_metrics():
    """Job-level gauge and counters of a driver."""
    return _once("jobs", lambda m: SimpleNamespace(
        running=m.Gauge(PREFIX + "jobs_running", "recovery jobs in progress"),
        completed=m.Counter(PREFIX + "jobs_completed", "recovery jobs completed",
                            tag_keys=("stream",)),
        failed=m.Counter(PREFIX + "jobs_failed", "recovery jobs failed",
                         tag_keys=("stream",)),
        operator_errors=m.Counter(PREFIX + "operator_errors",
                                  "valid jobs this deployment's configuration cannot run "
                                  "(the operator must act)", tag_keys=("stream",))))


def survey_metrics():
    """Progress of a survey campaign (patches finished, by status)."""
    return _once("survey", lambda m: SimpleNamespace(
        patches_done=m.Counter(PREFIX + "survey_patches_done",
                               "survey patches finished (done, empty or failed)",
                               tag_keys=("status",))))
