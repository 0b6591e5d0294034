"""Status stores: one state machine, SQLite and DynamoDB (moto server) behave the same."""

import threading
import time

import pytest

from ray_app.io.status import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    DynamoStatusStore,
    JobExists,
    SqliteStatusStore,
)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteStatusStore(tmp_path / "status.db")
    aws = request.getfixturevalue("aws")
    return DynamoStatusStore(aws["table"])


def test_lifecycle_and_history(store):
    store.create("j1", {"streamKey": "gd-1"})
    with pytest.raises(JobExists):
        store.create("j1", {})
    assert store.get("j1")["status"] == PENDING
    assert store.claim("j1", "d1", lease_s=60)
    assert not store.claim("j1", "d2", lease_s=60)  # leased by d1
    assert store.heartbeat("j1", "d1", 60, progress=40, stage="density")
    assert not store.heartbeat("j1", "d2", 60, progress=50, stage="x")  # not the owner
    assert not store.complete("j1", "d2", "s3://b/jobs/j1/")
    assert store.complete("j1", "d1", "s3://b/jobs/j1/")
    rec = store.get("j1")
    assert rec["status"] == COMPLETED and rec["progress"] == 100
    assert rec["resultPrefix"] == "s3://b/jobs/j1/" and rec["attempts"] == 1
    assert [h["status"] for h in rec["history"]] == [PENDING, RUNNING, RUNNING, COMPLETED]
    assert rec["history"][2]["progress"] == 40
    # final: nothing moves it back
    assert not store.claim("j1", "d3", 60, now=time.time() + 10**6)
    assert not store.fail("j1", "late failure", driver_id="d1")
    assert not store.release("j1", "d1")
    assert store.get("j1")["status"] == COMPLETED


def test_expired_lease_can_be_taken_over(store):
    t0 = time.time()
    assert store.claim("j2", "d1", lease_s=5, now=t0)  # a job created by its first claim
    assert not store.claim("j2", "d2", lease_s=5, now=t0 + 1)
    assert store.claim("j2", "d2", lease_s=5, now=t0 + 6)
    assert not store.heartbeat("j2", "d1", 5, now=t0 + 7)  # d1 lost the lease
    rec = store.get("j2")
    assert rec["driverId"] == "d2" and rec["attempts"] == 2


def test_fail_release_requeue_and_sweep(store):
    store.create("j3", {})
    assert store.claim("j3", "d1", 60)
    assert store.release("j3", "d1", error="transient boom")
    rec = store.get("j3")
    assert rec["status"] == PENDING and "boom" in rec["error"]
    assert store.claim("j3", "d1", 60)
    assert store.fail("j3", "x" * 5000, driver_id="d1")
    rec = store.get("j3")
    assert rec["status"] == FAILED and len(rec["error"]) == 1000
    assert not store.claim("j3", "d1", 60)
    assert store.requeue("j3") and store.get("j3")["status"] == PENDING
    assert not store.requeue("j3")  # only FAILED jobs
    t0 = time.time()
    assert store.claim("j3", "d9", lease_s=1, now=t0)
    assert store.expire_leases(now=t0 + 5) == ["j3"]
    assert store.get("j3")["status"] == PENDING
    # invalid messages: fail() works on a job that was never created
    assert store.fail("ghost", "invalid job message")
    assert store.get("ghost")["status"] == FAILED


def test_list_filters_by_status(store):
    for j in ("a", "b", "c"):
        store.create(j, {})
    store.claim("b", "d", 60)
    assert {r["jobId"] for r in store.list()} == {"a", "b", "c"}
    assert [r["jobId"] for r in store.list(status=RUNNING)] == ["b"]


