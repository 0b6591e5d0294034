"""The queue driver: at-least-once messages in, exactly-once results out (DESIGN section 5).

For each message:

1. parse and validate; an invalid message is recorded FAILED (when its jobId is readable) and
   moved to the dead-letter queue at once, before any compute;
2. a job already COMPLETED with a manifest is acknowledged (deleted) without recomputation;
3. ``claim`` (a conditional write) makes this driver the job's only runner; a job leased by a
   live driver is hidden again until that lease would expire;
4. while the job runs a heartbeat extends the message's visibility and the lease;
5. outputs are uploaded under ``jobs/{jobId}/`` with ``manifest.json`` last, then the status
   becomes COMPLETED, and only then is the message deleted;
6. errors are told apart by who must act (``ray_app.core.errors``): the submitter's
   (``ValueError``: the job can never succeed as asked; FAILED, errorKind ``input``, the
   message dead-lettered at once with the reason); the operator's (``ConfigurationError``: a
   valid job this deployment cannot run; FAILED, errorKind ``operator``, the message released
   after ``operator_backoff_s`` rather than dead-lettered, the ``ray_app_operator_errors``
   metric raised and an ERROR logged; once fixed, the next receive runs it); anything else is
   transient: the job is released and the message comes back after an exponential backoff;
   on its third receive the job is recorded FAILED (errorKind ``transient``) and the queue's
   redrive policy moves the message to the DLQ on the next receive.

A cancel (``DELETE /jobs/{jobId}``, ``ray-app cancel``) of a RUNNING job sets
``cancelRequested``; the driver reads it at each stage boundary and before publishing, stops
there, records CANCELLED and deletes the message: a cancelled job's outputs are never
published. A message of a CANCELLED job is deleted on receipt.

Capacity is bounded: the driver never holds more messages than it has free job slots. On
SIGTERM (``ray job stop``) it stops receiving, lets running jobs finish within ``drain_s``,
releases the rest (status PENDING, message visible at once) and returns 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigurationError
from ..engine.metrics import job_metrics
from ..io.status import CANCELLED, COMPLETED, FAILED, MAX_LIST, OPERATOR, RUNNING, TRANSIENT
from ..pipeline.params import GAIA_SOURCES, RecoverParams
from ..pipeline.runner import run_recovery
from .jobspec import InvalidJob, JobSpec, parse_job

log = logging.getLogger(__name__)

#: Receives after which the queue's redrive policy dead-letters a message (provision sets it).
MAX_RECEIVES = 3


class JobCancelled(Exception):
    """Raised inside a job's thread when its cancel request is seen at a stage boundary."""


@dataclass
class DriverConfig:
    """Knobs of the driver (environment variables in ``jobs/consume.py``)."""

    capacity: int = 2            # jobs in flight
    wait_s: int = 20             # SQS long polling
    visibility_s: int = 120      # visibility set on receive and on every heartbeat
    heartbeat_s: float = 30.0    # heartbeat period (< visibility_s and < lease_s)
    lease_s: float = 120.0       # DynamoDB lease; an expired lease lets another driver claim
    drain_s: float = 120.0       # SIGTERM: how long running jobs may finish
    backoff_s: int = 10          # transient failure: message hidden backoff_s * 2**(n-1)
    sweep_s: float = 60.0        # how often expired leases are swept back to PENDING
    operator_backoff_s: int = 300  # configuration error: message hidden this long, not DLQ'd
    max_running_per_user: int = 0  # jobs of one submittedBy RUNNING at once (0: no limit)
    defer_s: int = 5               # a job over its user's limit comes back after this long
    work_dir: str | None = None  # scratch for outputs before upload

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if not 0 < self.heartbeat_s < min(self.visibility_s, self.lease_s):
            raise ValueError("heartbeat_s must be > 0 and shorter than visibility_s and lease_s")


