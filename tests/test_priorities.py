"""Priorities and fairness: a high-priority queue drained first; one user's many jobs do not
hold every slot (RAY_APP_MAX_RUNNING_PER_USER)."""

import threading

import boto3

from ray_app.engine.engines import InProcessEngine
from ray_app.io.queue import PriorityQueues
from ray_app.io.status import COMPLETED
from ray_app.service import service_from_env, submit
from ray_app.service.driver import Driver, DriverConfig

TINY = {"streamKey": "gd-1", "nNeighbors": 8, "nBackground": 300, "nStream": 60}


def _drain(svc, n_jobs, **cfg):
    driver = Driver(svc.queue, svc.status, svc.results, InProcessEngine("cpu"),
                    DriverConfig(wait_s=1, visibility_s=30, heartbeat_s=2, lease_s=30,
                                 sweep_s=5, defer_s=1, **cfg))
    t = threading.Thread(target=driver.run, kwargs={"max_idle_polls": 3})
    t.start()
    t.join(600)
    assert not t.is_alive()
    recs = svc.status.list(limit=1000)
    assert len(recs) == n_jobs and all(r["status"] == COMPLETED for r in recs), recs
    return {r["jobId"]: r for r in recs}, driver


def test_a_priority_9_job_overtakes_a_queue_of_0s():
    svc = service_from_env()
    assert isinstance(svc.queue, PriorityQueues)
    for i in range(6):
        submit(svc, {"jobId": f"low-{i}", **TINY})
    submit(svc, {"jobId": "urgent", **TINY, "priority": 9})
    recs, _ = _drain(svc, 7, capacity=1)
    order = sorted(recs, key=lambda j: recs[j]["startedAt"])
    assert order[0] == "urgent", order


def test_three_users_start_before_one_users_thirty_jobs_finish():
    """One user POSTs 30 jobs through the HTTP API, then three users one each; with one
    running job per user, the three start before the thirty are done."""
    import requests
    from api_server import serving

    from ray_app.api.app import Settings, create_app
    from ray_app.api.keys import ApiKeys

    svc = service_from_env()
    keys = ApiKeys()
    auth = {who: {"Authorization": f"Bearer {keys.create(who)}"}
            for who in ("alice", "bob", "carol", "dave")}
    with serving(create_app(svc, keys, Settings(rate=0, burst=1, max_queued=30))) as url:
        for i in range(30):
            assert requests.post(f"{url}/jobs", json={"jobId": f"many-{i}", **TINY},
                                 headers=auth["alice"]).status_code == 202
        assert requests.post(f"{url}/jobs", json={"jobId": "many-30", **TINY},
                             headers=auth["alice"]).status_code == 429  # her queue is full
        for who in ("bob", "carol", "dave"):
            assert requests.post(f"{url}/jobs", json={"jobId": f"one-{who}", **TINY},
                                 headers=auth[who]).status_code == 202
    recs, driver = _drain(svc, 33, capacity=2, max_running_per_user=1)
    alice_done = max(recs[f"many-{i}"]["finishedAt"] for i in range(30))
    for who in ("bob", "carol", "dave"):
        assert recs[f"one-{who}"]["startedAt"] < alice_done, who
    assert driver.stats["deferred"] > 0
    # never two of alice's jobs at once: her jobs' running intervals do not overlap
    spans = sorted((recs[f"many-{i}"]["startedAt"], recs[f"many-{i}"]["finishedAt"])
                   for i in range(30))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    # waiting its turn never cost a job a receive: nothing was dead-lettered
    assert svc.queue.list_dead(10) == []


def test_provision_makes_the_high_queue_and_the_service_uses_it(aws, monkeypatch):
    monkeypatch.setenv("QUEUE_URL", aws["queue_url"])
    monkeypatch.setenv("TABLE_NAME", aws["table"])
    monkeypatch.setenv("BUCKET_NAME", aws["bucket"])
    assert aws["high_queue_url"].endswith("ray-app-jobs-high")
    svc = service_from_env()
    assert isinstance(svc.queue, PriorityQueues)
    submit(svc, {"jobId": "aws-low", **TINY})
    submit(svc, {"jobId": "aws-high", **TINY, "priority": 7})
    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=aws["high_queue_url"], MaxNumberOfMessages=10,
                              VisibilityTimeout=0)
    assert ["aws-high" in m["Body"] for m in got["Messages"]] == [True]
    # received through the pair: high first
    first = svc.queue.receive(1, wait_s=1)
    assert '"aws-high"' in first[0].body and first[0].receipt.startswith("0|")