def test_concurrent_claims_have_one_winner(tmp_path):
    """Atomicity under a race. moto's DynamoDB conditions are not atomic under concurrent
    requests (DESIGN 7), so the race runs on SQLite, whose BEGIN IMMEDIATE transactions are;
    DynamoDB itself evaluates ConditionExpression atomically per item."""
    path = tmp_path / "race.db"
    SqliteStatusStore(path).create("hot", {})
    wins = []
    barrier = threading.Barrier(8)

    def contender(i):
        store = SqliteStatusStore(path)
        barrier.wait()
        if store.claim("hot", f"d{i}", 60):
            wins.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_every_aws_client_uses_standard_retries(moto_server):
    from ray_app.io.queue import SqsQueue
    from ray_app.io.results import S3ResultStore
    from ray_app.io.status import DynamoStatusStore

    clients = [DynamoStatusStore("t").dynamodb, S3ResultStore("b").s3,
               SqsQueue("http://127.0.0.1/q").sqs]
    for c in clients:
        assert c.meta.config.retries["mode"] == "standard"


def test_dynamodb_values_round_trip_exactly():
    from ray_app.io.status import _ddb, _py

    big = 2**63 - 1  # the largest source_id; floats would turn it into 9223372036854775808
    value = {"sid": big, "small": 3, "x": 0.1, "f": 3.0, "ok": True, "none": None,
             "list": [big - 1, "a", 2.5], "nested": {"n": -(2**62)}}
    assert _py(_ddb(value)) == value
    assert isinstance(_py(_ddb(3.0)), float) and isinstance(_py(_ddb(3)), int)
    with pytest.raises(TypeError):
        _ddb(float("nan"))


def _fill(store, n, t0):
    """n jobs in mixed states, each updated at its own second (t0 + i)."""
    for i in range(n):
        job = f"job{i:03d}"
        store.create(job, {}, now=t0 + i)
        if i % 3 == 1:
            store.claim(job, "d", 60, now=t0 + i)
        elif i % 3 == 2:
            store.claim(job, "d", 60, now=t0 + i - 0.5)
            store.complete(job, "d", "p", now=t0 + i)


@pytest.mark.parametrize("status", [None, PENDING, COMPLETED])
def test_listing_pages_newest_first_with_a_cursor(store, status):
    t0 = time.time()
    _fill(store, 23, t0)
    want = [f"job{i:03d}" for i in reversed(range(23))
            if status is None or {0: PENDING, 1: RUNNING, 2: COMPLETED}[i % 3] == status]
    seen, cursor, pages = [], None, 0
    while True:
        items, cursor = store.list_page(status=status, limit=4, cursor=cursor)
        assert len(items) <= 4
        seen += [r["jobId"] for r in items]
        pages += 1
        if cursor is None:
            break
        assert pages < 20, "the cursor does not advance"
    assert seen == want  # every job once, newest first, across pages
    assert store.list(status=status, limit=5) == store.list_page(status=status, limit=5)[0]


def test_listing_refuses_bad_arguments(store):
    with pytest.raises(ValueError, match="status must be one of"):
        store.list_page(status="DONE")
    with pytest.raises(ValueError, match=r"limit must be an integer in \[1, 1000\], got 0"):
        store.list_page(limit=0)
    with pytest.raises(ValueError, match="is not one that a job listing returned"):
        store.list_page(cursor="not-a-cursor")
    store.create("a", {})
    store.create("b", {})
    _, cursor = store.list_page(status=PENDING, limit=1)
    with pytest.raises(ValueError, match="made for status='PENDING'"):
        store.list_page(status=None, cursor=cursor)


