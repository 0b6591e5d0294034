"""Wiring of the job service from the environment: queue, status store, result store.

Environment (or the CLI flags that override it):

* ``QUEUE_URL``: SQS queue URL; ``TABLE_NAME``: DynamoDB table; ``BUCKET_NAME``: S3 bucket;
* ``AWS_DEFAULT_REGION`` / ``AWS_ENDPOINT_URL``: boto3's own configuration (no custom
  endpoint code: the same code talks to AWS and to a local emulator);
* without ``TABLE_NAME``/``BUCKET_NAME`` the embedded local mode is used: a SQLite queue (unless
  ``QUEUE_URL`` is set), a SQLite status store
  and a results folder under ``RAY_APP_HOME`` (default: the per-user data folder
  ``$XDG_DATA_HOME/ray-app``, i.e. ``~/.local/share/ray-app``). It never depends on the current
  directory, so a job started by ``ray job submit`` (which runs in Ray's temporary working
  directory) and ``ray-app status`` in a shell see the same store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigurationError
from ..data.catalogue import is_uri
from ..io.home import local_home
from ..io.queue import PriorityQueues, SqliteQueue, SqsQueue
from ..io.results import LocalResultStore, S3ResultStore
from ..io.status import DynamoStatusStore, SqliteStatusStore
from ..pipeline.params import GAIA_SOURCES
from .jobspec import JobSpec, parse_job

log = logging.getLogger(__name__)


@dataclass
class Service:
    queue: SqsQueue | None
    status: object
    results: object
    mode: str


def service_from_env(queue_url: str | None = None, table: str | None = None,
                     bucket: str | None = None) -> Service:
    queue_url = queue_url or os.environ.get("QUEUE_URL")
    table = table or os.environ.get("TABLE_NAME")
    bucket = bucket or os.environ.get("BUCKET_NAME")
    queue = _with_high_queue(queue_url) if queue_url else None
    if table and bucket:
        return Service(queue, DynamoStatusStore(table), S3ResultStore(bucket), "aws")
    if table or bucket:
        raise ValueError("set both TABLE_NAME and BUCKET_NAME (AWS mode) or neither (local "
                         f"mode); got TABLE_NAME={table!r}, BUCKET_NAME={bucket!r}")
    home = local_home()
    if queue is None:  # the embedded local queues: submit -> `ray-app consume` with no AWS
        vis = int(os.environ.get("RAY_APP_VISIBILITY_S", 120))
        queue = PriorityQueues(SqliteQueue(home / "queue-high.db", visibility_s=vis),
                               SqliteQueue(home / "queue.db", visibility_s=vis))
    return Service(queue, SqliteStatusStore(home / "status.db"), LocalResultStore(home),
                   "local")


def _with_high_queue(queue_url: str):
    """The SQS queue and, where ``provision`` made it, its high-priority twin
    (``HIGH_QUEUE_URL``, default the queue's URL + ``-high``); without one, a single queue
    (priorities then only order nothing, and a warning says how to add it)."""
    from botocore.exceptions import ClientError

    normal = SqsQueue(queue_url)
    high_url = os.environ.get("HIGH_QUEUE_URL") or queue_url.rstrip("/") + "-high"
    try:
        normal.sqs.get_queue_attributes(QueueUrl=high_url, AttributeNames=["QueueArn"])
    except ClientError as exc:
        if "NonExistentQueue" not in exc.response["Error"]["Code"]:
            raise
        log.warning("no high-priority queue %s: priorities are not honoured; run "
                    "`ray-app provision` to add it", high_url)
        return normal
    return PriorityQueues(SqsQueue(high_url, client=normal.sqs), normal)


def prepare(service: Service, message: dict) -> JobSpec:
    """Validate a message as this service will run it (a local path made absolute in local
    mode, an input's readability checked in AWS mode). Raises ValueError (InvalidJob for the
    message itself) before touching the queue or the status store."""
    if service.queue is None:
        raise ValueError("QUEUE_URL is not set (or pass --queue-url)")
    if service.mode == "local":  # the local driver reads local paths: pass it an absolute one
        source = message.get("source")
        if isinstance(source, str) and source != "synthetic" and source not in GAIA_SOURCES \
                and not is_uri(source):
            try:
                exists = Path(source).exists()
            except (OSError, ValueError) as exc:  # a name too long, a NUL byte ...
                raise ValueError(f"source {source[:80]!r} is not a usable path: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
            if not exists:
                raise ValueError(f"source {source[:200]!r} does not exist")
            message = {**message, "source": str(Path(source).resolve())}
    spec = parse_job(message)
    if service.mode != "local":
        check_source(spec.source)
    return spec


def enqueue(service: Service, spec: JobSpec) -> None:
    """Record PENDING (``JobExists`` if the jobId has a record), then send the message.

    If the send fails, the PENDING record is deleted again (no orphan record that no
    message will ever run) and the send's error is raised.
    """
    service.status.create(spec.job_id, spec.to_message())
    try:
        service.queue.send(spec.to_message())
    except BaseException:
        try:
            service.status.discard(spec.job_id)
        except Exception as exc:  # the store is unreachable too: say so, keep the first error
            log.warning("job %s: enqueue failed and its PENDING record could not be removed "
                        "(%s); remove it or submit again with the same --job-id", spec.job_id,
                        exc)
        raise


def submit(service: Service, message: dict) -> JobSpec:
    """Validate, record PENDING, then enqueue (:func:`prepare`, :func:`enqueue`)."""
    spec = prepare(service, message)
    enqueue(service, spec)
    return spec


def check_source(source: str) -> None:
    """What can be checked of a job's input at submit time: a local path cannot be read by
    the cluster's drivers (refused), an s3:// object must exist."""

    if source == "synthetic" or source in GAIA_SOURCES:
        return
    if not is_uri(source):
        raise ValueError(f"source {source!r} is a local path, which the cluster's drivers "
                         "cannot read: upload it (s3://bucket/key) or use 'synthetic' / "
                         "'gaia-dr3'")
    if source.startswith("s3://"):
        from botocore.exceptions import ClientError

        from ..io import aws

        bucket, _, key = source[5:].partition("/")
        try:
            aws.client("s3").head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NoSuchBucket", "403"):
                raise ValueError(f"source {source!r} cannot be read: "
                                 f"{exc.response['Error']['Code']} (does the object exist, "
                                 "and may this account read it?)") from None
            raise



def _env(name: str, default, cast=float):
    value = os.environ.get(name, default)
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def driver_config():
    """The driver's knobs from the environment (see :func:`consume`)."""
    from .driver import DriverConfig

    return DriverConfig(capacity=_env("RAY_APP_CAPACITY", 2, int),
                        wait_s=_env("RAY_APP_WAIT_S", 20, int),
                        visibility_s=_env("RAY_APP_VISIBILITY_S", 120, int),
                        heartbeat_s=_env("RAY_APP_HEARTBEAT_S", 30),
                        lease_s=_env("RAY_APP_LEASE_S", 120),
                        drain_s=_env("RAY_APP_DRAIN_S", 120),
                        backoff_s=_env("RAY_APP_BACKOFF_S", 10, int),
                        sweep_s=_env("RAY_APP_SWEEP_S", 60),
                        operator_backoff_s=_env("RAY_APP_OPERATOR_BACKOFF_S", 300, int),
                        max_running_per_user=_env("RAY_APP_MAX_RUNNING_PER_USER", 1, int))


def consume(engine_name: str = "ray", idle_polls: int | None = None,
            service: Service | None = None) -> int:
    """Run the queue driver until SIGTERM/SIGINT (or ``idle_polls`` empty polls): the body of
    ``jobs/consume.py`` (``ray job submit``) and of ``ray-app consume`` (local mode).

    Configuration (environment): RAY_APP_CAPACITY (jobs in flight, 2), RAY_APP_WAIT_S (long
    poll, 20), RAY_APP_VISIBILITY_S (120), RAY_APP_HEARTBEAT_S (30), RAY_APP_LEASE_S (120),
    RAY_APP_DRAIN_S (drain bound on SIGTERM, 120), RAY_APP_BACKOFF_S (10), RAY_APP_SWEEP_S
    (60), RAY_APP_OPERATOR_BACKOFF_S (a configuration error hides the message this long, 300),
    RAY_APP_MAX_RUNNING_PER_USER (jobs of one submittedBy running at once, 1; 0: no limit),
    RAY_APP_MAX_ACTORS, RAY_APP_GPUS_PER_ACTOR.
    """
    import signal

    from ..engine.engines import default_engine
    from .driver import Driver

    service = service or service_from_env()
    config = driver_config()
    engine = default_engine(engine_name)  # ray.init happens here ...
    driver = Driver(service.queue, service.status, service.results, engine, config)
    signal.signal(signal.SIGTERM, driver.stop)  # ... so our handlers are installed after it
    signal.signal(signal.SIGINT, driver.stop)
    log.info("driver %s consuming %s (%s mode)", driver.driver_id, service.queue.url,
             service.mode)
    try:
        rc = driver.run(max_idle_polls=idle_polls)
    finally:
        engine.close()
    log.info("driver %s stopped: %s", driver.driver_id, driver.stats)
    return rc