class Driver:
    """Consumes the queue and runs jobs on ``engine`` until :meth:`stop`.

    Parameters
    ----------
    queue : SqsQueue
    status : DynamoStatusStore or SqliteStatusStore
    results : S3ResultStore or LocalResultStore
    engine : an engine (``RayEngine`` on the cluster)
    """

    def __init__(self, queue, status, results, engine, config: DriverConfig | None = None,
                 driver_id: str | None = None):
        self.queue = queue
        self.status = status
        self.results = results
        self.engine = engine
        self.config = config or DriverConfig()
        self.driver_id = driver_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Thread, object]] = {}
        self._released: set[str] = set()
        self.work_dir = Path(self.config.work_dir or tempfile.mkdtemp(prefix="ray-app-driver-"))
        self.metrics = job_metrics()
        self.stats = {"completed": 0, "failed": 0, "skipped": 0, "dead_lettered": 0,
                      "released": 0, "transient": 0, "operator": 0, "deferred": 0,
                      "cancelled": 0}

    # ------------------------------------------------------------------ control
    def stop(self, *_args) -> None:
        """Stop receiving (SIGTERM handler)."""
        log.warning("driver %s: stop requested, draining", self.driver_id)
        self._stop.set()

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def run(self, max_idle_polls: int | None = None) -> int:
        """Receive and run jobs until stopped; returns the exit code (0)."""
        idle = 0
        last_sweep = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_sweep > self.config.sweep_s:
                self._sweep()
                last_sweep = time.monotonic()
            free = self.config.capacity - self.running()
            if free <= 0:
                time.sleep(0.05)
                continue
            try:
                messages = self.queue.receive(free, wait_s=self.config.wait_s,
                                              visibility_s=self.config.visibility_s)
            except Exception as exc:  # network/throttling: back off, never crash the driver
                log.warning("receive failed: %s", exc)
                time.sleep(1.0)
                continue
            if not messages:
                idle += 1
                if max_idle_polls is not None and idle >= max_idle_polls and not self.running():
                    break
                continue
            idle = 0
            for msg in messages:
                self._dispatch(msg)
        self._drain()
        return 0

    # ------------------------------------------------------------------ per message
    def _dispatch(self, msg) -> None:
        spec = None
        try:
            spec = parse_job(msg.body)
            self._check_serviceable(spec)
        except InvalidJob as exc:
            self._dead_letter(msg, f"invalid job message: {exc}", exc.job_id)
            return
        except ValueError as exc:  # valid message, but no shard plan here serves it
            self._dead_letter(msg, f"invalid job: {exc}", spec.job_id)
            return
        except ConfigurationError as exc:
            self._operator_error(spec, msg, exc)
            return
        record = self.status.get(spec.job_id)
        if record and record["status"] == COMPLETED and self.results.manifest(spec.job_id):
            self.queue.delete(msg.receipt)  # redelivery of finished work
            self.stats["skipped"] += 1
            return
        if record and (record["status"] == CANCELLED or (
                record["status"] == FAILED and record.get("errorKind") != OPERATOR)):
            self.queue.delete(msg.receipt)  # final; `ray-app dlq --redrive` re-opens FAILED
            self.stats["skipped"] += 1
            return
        if self._over_user_limit(spec):
            self._defer(msg)
            return
        if not self.status.claim(spec.job_id, self.driver_id, self.config.lease_s,
                                 params=spec.to_message()):
            lease = (record or {}).get("leaseExpires", time.time() + self.config.lease_s)
            self.queue.set_visibility(msg.receipt, max(1, int(lease - time.time()) + 1))
            return
        if record and record.get("cancelRequested"):  # asked while a dead driver held it
            self._finish_cancel(spec, msg)
            return
        t = threading.Thread(target=self._run_job, args=(spec, msg), daemon=True,
                             name=f"job-{spec.job_id}")
        with self._lock:
            self._running[spec.job_id] = (t, msg)
        if self.metrics:
            self.metrics.running.set(self.running())
        t.start()

    def _run_job(self, spec: JobSpec, msg) -> None:
        progress = {"pct": 0, "stage": "claimed"}
        done = threading.Event()

        def on_progress(pct: int, stage: str) -> None:
            if stage != progress["stage"]:  # one status write per stage, not per shard
                try:
                    self.status.heartbeat(spec.job_id, self.driver_id, self.config.lease_s,
                                          pct, stage)
                except Exception as exc:
                    log.warning("progress of %s not recorded: %s", spec.job_id, exc)
                progress.update(pct=pct, stage=stage)
                self._raise_if_cancelled(spec)  # a stage boundary
                return
            progress.update(pct=pct, stage=stage)

        def heartbeat() -> None:
            while not done.wait(self.config.heartbeat_s):
                try:
                    self.queue.set_visibility(msg.receipt, self.config.visibility_s)
                    self.status.heartbeat(spec.job_id, self.driver_id, self.config.lease_s,
                                          progress["pct"], progress["stage"])
                except Exception as exc:
                    log.warning("heartbeat for %s failed: %s", spec.job_id, exc)

        hb = threading.Thread(target=heartbeat, daemon=True)
        hb.start()
        out = self.work_dir / f"{spec.job_id}-{uuid.uuid4().hex[:6]}"
        try:
            params = self._params(spec, out)
            run_recovery(params, self.engine, progress=on_progress)
            if spec.job_id in self._released:
                return
            self._raise_if_cancelled(spec)  # the last boundary: nothing published yet
            prefix = self.results.upload(spec.job_id, out)
            done.set()  # no heartbeat may touch the message once it is being deleted
            hb.join()
            if self.status.complete(spec.job_id, self.driver_id, prefix):
                self.queue.delete(msg.receipt)
                self.stats["completed"] += 1
                self._count("completed", spec)
            else:
                log.warning("job %s: lease lost before completion; leaving the message",
                            spec.job_id)
        except JobCancelled:
            done.set()
            hb.join()
            self._finish_cancel(spec, msg)
        except ValueError as exc:  # the submitter's error: will never succeed
            reason = f"{type(exc).__name__}: {exc}"
            self.status.fail(spec.job_id, reason, driver_id=self.driver_id)
            self.queue.dead_letter(msg, reason)
            self.stats["failed"] += 1
            self._count("failed", spec)
        except ConfigurationError as exc:  # the operator's: keep the message, say so loudly
            self._operator_error(spec, msg, exc)
        except Exception as exc:  # transient: retry with backoff, the queue counts receives
            reason = f"transient {type(exc).__name__}: {exc}"
            log.warning("job %s attempt %d failed: %s", spec.job_id, msg.receive_count, reason)
            self.stats["transient"] += 1
            try:
                if msg.receive_count >= MAX_RECEIVES:
                    self.status.fail(spec.job_id, f"gave up after {msg.receive_count} "
                                     f"attempts; last error: {reason}", driver_id=self.driver_id,
                                     kind=TRANSIENT)
                    self._count("failed", spec)
                else:
                    self.status.release(spec.job_id, self.driver_id, error=reason)
                self.queue.set_visibility(
                    msg.receipt, self.config.backoff_s * 2 ** (msg.receive_count - 1))
            except Exception as inner:
                log.warning("could not release %s: %s", spec.job_id, inner)
        finally:
            done.set()
            shutil.rmtree(out, ignore_errors=True)
            with self._lock:
                self._running.pop(spec.job_id, None)
            if self.metrics:
                self.metrics.running.set(self.running())

    def _raise_if_cancelled(self, spec: JobSpec) -> None:
        try:
            record = self.status.get(spec.job_id) or {}
        except Exception as exc:  # the store is down: keep running, ask again next stage
            log.warning("cancel state of %s not read: %s", spec.job_id, exc)
            return
        if record.get("cancelRequested"):
            raise JobCancelled(spec.job_id)

    def _finish_cancel(self, spec: JobSpec, msg) -> None:
        """Record CANCELLED (this driver holds the lease) and delete the message."""
        if self.status.cancelled(spec.job_id, self.driver_id):
            self.queue.delete(msg.receipt)
            self.stats["cancelled"] += 1
            log.info("job %s cancelled at stage boundary; no outputs published", spec.job_id)
        else:
            log.warning("job %s: lease lost before the cancel was recorded", spec.job_id)

    def _over_user_limit(self, spec: JobSpec) -> bool:
        """Whether the job's user already has ``max_running_per_user`` jobs RUNNING (on any
        driver: counted in the status store), so that one user's many jobs cannot hold every
        slot while others wait."""
        limit = self.config.max_running_per_user
        if not limit or not spec.submitted_by:
            return False
        running, _ = self.status.list_page(status=RUNNING, limit=min(limit, MAX_LIST),
                                           submitted_by=spec.submitted_by)
        return len(running) >= limit

    def _defer(self, msg) -> None:
        """Put the message back at the end of its queue, after ``defer_s``: sent again, then
        the received copy deleted, so the wait does not count towards its receives (the
        redrive policy would dead-letter a job that merely waited its turn)."""
        self.queue.send(msg.body, delay_s=self.config.defer_s)
        self.queue.delete(msg.receipt)
        self.stats["deferred"] += 1

    def _check_serviceable(self, spec: JobSpec) -> None:
        """Refuse, before claiming, what this deployment's shard plans cannot serve."""
        check = getattr(self.engine, "check_k", None)
        if check is not None:
            check(spec.n_neighbors)

    def _dead_letter(self, msg, reason: str, job_id: str | None) -> None:
        if job_id:
            self.status.fail(job_id, reason, params={"message": msg.body[:2000]})
        self.queue.dead_letter(msg, reason)
        self.stats["dead_lettered"] += 1
        self._count("failed")
        log.warning("dead-lettered %s: %s", msg.message_id, reason)

    def _operator_error(self, spec: JobSpec, msg, exc: Exception) -> None:
        """A valid job this deployment cannot run: FAILED with the operator's reason, the
        message kept (hidden for ``operator_backoff_s``), a metric raised, an ERROR logged."""
        reason = f"operator: this deployment cannot run the job: {exc}"
        log.error("OPERATOR ACTION NEEDED (job %s): %s; the message is kept and retried in "
                  "%d s", spec.job_id, exc, self.config.operator_backoff_s)
        self.stats["operator"] += 1
        if self.metrics:
            self.metrics.operator_errors.inc(tags={"stream": spec.stream_key or "region"})
        try:
            self.status.fail(spec.job_id, reason, driver_id=self.driver_id,
                             params=spec.to_message(), kind=OPERATOR)
            self.queue.set_visibility(msg.receipt, self.config.operator_backoff_s)
        except Exception as inner:
            log.warning("could not record the operator error of %s: %s", spec.job_id, inner)

    def _params(self, spec: JobSpec, out: Path) -> RecoverParams:
        input_path = None if spec.source == "synthetic" else spec.source
        cache = (spec.cache or self.results.cache_location()) if spec.source in GAIA_SOURCES \
            else None
        return RecoverParams(stream_key=spec.stream_key, region=spec.region, cache=cache,
                             n_neighbors=spec.n_neighbors,
                             sigma_threshold=spec.sigma_threshold, input_path=input_path,
                             out_dir=str(out), seed=spec.seed, n_background=spec.n_background,
                             n_stream=spec.n_stream, shards=spec.shards, columns=spec.columns,
                             member_probability=spec.member_probability,
                             photometry=spec.photometry, orientations=spec.orientations)

    # ------------------------------------------------------------------ housekeeping
    def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            left = dict(self._running)
        for job_id, (_thread, msg) in left.items():
            self._released.add(job_id)
            try:
                self.status.release(job_id, self.driver_id, error="driver stopped (drain bound)")
                self.queue.set_visibility(msg.receipt, 0)
                self.stats["released"] += 1
            except Exception as exc:
                log.warning("could not release %s: %s", job_id, exc)

    def _sweep(self) -> None:
        try:
            for job_id in self.status.expire_leases():
                log.warning("lease of %s expired: back to PENDING", job_id)
        except Exception as exc:
            log.warning("sweep failed: %s", exc)

    def _count(self, what: str, spec: JobSpec | None = None) -> None:
        if self.metrics:
            stream = "invalid" if spec is None else (spec.stream_key or "region")
            getattr(self.metrics, what).inc(tags={"stream": stream})
