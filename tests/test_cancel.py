"""Cancelling jobs: PENDING at once; RUNNING at the driver's next stage boundary, with no
outputs published; the message never runs again."""

import threading
import time

from ray_app.engine.engines import InProcessEngine
from ray_app.io.status import CANCEL_DONE, CANCEL_REQUESTED, CANCELLED, COMPLETED, RUNNING
from ray_app.service import service_from_env, submit
from ray_app.service.driver import Driver, DriverConfig

TINY = {"streamKey": "gd-1", "nNeighbors": 8, "nBackground": 300, "nStream": 60}


def _driver(svc):
    return Driver(svc.queue, svc.status, svc.results, InProcessEngine("cpu"),
                  DriverConfig(wait_s=1, visibility_s=30, heartbeat_s=2, lease_s=30))


def test_a_pending_job_cancelled_is_never_run():
    svc = service_from_env()
    submit(svc, {"jobId": "stop-me", **TINY})
    submit(svc, {"jobId": "keep-me", **TINY})
    assert svc.status.cancel("stop-me") == CANCEL_DONE
    driver = _driver(svc)
    driver.run(max_idle_polls=2)
    assert svc.status.get("stop-me")["status"] == CANCELLED
    assert svc.status.get("keep-me")["status"] == COMPLETED
    assert svc.results.manifest("stop-me") is None
    assert driver.stats["skipped"] == 1 and driver.stats["completed"] == 1
    assert svc.queue.depth()["visible"] == 0 and svc.queue.depth()["in_flight"] == 0


def test_a_running_job_stops_at_the_next_stage_and_publishes_nothing():
    svc = service_from_env()
    # big enough to still be running when the cancel arrives (a few seconds of work)
    submit(svc, {"jobId": "long", "streamKey": "gd-1", "nBackground": 40000, "nStream": 400})
    driver = _driver(svc)
    t = threading.Thread(target=driver.run, kwargs={"max_idle_polls": 2})
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rec = svc.status.get("long")
        if rec["status"] == RUNNING and rec.get("stage") not in (None, "claimed"):
            break
        time.sleep(0.05)
    assert svc.status.cancel("long") == CANCEL_REQUESTED
    t.join(300)
    assert not t.is_alive()
    rec = svc.status.get("long")
    assert rec["status"] == CANCELLED, rec
    assert rec["history"][-1]["status"] == CANCELLED
    assert "done" not in [h.get("stage") for h in rec["history"]]
    assert svc.results.manifest("long") is None and "resultPrefix" not in rec
    assert driver.stats["cancelled"] == 1 and driver.stats["completed"] == 0
    depth = svc.queue.depth()
    assert (depth["visible"], depth["in_flight"], depth["dead"]) == (0, 0, 0)
