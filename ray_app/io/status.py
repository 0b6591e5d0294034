"""Job status stores: DynamoDB on the cluster, SQLite for the embedded local mode.

Both implement the same state machine, every transition a *conditional* write::

    (none) --create--> PENDING --claim--> RUNNING --complete--> COMPLETED
                          ^                  |  \\--fail--> FAILED
                          +----release-------+
    RUNNING with an expired lease can be claimed again (another driver takes over).

* ``claim`` succeeds only if the job is new, PENDING, or RUNNING with an expired lease, so two
  drivers never run one job at once (atomic in SQLite and in DynamoDB; moto's emulation of
  DynamoDB is not atomic under concurrent requests, which is why the race test uses SQLite).
* ``heartbeat``, ``complete`` and ``release`` require the caller to hold the lease.
* COMPLETED and FAILED are final for drivers. The one exception is an operator's explicit
  ``ray-app dlq --redrive``, which ``requeue``s a FAILED job to PENDING for a new attempt.

Records: jobId, status, progress (0-100), stage, createdAt/startedAt/updatedAt/finishedAt
(ISO 8601 UTC), attempts, driverId, leaseExpires (epoch s), error (<= 1000 chars),
resultPrefix, params (JSON), history (list of {t, status, progress, stage}).
"""

from __future__ import annotations

