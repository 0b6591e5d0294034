"""Job status stores: DynamoDB on the cluster, SQLite for the embedded local mode.

Both implement the same state machine, every transition a *conditional* write::

    (none) --create--> PENDING --claim--> RUNNING --complete--> COMPLETED
                          ^                  |  \\--fail--> FAILED
                          +----release-------+
    RUNNING with an expired lease can be claimed again (another driver takes over).
    PENDING --cancel--> CANCELLED; RUNNING --cancel--> RUNNING with ``cancelRequested``,
    which its driver honours at the next stage boundary (--cancelled--> CANCELLED, no outputs).

* ``claim`` succeeds only if the job is new, PENDING, or RUNNING with an expired lease, so two
  drivers never run one job at once (atomic in SQLite and in DynamoDB; moto's emulation of
  DynamoDB is not atomic under concurrent requests, which is why the race test uses SQLite).
* ``heartbeat``, ``complete`` and ``release`` require the caller to hold the lease.
* COMPLETED and FAILED are final for drivers, with two exceptions: an operator's explicit
  ``ray-app dlq --redrive`` ``requeue``s a FAILED job to PENDING, and a job FAILED with
  ``errorKind = "operator"`` (a valid job this deployment's configuration could not run; its
  message was released, not dead-lettered) can be claimed again once the operator fixed it.

Records: jobId, status, progress (0-100), stage, createdAt/startedAt/updatedAt/finishedAt
(ISO 8601 UTC), attempts, driverId, leaseExpires (epoch s), error (<= 1000 chars),
resultPrefix, params (JSON), history (list of {t, status, progress, stage}), errorKind
(``input``, ``operator`` or ``transient``: who must act on ``error``), cancelRequested
(true once a cancel was asked for a RUNNING job), submittedBy (from params, for listings).

``history`` records transitions only (a new status or a new stage), never the periodic
heartbeats, and keeps the last :data:`MAX_HISTORY` of them: a DynamoDB item is capped at
400 KB, and a 24-hour job heartbeating every 30 s would otherwise append 2880 entries.

Listing is newest first by ``updatedAt`` and paged by an opaque cursor. In DynamoDB it queries
the global secondary index :data:`STATUS_INDEX` (hash ``status``, range ``updatedAt``, created
by ``ray-app provision``): one partition per status, merged newest first when no status is
asked for. No listing scans the table.
"""

from __future__ import annotations

import base64
import functools
import heapq
import itertools
import json
import math
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from .sqlite_tx import ImmediateTx

PENDING, RUNNING, COMPLETED, FAILED = "PENDING", "RUNNING", "COMPLETED", "FAILED"
CANCELLED = "CANCELLED"
FINAL = (COMPLETED, FAILED, CANCELLED)
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
#: What :meth:`cancel` did: the job is now CANCELLED, or its driver was asked to stop.
CANCEL_DONE, CANCEL_REQUESTED = "cancelled", "requested"
MAX_ERROR = 1000
#: Who must act on a failure: the submitter, the operator, or nobody (retries ran out).
INPUT, OPERATOR, TRANSIENT = "input", "operator", "transient"
MAX_HISTORY = 50
MAX_LIST = 1000
STATUS_INDEX = "status-updatedAt"


def validate_listing(status: str | None, limit: int, submitted_by: str | None = None) -> None:
    """Raise ValueError naming the bad value (``ray-app jobs``, the API's query string)."""
    if submitted_by is not None and (not isinstance(submitted_by, str)
                                     or not 1 <= len(submitted_by) <= 256):
        raise ValueError(f"submittedBy must be a string of 1-256 characters, got "
                         f"{submitted_by!r}")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be an integer in [1, {MAX_LIST}], got {limit!r}")


