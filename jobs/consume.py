"""`ray job submit` entry point: the queue driver (runs until `ray job stop`).

    ray job submit --working-dir . \
        --runtime-env-json '{"env_vars": {"QUEUE_URL": "...", "TABLE_NAME": "...",
                             "BUCKET_NAME": "...", "RAY_JOB_STOP_WAIT_TIME_S": "150"}}' \
        -- python jobs/consume.py

Configuration (environment): QUEUE_URL, TABLE_NAME, BUCKET_NAME (required on the cluster);
RAY_APP_CAPACITY (jobs in flight, default 2), RAY_APP_WAIT_S (long poll, 20),
RAY_APP_VISIBILITY_S (120), RAY_APP_HEARTBEAT_S (30), RAY_APP_LEASE_S (120),
RAY_APP_DRAIN_S (drain bound on SIGTERM, 120; keep RAY_JOB_STOP_WAIT_TIME_S above it),
RAY_APP_BACKOFF_S (10), RAY_APP_ENGINE (ray | in-process), RAY_APP_MAX_ACTORS,
RAY_APP_GPUS_PER_ACTOR (1 on the GPU cluster: it starts with no GPU node).
"""

import logging
import os
import signal
import sys

from ray_app.engine.driver import Driver, DriverConfig
from ray_app.engine.engines import default_engine
from ray_app.service import service_from_env


def _env(name, default, cast=float):
    return cast(os.environ.get(name, default))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    service = service_from_env()
    if service.queue is None:
        print("consume: QUEUE_URL is not set", file=sys.stderr)
        return 2
    config = DriverConfig(capacity=_env("RAY_APP_CAPACITY", 2, int),
                          wait_s=_env("RAY_APP_WAIT_S", 20, int),
                          visibility_s=_env("RAY_APP_VISIBILITY_S", 120, int),
                          heartbeat_s=_env("RAY_APP_HEARTBEAT_S", 30),
                          lease_s=_env("RAY_APP_LEASE_S", 120),
                          drain_s=_env("RAY_APP_DRAIN_S", 120),
                          backoff_s=_env("RAY_APP_BACKOFF_S", 10, int),
                          sweep_s=_env("RAY_APP_SWEEP_S", 60))
    engine = default_engine("ray")  # ray.init happens here ...
    driver = Driver(service.queue, service.status, service.results, engine, config)
    signal.signal(signal.SIGTERM, driver.stop)  # ... so our handler is installed after it
    signal.signal(signal.SIGINT, driver.stop)
    logging.info("driver %s consuming %s (%s mode)", driver.driver_id, service.queue.url,
                 service.mode)
    idle = os.environ.get("RAY_APP_EXIT_AFTER_IDLE_POLLS")
    rc = driver.run(max_idle_polls=int(idle) if idle else None)
    logging.info("driver %s stopped: %s", driver.driver_id, driver.stats)
    engine.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