import functools
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
FINAL = (COMPLETED, FAILED)
MAX_ERROR = 1000


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
                resultPrefix TEXT, params TEXT, history TEXT DEFAULT '[]')""")

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
            hist = json.loads(row["history"] or "[]")
            hist.append({"t": _iso(now), "status": status or row["status"],
                         "progress": progress if progress is not None else row["progress"],
                         "stage": stage if stage is not None else row["stage"]})
            sets = {**sets, "updatedAt": _iso(now), "history": json.dumps(hist)}
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
            job_id, "status=? OR (status=? AND leaseExpires<?)", (PENDING, RUNNING, now),
            {"driverId": driver_id, "leaseExpires": now + lease_s,
             "attempts": lambda row: (row["attempts"] or 0) + 1,
             "startedAt": lambda row: row["startedAt"] or _iso(now),
             "error": None}, RUNNING, 0, "claimed", now)

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
             params: dict | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self._ensure(job_id, params, now)
        return self._update(job_id, "status=? OR (status=? AND driverId=?)",
                            (PENDING, RUNNING, driver_id),
                            {"error": truncate_error(error), "finishedAt": _iso(now),
                             "leaseExpires": None}, FAILED, None, "failed", now)

    def release(self, job_id: str, driver_id: str, error: str | None = None,
                now: float | None = None) -> bool:
        now = time.time() if now is None else now
        sets = {"driverId": None, "leaseExpires": None}
        if error:
            sets["error"] = truncate_error(error)
        return self._update(job_id, "status=? AND driverId=?", (RUNNING, driver_id), sets,
                            PENDING, 0, "released", now)

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

    def list(self, status: str | None = None, limit: int = 50) -> list[dict]:
        with self._conn() as c:
            q = "SELECT * FROM jobs" + (" WHERE status=?" if status else "")
            rows = c.execute(q + " ORDER BY updatedAt DESC LIMIT ?",
                             ((status, limit) if status else (limit,))).fetchall()
        return [_row(dict(r)) for r in rows]


def _row(r: dict) -> dict:
    r["history"] = json.loads(r.get("history") or "[]")
    r["params"] = json.loads(r.get("params") or "{}")
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

    def _cond_update(self, job_id: str, sets: dict, condition: str, values: dict,
                     history: dict, remove: tuple = ()) -> bool:
        from botocore.exceptions import ClientError

        names = {"#s": "status", "#history": "history"}
        vals = {":hist": {"L": [_ddb(history)]}, ":empty": {"L": []},
                **{k: _ddb(v) for k, v in values.items()}}
        parts = ["#history = list_append(if_not_exists(#history, :empty), :hist)"]
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
        for attr in ("leaseExpires", "driverId"):
            if f"#{attr}" in condition:
                names[f"#{attr}"] = attr
        try:
            self.dynamodb.update_item(
                TableName=self.table, Key={"jobId": {"S": job_id}}, UpdateExpression=expr,
                ConditionExpression=condition, ExpressionAttributeNames=names,
                ExpressionAttributeValues=vals)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise

    def create(self, job_id: str, params: dict, now: float | None = None) -> None:
        from botocore.exceptions import ClientError

        now = time.time() if now is None else now
        item = {"jobId": job_id, "status": PENDING, "progress": 0, "stage": "queued",
                "createdAt": _iso(now), "updatedAt": _iso(now), "attempts": 0,
                "params": json.dumps(params), "ttl": int(now + self.ttl_s),
                "history": [{"t": _iso(now), "status": PENDING, "progress": 0,
                             "stage": "queued"}]}
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
        return self._cond_update(
            job_id,
            {"status": RUNNING, "driverId": driver_id, "leaseExpires": now + lease_s,
             "attempts": _Raw("if_not_exists(#attempts, :zero) + :one"),
             "startedAt": _Raw("if_not_exists(#startedAt, :now_iso)"),
             "createdAt": _Raw("if_not_exists(#createdAt, :now_iso)"),
             "params": _Raw("if_not_exists(#params, :params)"),
             "ttl": _Raw("if_not_exists(#ttl, :ttl)"),
             "updatedAt": _iso(now), "progress": 0, "stage": "claimed"},
            "attribute_not_exists(jobId) OR #s = :pending OR "
            "(#s = :running AND #leaseExpires < :now)",
            {":pending": PENDING, ":running": RUNNING, ":now": now, ":zero": 0, ":one": 1,
             ":now_iso": _iso(now), ":params": json.dumps(params or {}),
             ":ttl": int(now + self.ttl_s)},
            {"t": _iso(now), "status": RUNNING, "progress": 0, "stage": "claimed"},
            remove=("error",))

    def heartbeat(self, job_id: str, driver_id: str, lease_s: float, progress: int | None = None,
                  stage: str | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        sets = {"leaseExpires": now + lease_s, "updatedAt": _iso(now)}
        hist = {"t": _iso(now), "status": RUNNING}
        if progress is not None:
            sets["progress"] = int(progress)
            hist["progress"] = int(progress)
        if stage is not None:
            sets["stage"] = stage
            hist["stage"] = stage
        return self._cond_update(job_id, sets, "#s = :running AND #driverId = :d",
                                 {":running": RUNNING, ":d": driver_id}, hist)

    def complete(self, job_id: str, driver_id: str, result_prefix: str,
                 now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._cond_update(
            job_id, {"status": COMPLETED, "progress": 100, "stage": "done",
                     "resultPrefix": result_prefix, "finishedAt": _iso(now),
                     "updatedAt": _iso(now)},
            "#s = :running AND #driverId = :d", {":running": RUNNING, ":d": driver_id},
            {"t": _iso(now), "status": COMPLETED, "progress": 100, "stage": "done"},
            remove=("leaseExpires",))

    def fail(self, job_id: str, error: str, driver_id: str | None = None,
             params: dict | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._cond_update(
            job_id, {"status": FAILED, "stage": "failed", "error": truncate_error(error),
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
        sets = {"status": PENDING, "progress": 0, "stage": "released", "updatedAt": _iso(now)}
        if error:
            sets["error"] = truncate_error(error)
        return self._cond_update(job_id, sets, "#s = :running AND #driverId = :d",
                                 {":running": RUNNING, ":d": driver_id},
                                 {"t": _iso(now), "status": PENDING, "stage": "released"},
                                 remove=("leaseExpires", "driverId"))

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
        for item in self._scan("#s = :running AND leaseExpires < :now",
                               {":running": RUNNING, ":now": now}):
            if self._cond_update(item["jobId"], {"status": PENDING, "stage": "lease expired",
                                                 "error": "lease expired",
                                                 "updatedAt": _iso(now)},
                                 "#s = :running AND #leaseExpires < :now",
                                 {":running": RUNNING, ":now": now},
                                 {"t": _iso(now), "status": PENDING, "stage": "lease expired"},
                                 remove=("leaseExpires", "driverId")):
                out.append(item["jobId"])
        return out

    def _scan(self, condition: str | None = None, values: dict | None = None):
        kwargs = {"TableName": self.table}
        if condition:
            kwargs.update(FilterExpression=condition, ExpressionAttributeNames={"#s": "status"},
                          ExpressionAttributeValues={k: _ddb(v) for k, v in values.items()})
        while True:
            page = self.dynamodb.scan(**kwargs)
            for item in page.get("Items", []):
                yield _py_item(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, job_id: str) -> dict | None:
        item = self.dynamodb.get_item(TableName=self.table, Key={"jobId": {"S": job_id}},
                                      ConsistentRead=True).get("Item")
        return _py_item(item) if item else None

    def list(self, status: str | None = None, limit: int = 50) -> list[dict]:
        items = list(self._scan("#s = :st", {":st": status}) if status else self._scan())
        items.sort(key=lambda r: r.get("updatedAt", ""), reverse=True)
        return items[:limit]


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
    return out