def encode_cursor(status: str | None, after: dict) -> str:
    raw = json.dumps({"status": status, "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, status: str | None) -> dict:
    """The position a cursor from :func:`encode_cursor` holds, for the same status filter."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        after = data["after"]
        if not isinstance(after, dict):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"cursor {cursor[:40]!r} is not one that a job listing returned"
                         ) from None
    if data.get("status") != status:
        raise ValueError(f"cursor was made for status={data.get('status')!r}, "
                         f"not status={status!r}: list again without --cursor")
    return after


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def truncate_error(error: str) -> str:
    error = str(error)
    return error if len(error) <= MAX_ERROR else error[:MAX_ERROR - 3] + "..."


class JobExists(ValueError):
    """create() for a jobId that already has a record."""


class SqliteStatusStore:
    """Status store in one SQLite file (embedded local mode, and the atomic reference)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("""CREATE TABLE IF NOT EXISTS jobs (
                jobId TEXT PRIMARY KEY, status TEXT NOT NULL, progress INTEGER DEFAULT 0,
                stage TEXT, createdAt TEXT, startedAt TEXT, updatedAt TEXT, finishedAt TEXT,
                attempts INTEGER DEFAULT 0, driverId TEXT, leaseExpires REAL, error TEXT,
                resultPrefix TEXT, params TEXT, history TEXT DEFAULT '[]', errorKind TEXT)""")
            cols = {r["name"] for r in c.execute("PRAGMA table_info(jobs)")}
            for col, kind in (("errorKind", "TEXT"), ("cancelRequested", "INTEGER")):
                if col not in cols:  # a store made by an older version
                    c.execute(f"ALTER TABLE jobs ADD COLUMN {col} {kind}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return ImmediateTx(conn)

    def _ensure(self, job_id: str, params: dict | None, now: float) -> None:
        """A PENDING row for a job first seen through the queue (no-op if it exists)."""
        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO jobs (jobId, status, progress, stage, createdAt, "
                      "updatedAt, attempts, params, history) VALUES (?,?,?,?,?,?,?,?,?)",
                      (job_id, PENDING, 0, "queued", _iso(now), _iso(now), 0,
                       json.dumps(params or {}), "[]"))

    def _update(self, job_id: str, where: str, args: tuple, sets: dict, status: str | None,
                progress=None, stage=None, now=None) -> bool:
        """Apply ``sets`` if the row matches ``where``, in one transaction. A callable value is
        computed from the current row (inside the transaction)."""
        now = time.time() if now is None else now
        with self._conn() as c:
            row = c.execute(f"SELECT * FROM jobs WHERE jobId=? AND ({where})",
                            (job_id, *args)).fetchone()
            if row is None:
                return False
            sets = {k: v(row) if callable(v) else v for k, v in sets.items()}
            sets["updatedAt"] = _iso(now)
            new_status = status or row["status"]
            new_stage = stage if stage is not None else row["stage"]
            if status is not None or new_stage != row["stage"]:  # a transition, not a beat
                hist = json.loads(row["history"] or "[]")
                hist.append({"t": _iso(now), "status": new_status,
                             "progress": progress if progress is not None else row["progress"],
                             "stage": new_stage})
                sets["history"] = json.dumps(hist[-MAX_HISTORY:])
            if status:
                sets["status"] = status
            if progress is not None:
                sets["progress"] = int(progress)
            if stage is not None:
                sets["stage"] = stage
            cols = ", ".join(f"{k}=?" for k in sets)
            c.execute(f"UPDATE jobs SET {cols} WHERE jobId=?", (*sets.values(), job_id))
            return True

    def create(self, job_id: str, params: dict, now: float | None = None) -> None:
        now = time.time() if now is None else now
        hist = json.dumps([{"t": _iso(now), "status": PENDING, "progress": 0, "stage": "queued"}])
        try:
            with self._conn() as c:
                c.execute("INSERT INTO jobs (jobId, status, progress, stage, createdAt, "
                          "updatedAt, attempts, params, history) VALUES (?,?,?,?,?,?,?,?,?)",
                          (job_id, PENDING, 0, "queued", _iso(now), _iso(now), 0,
                           json.dumps(params), hist))
        except sqlite3.IntegrityError:
            raise JobExists(f"job {job_id!r} already exists") from None

    def discard(self, job_id: str) -> bool:
        """Delete a job that is still PENDING (a submit whose enqueue failed); True if done."""
        with self._conn() as c:
            cur = c.execute("DELETE FROM jobs WHERE jobId=? AND status=?", (job_id, PENDING))
            return cur.rowcount == 1

    def claim(self, job_id: str, driver_id: str, lease_s: float, params: dict | None = None,
              now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self._ensure(job_id, params, now)
        return self._update(
            job_id, "status=? OR (status=? AND leaseExpires<?) OR (status=? AND errorKind=?)",
            (PENDING, RUNNING, now, FAILED, OPERATOR),
            {"driverId": driver_id, "leaseExpires": now + lease_s,
             "attempts": lambda row: (row["attempts"] or 0) + 1,
             "startedAt": lambda row: row["startedAt"] or _iso(now),
             "error": None, "errorKind": None, "finishedAt": None}, RUNNING, 0, "claimed", now)

    def heartbeat(self, job_id: str, driver_id: str, lease_s: float, progress: int | None = None,
                  stage: str | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._update(job_id, "status=? AND driverId=?", (RUNNING, driver_id),
                            {"leaseExpires": now + lease_s}, None, progress, stage, now)

    def complete(self, job_id: str, driver_id: str, result_prefix: str,
                 now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._update(job_id, "status=? AND driverId=?", (RUNNING, driver_id),
                            {"resultPrefix": result_prefix, "finishedAt": _iso(now),
                             "leaseExpires": None}, COMPLETED, 100, "done", now)

    def fail(self, job_id: str, error: str, driver_id: str | None = None,
             params: dict | None = None, now: float | None = None,
             kind: str = INPUT) -> bool:
        now = time.time() if now is None else now
        self._ensure(job_id, params, now)
        return self._update(job_id, "status=? OR (status=? AND driverId=?)",
                            (PENDING, RUNNING, driver_id),
                            {"error": truncate_error(error), "errorKind": kind,
                             "finishedAt": _iso(now), "leaseExpires": None},
                            FAILED, None, "failed", now)

    def release(self, job_id: str, driver_id: str, error: str | None = None,
                now: float | None = None) -> bool:
        now = time.time() if now is None else now
        sets = {"driverId": None, "leaseExpires": None}
        if error:
            sets["error"] = truncate_error(error)
        return self._update(job_id, "status=? AND driverId=?", (RUNNING, driver_id), sets,
                            PENDING, 0, "released", now)

    def cancel(self, job_id: str, now: float | None = None) -> str | None:
        """PENDING -> CANCELLED (:data:`CANCEL_DONE`); RUNNING -> ``cancelRequested``
        (:data:`CANCEL_REQUESTED`, the driver stops at its next stage boundary); None when
        the job is absent or already final."""
        now = time.time() if now is None else now
        if self._update(job_id, "status=?", (PENDING,),
                        {"finishedAt": _iso(now), "cancelRequested": 1}, CANCELLED, None,
                        "cancelled", now):
            return CANCEL_DONE
        if self._update(job_id, "status=?", (RUNNING,), {"cancelRequested": 1}, None, None,
                        None, now):
            return CANCEL_REQUESTED
        return None

    def cancelled(self, job_id: str, driver_id: str, now: float | None = None) -> bool:
        """The lease holder honours a cancel request: RUNNING -> CANCELLED."""
        now = time.time() if now is None else now
        return self._update(job_id, "status=? AND driverId=?", (RUNNING, driver_id),
                            {"finishedAt": _iso(now), "leaseExpires": None}, CANCELLED, None,
                            "cancelled", now)

    def requeue(self, job_id: str, now: float | None = None) -> bool:
        """Operator redrive: FAILED -> PENDING (nothing else moves a job out of FAILED)."""
        return self._update(job_id, "status=?", (FAILED,), {"finishedAt": None},
                            PENDING, 0, "requeued", now)

    def expire_leases(self, now: float | None = None) -> list[str]:
        """Sweeper: RUNNING jobs whose lease expired go back to PENDING."""
        now = time.time() if now is None else now
        with self._conn() as c:
            ids = [r["jobId"] for r in c.execute(
                "SELECT jobId FROM jobs WHERE status=? AND leaseExpires<?", (RUNNING, now))]
        return [j for j in ids if self._update(
            j, "status=? AND leaseExpires<?", (RUNNING, now),
            {"driverId": None, "leaseExpires": None, "error": "lease expired"},
            PENDING, 0, "lease expired", now)]

    def get(self, job_id: str) -> dict | None:
        with self._conn() as c:
            row = c.execute("SELECT * FROM jobs WHERE jobId=?", (job_id,)).fetchone()
        return _row(dict(row)) if row else None

    def list_page(self, status: str | None = None, limit: int = 50,
                  cursor: str | None = None, submitted_by: str | None = None
                  ) -> tuple[list[dict], str | None]:
        """Up to ``limit`` jobs newest first (by updatedAt, then jobId), of one submitter if
        ``submitted_by``, and the cursor of the next page (None after the last)."""
        validate_listing(status, limit, submitted_by)
        where, args = [], []
        if status:
            where.append("status=?")
            args.append(status)
        if submitted_by:
            where.append("json_extract(params, '$.submittedBy')=?")
            args.append(submitted_by)
        if cursor:
            after = decode_cursor(cursor, status)
            where.append("(updatedAt, jobId) < (?, ?)")
            args += [after.get("updatedAt", ""), after.get("jobId", "")]
        q = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._conn() as c:
            rows = c.execute(q + " ORDER BY updatedAt DESC, jobId DESC LIMIT ?",
                             (*args, limit + 1)).fetchall()
        items = [_row(dict(r)) for r in rows[:limit]]
        more = len(rows) > limit
        last = items[-1] if items else None
        nxt = encode_cursor(status, {"updatedAt": last["updatedAt"], "jobId": last["jobId"]}
                            ) if more and last else None
        return items, nxt

    def list(self, status: str | None = None, limit: int = 50) -> list[dict]:
        return self.list_page(status, limit)[0]


def _row(r: dict) -> dict:
    r["history"] = json.loads(r.get("history") or "[]")
    r["params"] = json.loads(r.get("params") or "{}")
    if r.get("cancelRequested") is not None:
        r["cancelRequested"] = bool(r["cancelRequested"])
    if r["params"].get("submittedBy"):
        r["submittedBy"] = r["params"]["submittedBy"]
    return {k: v for k, v in r.items() if v is not None}


class DynamoStatusStore:
    """Status store in a DynamoDB table keyed by ``jobId`` (string).

    The client comes from boto3's standard configuration (``AWS_ENDPOINT_URL`` honoured).
    """

    def __init__(self, table: str, client=None, ttl_days: float = 30.0):
        from . import aws

        self.table = table
        self.dynamodb = client or aws.client("dynamodb")
        self.ttl_s = ttl_days * 86400
        # the stage this store last wrote for a lease it holds: a heartbeat with the same
        # stage is not a transition and adds no history entry
        self._stages: dict[tuple[str, str], str] = {}

    def _cond_update(self, job_id: str, sets: dict, condition: str, values: dict,
                     history: dict, remove: tuple = ()) -> bool:
        from botocore.exceptions import ClientError

        names = {"#s": "status"}
        vals = {k: _ddb(v) for k, v in values.items()}
        parts = []
        if history is not None:
            names["#history"] = "history"
            vals.update({":hist": {"L": [_ddb(history)]}, ":empty": {"L": []}})
            parts.append("#history = list_append(if_not_exists(#history, :empty), :hist)")
        for i, (k, v) in enumerate(sets.items()):
            if isinstance(v, _Raw):
                parts.append(f"#{k} = {v.expr}")
            else:
                parts.append(f"#{k} = :v{i}")
                vals[f":v{i}"] = _ddb(v)
            names[f"#{k}"] = k
        expr = "SET " + ", ".join(parts)
        if remove:
            expr += " REMOVE " + ", ".join(f"#{r}" for r in remove)
            names.update({f"#{r}": r for r in remove})
        for attr in ("leaseExpires", "driverId", "errorKind", "cancelRequested"):
            if f"#{attr}" in condition:
                names[f"#{attr}"] = attr
        try:
            self.dynamodb.update_item(
                TableName=self.table, Key={"jobId": {"S": job_id}}, UpdateExpression=expr,
                ConditionExpression=condition, ExpressionAttributeNames=names,
                ExpressionAttributeValues=vals)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        if history is not None:
            self._trim_history(job_id)
        return True

    def _trim_history(self, job_id: str) -> None:
        """Keep the last MAX_HISTORY entries. DynamoDB cannot append and remove on one list
        in one update, so entries beyond the cap are removed by index, guarded by the list's
        length so that a concurrent append never loses the wrong entry."""
        from botocore.exceptions import ClientError

        item = self.dynamodb.get_item(TableName=self.table, Key={"jobId": {"S": job_id}},
                                      ProjectionExpression="#h",
                                      ExpressionAttributeNames={"#h": "history"},
                                      ConsistentRead=True).get("Item", {})
        n = len(item.get("history", {}).get("L", []))
        if n <= MAX_HISTORY:
            return
        drop = ", ".join(f"#h[{i}]" for i in range(n - MAX_HISTORY))
        try:
            self.dynamodb.update_item(
                TableName=self.table, Key={"jobId": {"S": job_id}}, UpdateExpression="REMOVE "
                + drop, ConditionExpression="size(#h) = :n",
                ExpressionAttributeNames={"#h": "history"},
                ExpressionAttributeValues={":n": {"N": str(n)}})
        except ClientError as exc:  # someone appended meanwhile: their write trims next
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def create(self, job_id: str, params: dict, now: float | None = None) -> None:
        from botocore.exceptions import ClientError

        now = time.time() if now is None else now
        item = {"jobId": job_id, "status": PENDING, "progress": 0, "stage": "queued",
                "createdAt": _iso(now), "updatedAt": _iso(now), "attempts": 0,
                "params": json.dumps(params), "ttl": int(now + self.ttl_s),
                "history": [{"t": _iso(now), "status": PENDING, "progress": 0,
                             "stage": "queued"}]}
        if params.get("submittedBy"):  # top level: listings filter on it
            item["submittedBy"] = params["submittedBy"]
        try:
            self.dynamodb.put_item(TableName=self.table,
                                   Item={k: _ddb(v) for k, v in item.items()},
                                   ConditionExpression="attribute_not_exists(jobId)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise JobExists(f"job {job_id!r} already exists") from None
            raise

    def discard(self, job_id: str) -> bool:
        """Delete a job that is still PENDING (a submit whose enqueue failed); True if done."""
        from botocore.exceptions import ClientError

        try:
            self.dynamodb.delete_item(TableName=self.table, Key={"jobId": {"S": job_id}},
                                      ConditionExpression="#s = :p",
                                      ExpressionAttributeNames={"#s": "status"},
                                      ExpressionAttributeValues={":p": {"S": PENDING}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def claim(self, job_id: str, driver_id: str, lease_s: float, params: dict | None = None,
              now: float | None = None) -> bool:
        now = time.time() if now is None else now
        sets = {"status": RUNNING, "driverId": driver_id, "leaseExpires": now + lease_s,
                "attempts": _Raw("if_not_exists(#attempts, :zero) + :one"),
                "startedAt": _Raw("if_not_exists(#startedAt, :now_iso)"),
                "createdAt": _Raw("if_not_exists(#createdAt, :now_iso)"),
                "params": _Raw("if_not_exists(#params, :params)"),
                "ttl": _Raw("if_not_exists(#ttl, :ttl)"),
                "updatedAt": _iso(now), "progress": 0, "stage": "claimed"}
        values = {":pending": PENDING, ":running": RUNNING, ":now": now, ":zero": 0,
                  ":one": 1, ":failed": FAILED, ":op": OPERATOR, ":now_iso": _iso(now),
                  ":params": json.dumps(params or {}), ":ttl": int(now + self.ttl_s)}
        if (params or {}).get("submittedBy"):  # a job first seen through the queue
            sets["submittedBy"] = _Raw("if_not_exists(#submittedBy, :sb)")
            values[":sb"] = params["submittedBy"]
        return self._cond_update(
            job_id, sets,
            "attribute_not_exists(jobId) OR #s = :pending OR "
            "(#s = :running AND #leaseExpires < :now) OR (#s = :failed AND #errorKind = :op)",
            values,
            {"t": _iso(now), "status": RUNNING, "progress": 0, "stage": "claimed"},
            remove=("error", "errorKind", "finishedAt"))

    def heartbeat(self, job_id: str, driver_id: str, lease_s: float, progress: int | None = None,
                  stage: str | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        sets = {"leaseExpires": now + lease_s, "updatedAt": _iso(now)}
        hist = {"t": _iso(now), "status": RUNNING}
        if progress is not None:
            sets["progress"] = int(progress)
            hist["progress"] = int(progress)
        key = (job_id, driver_id)
        transition = stage is not None and self._stages.get(key) != stage
        if stage is not None:
            sets["stage"] = stage
            hist["stage"] = stage
        ok = self._cond_update(job_id, sets, "#s = :running AND #driverId = :d",
                               {":running": RUNNING, ":d": driver_id},
                               hist if transition else None)
        if ok and stage is not None:
            self._stages[key] = stage
        return ok

    def complete(self, job_id: str, driver_id: str, result_prefix: str,
                 now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self._stages.pop((job_id, driver_id), None)
        return self._cond_update(
            job_id, {"status": COMPLETED, "progress": 100, "stage": "done",
                     "resultPrefix": result_prefix, "finishedAt": _iso(now),
                     "updatedAt": _iso(now)},
            "#s = :running AND #driverId = :d", {":running": RUNNING, ":d": driver_id},
            {"t": _iso(now), "status": COMPLETED, "progress": 100, "stage": "done"},
            remove=("leaseExpires",))

    def fail(self, job_id: str, error: str, driver_id: str | None = None,
             params: dict | None = None, now: float | None = None,
             kind: str = INPUT) -> bool:
        now = time.time() if now is None else now
        self._stages.pop((job_id, driver_id), None)
        return self._cond_update(
            job_id, {"status": FAILED, "stage": "failed", "error": truncate_error(error),
                     "errorKind": kind,
                     "finishedAt": _iso(now), "updatedAt": _iso(now),
                     "createdAt": _Raw("if_not_exists(#createdAt, :now_iso)"),
                     "params": _Raw("if_not_exists(#params, :params)"),
                     "attempts": _Raw("if_not_exists(#attempts, :zero)"),
                     "ttl": _Raw("if_not_exists(#ttl, :ttl)")},
            "attribute_not_exists(jobId) OR #s = :pending OR "
            "(#s = :running AND #driverId = :d)",
            {":pending": PENDING, ":running": RUNNING, ":d": driver_id or "-",
             ":now_iso": _iso(now), ":params": json.dumps(params or {}), ":zero": 0,
             ":ttl": int(now + self.ttl_s)},
            {"t": _iso(now), "status": FAILED, "stage": "failed"}, remove=("leaseExpires",))

    def release(self, job_id: str, driver_id: str, error: str | None = None,
                now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self._stages.pop((job_id, driver_id), None)
        sets = {"status": PENDING, "progress": 0, "stage": "released", "updatedAt": _iso(now)}
        if error:
            sets["error"] = truncate_error(error)
        return self._cond_update(job_id, sets, "#s = :running AND #driverId = :d",
                                 {":running": RUNNING, ":d": driver_id},
                                 {"t": _iso(now), "status": PENDING, "stage": "released"},
                                 remove=("leaseExpires", "driverId"))

    def cancel(self, job_id: str, now: float | None = None) -> str | None:
        """PENDING -> CANCELLED (:data:`CANCEL_DONE`); RUNNING -> ``cancelRequested``
        (:data:`CANCEL_REQUESTED`); None when the job is absent or already final."""
        now = time.time() if now is None else now
        if self._cond_update(job_id, {"status": CANCELLED, "stage": "cancelled",
                                      "cancelRequested": True, "finishedAt": _iso(now),
                                      "updatedAt": _iso(now)}, "#s = :pending",
                             {":pending": PENDING},
                             {"t": _iso(now), "status": CANCELLED, "stage": "cancelled"}):
            return CANCEL_DONE
        if self._cond_update(job_id, {"cancelRequested": True, "updatedAt": _iso(now)},
                             "#s = :running", {":running": RUNNING}, None):
            return CANCEL_REQUESTED
        return None

    def cancelled(self, job_id: str, driver_id: str, now: float | None = None) -> bool:
        """The lease holder honours a cancel request: RUNNING -> CANCELLED."""
        now = time.time() if now is None else now
        self._stages.pop((job_id, driver_id), None)
        return self._cond_update(
            job_id, {"status": CANCELLED, "stage": "cancelled", "finishedAt": _iso(now),
                     "updatedAt": _iso(now)}, "#s = :running AND #driverId = :d",
            {":running": RUNNING, ":d": driver_id},
            {"t": _iso(now), "status": CANCELLED, "stage": "cancelled"},
            remove=("leaseExpires",))

    def requeue(self, job_id: str, now: float | None = None) -> bool:
        """Operator redrive: FAILED -> PENDING (nothing else moves a job out of FAILED)."""
        now = time.time() if now is None else now
        return self._cond_update(job_id, {"status": PENDING, "progress": 0, "stage": "requeued",
                                          "updatedAt": _iso(now)}, "#s = :failed",
                                 {":failed": FAILED},
                                 {"t": _iso(now), "status": PENDING, "stage": "requeued"},
                                 remove=("finishedAt",))

    def expire_leases(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        out = []
        for item in self._query(RUNNING, filter_expr="leaseExpires < :now",
                                filter_values={":now": now}):
            if self._cond_update(item["jobId"], {"status": PENDING, "stage": "lease expired",
                                                 "error": "lease expired",
                                                 "updatedAt": _iso(now)},
                                 "#s = :running AND #leaseExpires < :now",
                                 {":running": RUNNING, ":now": now},
                                 {"t": _iso(now), "status": PENDING, "stage": "lease expired"},
                                 remove=("leaseExpires", "driverId")):
                out.append(item["jobId"])
        return out

    def _query(self, status: str, after: dict | None = None, page_size: int = 100,
               filter_expr: str | None = None, filter_values: dict | None = None,
               filter_names: dict | None = None):
        """Items of one status from the status index, newest first, lazily (boto3's query
        paginator; ``after`` = the index key of the last item already seen)."""
        kwargs = {"TableName": self.table, "IndexName": STATUS_INDEX,
                  "KeyConditionExpression": "#s = :st", "ScanIndexForward": False,
                  "ExpressionAttributeNames": {"#s": "status"},
                  "ExpressionAttributeValues": {":st": {"S": status}},
                  "PaginationConfig": {"PageSize": page_size}}
        if after:
            kwargs["ExclusiveStartKey"] = {k: {"S": v} for k, v in after.items()}
        if filter_expr:
            kwargs["FilterExpression"] = filter_expr
            kwargs["ExpressionAttributeValues"].update(
                {k: _ddb(v) for k, v in filter_values.items()})
            kwargs["ExpressionAttributeNames"].update(filter_names or {})
        for page in self.dynamodb.get_paginator("query").paginate(**kwargs):
            for item in page.get("Items", []):
                yield _py_item(item)

    def get(self, job_id: str) -> dict | None:
        item = self.dynamodb.get_item(TableName=self.table, Key={"jobId": {"S": job_id}},
                                      ConsistentRead=True).get("Item")
        return _py_item(item) if item else None

    def list_page(self, status: str | None = None, limit: int = 50,
                  cursor: str | None = None, submitted_by: str | None = None
                  ) -> tuple[list[dict], str | None]:
        """Up to ``limit`` jobs newest first and the cursor of the next page (None after the
        last). Each status is one partition of the index, read lazily; with no status asked
        for, the partitions are merged newest first and the cursor keeps one position each.
        ``submitted_by`` filters on the item's top-level ``submittedBy`` (DynamoDB applies
        the filter before returning a page, so the positions stay exact)."""
        validate_listing(status, limit, submitted_by)
        statuses = [status] if status else list(STATUSES)
        after = decode_cursor(cursor, status) if cursor else {}
        filt = ({"filter_expr": "#sb = :sb", "filter_values": {":sb": submitted_by},
                 "filter_names": {"#sb": "submittedBy"}} if submitted_by else {})

        def keyed(st):
            for item in self._query(st, after.get(st), page_size=min(limit + 1, 100), **filt):
                yield (item.get("updatedAt", ""), item["jobId"]), st, item

        merged = heapq.merge(*(keyed(st) for st in statuses), key=lambda t: t[0], reverse=True)
        taken = list(itertools.islice(merged, limit + 1))
        items, more = taken[:limit], len(taken) > limit
        position = dict(after)
        for _, st, item in items:
            position[st] = {"jobId": item["jobId"], "status": st,
                            "updatedAt": item["updatedAt"]}
        return [item for _, _, item in items], encode_cursor(status, position) if more else None

    def list(self, status: str | None = None, limit: int = 50) -> list[dict]:
        return self.list_page(status, limit)[0]


class _Raw:
    """An update-expression fragment instead of a value."""

    def __init__(self, expr: str):
        self.expr = expr


@functools.cache
def _serializers():
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def _ddb(v):
    """Python value -> DynamoDB attribute value (boto3's TypeSerializer: integers of any size
    stay exact, e.g. source_ids up to 2^63; floats go through Decimal)."""
    return _serializers()[0].serialize(_to_decimal(v))


def _to_decimal(v):
    if isinstance(v, float):
        if not math.isfinite(v):
            raise TypeError(f"cannot store {v!r} in DynamoDB")
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _to_decimal(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_to_decimal(x) for x in v]
    return v


def _py(v: dict):
    """DynamoDB attribute value -> Python (TypeDeserializer; numbers written without a
    fraction come back as exact ints, the others as floats)."""
    return _from_decimal(_serializers()[1].deserialize(v))


def _from_decimal(x):
    if isinstance(x, Decimal):
        return int(x) if x.as_tuple().exponent >= 0 else float(x)
    if isinstance(x, dict):
        return {k: _from_decimal(y) for k, y in x.items()}
    if isinstance(x, list):
        return [_from_decimal(y) for y in x]
    return x


def _py_item(item: dict) -> dict:
    out = {k: _py(v) for k, v in item.items()}
    if isinstance(out.get("params"), str):
        out["params"] = json.loads(out["params"])
    if "submittedBy" not in out and out.get("params", {}).get("submittedBy"):
        out["submittedBy"] = out["params"]["submittedBy"]
    return out
