"""The job service against moto's server over a real socket: driver, DLQ, redelivery, load."""

import json
import threading
import time

import boto3
import pytest

from ray_app.core.errors import ConfigurationError
from ray_app.engine.engines import InProcessEngine
from ray_app.io.queue import SqsQueue
from ray_app.io.results import S3ResultStore
from ray_app.io.status import COMPLETED, FAILED, DynamoStatusStore
from ray_app.service import Service, submit
from ray_app.service.driver import Driver, DriverConfig
from ray_app.service.jobspec import InvalidJob

TINY = {"streamKey": "gd-1", "nNeighbors": 8, "nBackground": 400, "nStream": 100}


def _service(aws):
    return Service(SqsQueue(aws["queue_url"]), DynamoStatusStore(aws["table"]),
                   S3ResultStore(aws["bucket"]), "aws")


def _driver(aws, engine=None, capacity=2, **cfg):
    svc = _service(aws)
    config = DriverConfig(capacity=capacity, wait_s=1, visibility_s=10, heartbeat_s=1.0,
                          lease_s=10, backoff_s=1, sweep_s=5, drain_s=30,
                          **cfg)
    return Driver(svc.queue, svc.status, svc.results, engine or InProcessEngine("cpu"),
                  config)


def _run(driver, idle_polls=2, timeout=300):
    t = threading.Thread(target=driver.run, kwargs={"max_idle_polls": idle_polls})
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "driver did not finish"


