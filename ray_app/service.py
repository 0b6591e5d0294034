"""Wiring of the job service from the environment: queue, status store, result store.

Environment (or the CLI flags that override it):

* ``QUEUE_URL``: SQS queue URL; ``TABLE_NAME``: DynamoDB table; ``BUCKET_NAME``: S3 bucket;
* ``AWS_DEFAULT_REGION`` / ``AWS_ENDPOINT_URL``: boto3's own configuration (no custom
  endpoint code: the same code talks to AWS and to a local emulator);
* without ``TABLE_NAME``/``BUCKET_NAME`` the embedded local mode is used: a SQLite status store
  and a results folder under ``RAY_APP_HOME`` (default: the per-user data folder
  ``$XDG_DATA_HOME/ray-app``, i.e. ``~/.local/share/ray-app``). It never depends on the current
  directory, so a job started by ``ray job submit`` (which runs in Ray's temporary working
  directory) and ``ray-app status`` in a shell see the same store.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .io.queue import SqsQueue
from .io.results import LocalResultStore, S3ResultStore
from .io.status import DynamoStatusStore, SqliteStatusStore
from .jobspec import JobSpec, parse_job


@dataclass
class Service:
    queue: SqsQueue | None
    status: object
    results: object
    mode: str


def local_home() -> Path:
    """The embedded local mode's folder: ``$RAY_APP_HOME``, else ``$XDG_DATA_HOME/ray-app``
    (``~/.local/share/ray-app``), made absolute."""
    home = os.environ.get("RAY_APP_HOME")
    if not home:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = str(Path(data) / "ray-app")
    return Path(home).expanduser().resolve()


def service_from_env(queue_url: str | None = None, table: str | None = None,
                     bucket: str | None = None) -> Service:
    queue_url = queue_url or os.environ.get("QUEUE_URL")
    table = table or os.environ.get("TABLE_NAME")
    bucket = bucket or os.environ.get("BUCKET_NAME")
    queue = SqsQueue(queue_url) if queue_url else None
    if table and bucket:
        return Service(queue, DynamoStatusStore(table), S3ResultStore(bucket), "aws")
    if table or bucket:
        raise ValueError("set both TABLE_NAME and BUCKET_NAME (AWS mode) or neither (local "
                         f"mode); got TABLE_NAME={table!r}, BUCKET_NAME={bucket!r}")
    home = local_home()
    return Service(queue, SqliteStatusStore(home / "status.db"), LocalResultStore(home),
                   "local")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def submit(service: Service, message: dict) -> JobSpec:
    """Validate, record PENDING, then enqueue. Raises InvalidJob before touching anything."""
    if service.queue is None:
        raise ValueError("QUEUE_URL is not set (or pass --queue-url)")
    spec = parse_job(message)
    service.status.create(spec.job_id, spec.to_message())
    service.queue.send(spec.to_message())
    return spec