def test_history_keeps_transitions_and_stays_bounded(store):
    """A 24 h job heartbeating every 30 s (2880 beats) through a dozen stages: the history
    holds the transitions only, capped, and the item stays far below DynamoDB's 400 KB."""
    from ray_app.io.status import MAX_HISTORY

    t0 = time.time()
    store.create("long", {"streamKey": "gd-1"}, now=t0)
    assert store.claim("long", "d", 120, now=t0)
    beats = 2880 if isinstance(store, SqliteStatusStore) else 400  # moto: ~5 ms a call
    stages = [f"stage{i}" for i in range(12)]
    for b in range(beats):
        stage = stages[b * len(stages) // beats]
        assert store.heartbeat("long", "d", 120, progress=b * 100 // beats, stage=stage,
                               now=t0 + 30 * (b + 1))
    rec = store.get("long")
    assert [h["stage"] for h in rec["history"]] == ["queued", "claimed", *stages]
    assert rec["progress"] == (beats - 1) * 100 // beats  # the record itself is current
    # many attempts (lease expiry, redelivery) still cannot grow it past the cap
    for attempt in range(40):
        now = t0 + 10**5 + attempt * 1000
        assert store.claim("long", f"d{attempt}", 10, now=now)
        assert store.heartbeat("long", f"d{attempt}", 10, stage="density", now=now + 1)
    rec = store.get("long")
    assert len(rec["history"]) == MAX_HISTORY
    assert rec["history"][-1]["stage"] == "density"
    import json

    assert len(json.dumps(rec)) < 20_000


def test_provision_adds_the_status_index_to_an_older_table(aws):
    """A table created before the index existed gains it on the next provision."""
    import boto3

    from ray_app.io.provision import provision
    from ray_app.io.status import STATUS_INDEX

    ddb = boto3.client("dynamodb")
    ddb.delete_table(TableName=aws["table"])
    ddb.create_table(TableName=aws["table"], BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "jobId", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}])
    out = provision(aws["names"])
    assert out["report"][f"table {aws['table']} index {STATUS_INDEX}"] == "created"
    indexes = ddb.describe_table(TableName=aws["table"])["Table"]["GlobalSecondaryIndexes"]
    assert [i["IndexName"] for i in indexes] == [STATUS_INDEX]
    again = provision(aws["names"])["report"]
    assert f"table {aws['table']} index {STATUS_INDEX}" not in again  # idempotent
    store = DynamoStatusStore(aws["table"])
    store.create("x", {})
    assert [r["jobId"] for r in store.list(status=PENDING)] == ["x"]


def test_cancel_in_each_state(store):
    from ray_app.io.status import CANCEL_DONE, CANCEL_REQUESTED, CANCELLED

    store.create("p", {"submittedBy": "ann"})
    assert store.cancel("p") == CANCEL_DONE
    rec = store.get("p")
    assert rec["status"] == CANCELLED and rec["stage"] == "cancelled" and "finishedAt" in rec
    assert not store.claim("p", "d1", 60)  # a cancelled job's message is never run
    assert store.cancel("p") is None  # final

    store.create("r", {"submittedBy": "ann"})
    assert store.claim("r", "d1", 60)
    assert store.cancel("r") == CANCEL_REQUESTED
    rec = store.get("r")
    assert rec["status"] == RUNNING and rec["cancelRequested"] is True
    assert store.heartbeat("r", "d1", 60, progress=50, stage="density")  # still its lease
    assert not store.cancelled("r", "d2")  # only the lease holder records it
    assert store.cancelled("r", "d1")
    assert store.get("r")["status"] == CANCELLED
    assert [h["status"] for h in store.get("r")["history"]][-1] == CANCELLED

    store.create("c", {})
    assert store.claim("c", "d1", 60) and store.complete("c", "d1", "x")
    assert store.cancel("c") is None and store.get("c")["status"] == COMPLETED
    assert store.cancel("absent") is None
    assert [r["jobId"] for r in store.list(status=CANCELLED)] == ["r", "p"]


def test_listing_filters_by_submitter_across_pages(store):
    for i in range(9):
        store.create(f"j{i}", {"submittedBy": "ann" if i % 3 else "bob"}, now=1000.0 + i)
    assert store.claim("q", "d1", 60, params={"submittedBy": "bob"})  # first seen via queue
    seen, cursor = [], None
    while True:
        page, cursor = store.list_page(limit=2, cursor=cursor, submitted_by="ann")
        assert len(page) <= 2
        seen += [r["jobId"] for r in page]
        assert all(r["submittedBy"] == "ann" for r in page)
        if not cursor:
            break
    assert seen == ["j8", "j7", "j5", "j4", "j2", "j1"]
    bob = [r["jobId"] for r in store.list_page(limit=50, submitted_by="bob")[0]]
    assert sorted(bob) == ["j0", "j3", "j6", "q"]
    with pytest.raises(ValueError, match="submittedBy must be a string of 1-256"):
        store.list_page(submitted_by="")
