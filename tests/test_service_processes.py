"""Drivers as real processes (jobs/consume.py): SIGKILL takeover and SIGTERM drain."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from ray_app.io.queue import SqsQueue
from ray_app.io.results import S3ResultStore
from ray_app.io.status import COMPLETED, PENDING, RUNNING, DynamoStatusStore
from ray_app.service import Service, submit

REPO = Path(__file__).resolve().parents[1]
MEDIUM = {"streamKey": "gd-1", "nNeighbors": 16, "nBackground": 60000, "nStream": 600}


def _service(aws):
    return Service(SqsQueue(aws["queue_url"]), DynamoStatusStore(aws["table"]),
                   S3ResultStore(aws["bucket"]), "aws")


def _start(aws, **env):
    full = {**os.environ, "QUEUE_URL": aws["queue_url"], "TABLE_NAME": aws["table"],
            "BUCKET_NAME": aws["bucket"], "RAY_APP_ENGINE": "in-process", "RAY_APP_WAIT_S": "1",
            "RAY_APP_VISIBILITY_S": "6", "RAY_APP_HEARTBEAT_S": "1", "RAY_APP_LEASE_S": "6",
            "RAY_APP_SWEEP_S": "2", "RAY_APP_BACKOFF_S": "1", "RAY_APP_CAPACITY": "1",
            **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "consume.py")], cwd=REPO,
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_status(svc, job_id, pred, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = svc.status.get(job_id)
        if rec and pred(rec):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"{job_id}: condition not reached; last {svc.status.get(job_id)}")


def _science(svc, job_id, tmp):
    d = tmp / job_id
    svc.results.download(job_id, d)
    pz = np.load(d / "persistence.npz")
    members = np.load(d / "candidate_members.npz")
    return ({k: pz[k].tolist() for k in pz.files},
            json.loads((d / "candidates.json").read_text()),
            {k: members[k].tolist() for k in members.files})


def test_sigkill_mid_job_is_finished_by_another_driver(aws, tmp_path):
    svc = _service(aws)
    submit(svc, {"jobId": "kill-1", **MEDIUM})
    a = _start(aws)
    _wait_status(svc, "kill-1", lambda r: r["status"] == RUNNING and r.get("progress", 0) >= 15)
    a.send_signal(signal.SIGKILL)
    a.wait(30)
    assert svc.status.get("kill-1")["status"] == RUNNING  # orphaned, lease still running
    b = _start(aws, RAY_APP_EXIT_AFTER_IDLE_POLLS=12)
    out, _ = b.communicate(timeout=300)
    assert b.returncode == 0, out[-3000:]
    rec = svc.status.get("kill-1")
    assert rec["status"] == COMPLETED and rec["attempts"] == 2
    assert sum(h["status"] == COMPLETED for h in rec["history"]) == 1
    # identical to a clean run of the same job
    submit(svc, {"jobId": "kill-ref", **MEDIUM})
    c = _start(aws, RAY_APP_EXIT_AFTER_IDLE_POLLS=3)
    c.communicate(timeout=300)
    assert _science(svc, "kill-1", tmp_path) == _science(svc, "kill-ref", tmp_path)
    attrs = boto3.client("sqs").get_queue_attributes(QueueUrl=aws["queue_url"],
                                                     AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_sigterm_drains_running_job_and_keeps_the_rest(aws):
    """Through a real local Ray (the SIGTERM handler must survive ray.init)."""
    svc = _service(aws)
    submit(svc, {"jobId": "term-1", **MEDIUM})
    submit(svc, {"jobId": "term-2", **MEDIUM})
    p = _start(aws, RAY_APP_ENGINE="ray", RAY_APP_MAX_ACTORS=1, RAY_APP_DRAIN_S=120)
    _wait_status(svc, "term-1", lambda r: r["status"] == RUNNING, timeout=180)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=150)
    assert p.returncode == 0, out[-3000:]
    assert time.time() - t0 < 120
    assert svc.status.get("term-1")["status"] == COMPLETED
    # capacity 1: the second job was never taken; its message is still there
    assert svc.status.get("term-2")["status"] == PENDING
    msgs = svc.queue.receive(10, wait_s=2)
    assert [json.loads(m.body)["jobId"] for m in msgs] == ["term-2"]


def test_sigterm_past_the_drain_bound_releases_the_job(aws):
    svc = _service(aws)
    submit(svc, {"jobId": "term-3", **MEDIUM})
    p = _start(aws, RAY_APP_DRAIN_S=0.2, RAY_APP_VISIBILITY_S=60, RAY_APP_LEASE_S=60)
    _wait_status(svc, "term-3", lambda r: r["status"] == RUNNING)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out[-3000:]
    rec = svc.status.get("term-3")
    assert rec["status"] == PENDING and "drain" in rec["error"]
    msgs = svc.queue.receive(10, wait_s=2)  # visible again at once, not after 60 s
    assert [json.loads(m.body)["jobId"] for m in msgs] == ["term-3"]


@pytest.fixture(autouse=True)
def _no_ray_auth():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