def _visible(aws, url=None):
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url or aws["queue_url"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    a = attrs["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def _keys(aws, job_id):
    resp = boto3.client("s3").list_objects_v2(Bucket=aws["bucket"], Prefix=f"jobs/{job_id}/")
    return {o["Key"].split("/")[-1]: o for o in resp.get("Contents", [])}


def test_happy_path_and_redelivery(aws):
    svc = _service(aws)
    spec = submit(svc, {"jobId": "happy-1", **TINY})
    assert svc.status.get("happy-1")["status"] == "PENDING"
    driver = _driver(aws)
    _run(driver)
    rec = svc.status.get("happy-1")
    assert rec["status"] == COMPLETED, rec
    stages = [h.get("stage") for h in rec["history"]]
    assert stages[0] == "queued" and stages[-1] == "done" and "density" in stages
    progress = [h["progress"] for h in rec["history"] if h.get("progress") is not None]
    assert progress == sorted(progress[:1] + progress[1:]) or progress[-1] == 100
    keys = _keys(aws, "happy-1")
    assert {"manifest.json", "candidates.json", "persistence.npz", "stars.parquet",
            "metadata.json", "summary.png"} <= set(keys)
    manifest = svc.results.manifest("happy-1")
    assert {f["name"] for f in manifest["files"]} == set(keys) - {"manifest.json"}
    assert rec["resultPrefix"] == "s3://ray-app-results/jobs/happy-1/"
    assert _visible(aws) == 0  # message deleted
    assert driver.stats["completed"] == 1

    # redelivery of a completed job: acknowledged, not recomputed, outputs untouched
    before = {k: v["LastModified"] for k, v in keys.items()}
    svc.queue.send(spec.to_message())
    again = _driver(aws)
    _run(again)
    assert again.stats == {**again.stats, "completed": 0, "skipped": 1}
    assert {k: v["LastModified"] for k, v in _keys(aws, "happy-1").items()} == before
    assert _visible(aws) == 0
    assert sum(h["status"] == COMPLETED for h in svc.status.get("happy-1")["history"]) == 1


POISON = [
    ("{not json", None, "not valid JSON"),
    (json.dumps({"streamKey": "gd-1"}), None, "jobId is required"),
    (json.dumps({"jobId": "../x", "streamKey": "gd-1"}), None, "jobId must be"),
    (json.dumps({"jobId": "p-stream", "streamKey": "gd-9"}), "p-stream", "not a known stream"),
    (json.dumps({"jobId": "p-k", "streamKey": "gd-1", "nNeighbors": 0}), "p-k", "nNeighbors"),
    (json.dumps({"jobId": "p-sigma", "streamKey": "gd-1", "sigmaThreshold": "x"}), "p-sigma",
     "sigmaThreshold"),
    (json.dumps({"jobId": "p-field", "streamKey": "gd-1", "nNeigbors": 8}), "p-field",
     "unknown field"),
    (json.dumps({"jobId": "p-src", "streamKey": "gd-1", "source": "/nope.parquet"}), "p-src",
     "does not exist"),
    (json.dumps({"jobId": "p-s3", "streamKey": "gd-1",
                 "source": "s3://ray-app-results/inputs/missing.parquet"}), "p-s3",
     "does not exist"),
    (json.dumps({"jobId": "p-cols", "streamKey": "gd-1", "columns": {"RA": "right_asc"}}),
     "p-cols", "unknown name(s) right_asc"),
]


def test_poison_messages_go_to_the_dlq_with_a_reason(aws):
    svc = _service(aws)
    for body, _, _ in POISON:
        svc.queue.send(body)
    driver = _driver(aws)
    _run(driver)
    assert driver.stats["completed"] == 0
    dead = svc.queue.list_dead(20, polls=20)
    assert len(dead) == len(POISON), "every poison message is in the DLQ after one receive"
    reasons = {m.body: r for m, r in dead}
    for body, job_id, needle in POISON:
        assert needle in reasons[body], (body, reasons[body])
        if job_id:
            rec = svc.status.get(job_id)
            assert rec["status"] == FAILED and needle in rec["error"]
    assert _visible(aws) == 0
    assert not boto3.client("s3").list_objects_v2(Bucket=aws["bucket"]).get("Contents")


class FlakyEngine(InProcessEngine):
    """Fails the first ``failures`` jobs with a transient error (an archive timeout)."""

    def __init__(self, failures):
        super().__init__("cpu")
        self.failures = failures

    def density_and_forests(self, *a, **k):
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("Gaia archive timed out")
        return super().density_and_forests(*a, **k)


def test_transient_failures_reach_the_dlq_by_redrive_and_come_back(aws):
    svc = _service(aws)
    submit(svc, {"jobId": "flaky-1", **TINY})
    engine = FlakyEngine(failures=10)
    driver = _driver(aws, engine=engine)
    t = threading.Thread(target=driver.run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not svc.queue.list_dead(1):
        time.sleep(1)
    driver.stop()
    t.join(60)
    assert driver.stats["transient"] == 3  # three receives, then the redrive policy
    rec = svc.status.get("flaky-1")
    assert rec["status"] == FAILED and "gave up after 3 attempts" in rec["error"]
    assert "timed out" in rec["error"] and rec["attempts"] == 3
    # the operator's redrive: message back to the queue, job re-opened, and it succeeds
    assert svc.queue.redrive(10) == 1 and svc.status.requeue("flaky-1")
    engine.failures = 0
    ok = _driver(aws, engine=engine)
    _run(ok)
    assert svc.status.get("flaky-1")["status"] == COMPLETED
    assert _visible(aws) == 0 and _visible(aws, svc.queue.dlq_url) == 0


class MisconfiguredEngine(InProcessEngine):
    """An operator's mistake: the backend setting cannot be used (until fixed)."""

    def __init__(self):
        super().__init__("cpu")
        self.broken = True

    def density_and_forests(self, *a, **k):
        if self.broken:
            raise ConfigurationError("RAY_APP_CPU_KNN must be 'cpu' or 'grid', got 'kdtree'")
        return super().density_and_forests(*a, **k)


def test_operator_errors_keep_the_message_and_run_once_fixed(aws):
    """A valid job on a misconfigured deployment: FAILED with an operator reason, the message
    released (not dead-lettered, not deleted), a metric and an ERROR; after the fix the same
    message runs the job to COMPLETED."""
    svc = _service(aws)
    submit(svc, {"jobId": "op-1", **TINY})
    engine = MisconfiguredEngine()
    driver = _driver(aws, engine=engine, operator_backoff_s=2)
    _run(driver, idle_polls=1)
    assert driver.stats["operator"] == 1 and driver.stats["failed"] == 0
    rec = svc.status.get("op-1")
    assert rec["status"] == FAILED and rec["errorKind"] == "operator"
    assert rec["error"].startswith("operator: this deployment cannot run the job: "
                                   "RAY_APP_CPU_KNN must be")
    assert not svc.queue.list_dead(5, polls=2)  # not dead-lettered
    assert _visible(aws) == 1  # kept, hidden for operator_backoff_s
    engine.broken = False  # the operator fixes the setting
    time.sleep(2.5)
    _run(_driver(aws, engine=engine))
    rec = svc.status.get("op-1")
    assert rec["status"] == COMPLETED and "errorKind" not in rec and "error" not in rec
    assert _visible(aws) == 0


def test_a_k_this_cluster_cannot_serve_is_dead_lettered_before_any_claim(aws, monkeypatch):
    """The message is valid, but no shard plan of this deployment fits k = 1024 (a 16 MiB
    actor budget): refused at validation with the reason, nothing computed."""
    monkeypatch.setenv("RAY_APP_MEMORY_PER_ACTOR", str(16 * 2**20))
    svc = _service(aws)
    svc.queue.send(json.dumps({"jobId": "bigk-1", **TINY, "nNeighbors": 1024}))
    driver = _driver(aws)
    _run(driver, idle_polls=1)
    [(msg, reason)] = svc.queue.list_dead(5, polls=5)
    assert "nNeighbors=1024 cannot be served here" in reason
    rec = svc.status.get("bigk-1")
    assert rec["status"] == FAILED and rec["errorKind"] == "input" and rec["attempts"] == 0
    assert not boto3.client("s3").list_objects_v2(Bucket=aws["bucket"]).get("Contents")


def test_job_id_tricks_rejected_before_any_s3_call(moto_server):
    client = boto3.client("s3")
    calls = []
    client.meta.events.register("before-call.s3", lambda **kw: calls.append(kw))
    store = S3ResultStore("any-bucket", client=client)
    for bad in ("../x", "a/b", "x" * 300, ""):
        for op in (lambda b: store.upload(b, "."), lambda b: store.manifest(b),
                   lambda b: store.download(b, "/tmp/never")):
            with pytest.raises(InvalidJob):
                op(bad)
    assert calls == []


@pytest.mark.parametrize("n", [30, pytest.param(200, marks=pytest.mark.slow)])
def test_load_jobs_through_two_drivers(aws, n):
    svc = _service(aws)
    t0 = time.perf_counter()
    for i in range(n):
        submit(svc, {"jobId": f"load-{i:03d}", **TINY, "nBackground": 300, "nStream": 60})
    drivers = [_driver(aws, capacity=2) for _ in range(2)]
    threads = [threading.Thread(target=d.run, kwargs={"max_idle_polls": 3}) for d in drivers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    elapsed = time.perf_counter() - t0
    recs = svc.status.list(limit=1000)
    done = [r for r in recs if r["status"] == COMPLETED]
    twice = [r["jobId"] for r in recs if sum(h["status"] == COMPLETED
                                             for h in r["history"]) > 1]
    per_driver = [d.stats["completed"] for d in drivers]
    print(f"\nload: {len(done)}/{n} COMPLETED in {elapsed:.1f} s "
          f"({len(done) / elapsed:.1f} jobs/s), per driver {per_driver}, "
          f"completed twice: {len(twice)}")
    assert len(done) == n and not twice
    assert sum(per_driver) == n
    assert _visible(aws) == 0 and _visible(aws, svc.queue.dlq_url) == 0


def test_job_reads_an_s3_catalogue_with_renamed_columns(aws):
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_app.data.synthetic import synthetic_catalogue

    cols = synthetic_catalogue("gd-1", n_background=800, n_stream=150, seed=9)
    table = pa.table({"SOURCE_ID": cols["source_id"], "RA_ICRS": cols["ra"],
                      "DE_ICRS": cols["dec"], "pmra": cols["pmra"], "pmdec": cols["pmdec"],
                      "parallax": cols["parallax"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    boto3.client("s3").put_object(Bucket=aws["bucket"], Key="inputs/field.parquet",
                                  Body=buf.getvalue())
    svc = _service(aws)
    submit(svc, {"jobId": "s3-in", "streamKey": "gd-1", "nNeighbors": 8,
                 "source": f"s3://{aws['bucket']}/inputs/field.parquet",
                 "columns": {"SOURCE_ID": "source_id", "RA_ICRS": "ra", "DE_ICRS": "dec"}})
    _run(_driver(aws))
    rec = svc.status.get("s3-in")
    assert rec["status"] == COMPLETED, rec
    meta = json.loads(boto3.client("s3").get_object(
        Bucket=aws["bucket"], Key="jobs/s3-in/metadata.json")["Body"].read())
    assert meta["data"]["uri"].startswith("s3://") and meta["counts"]["stars"] == 950
    assert np.isfinite(meta["counts"]["finite_pairs"])
