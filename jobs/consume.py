"""`ray job submit` entry point: the queue driver (runs until `ray job stop`).

    ray job submit --working-dir . \
        --runtime-env-json '{"env_vars": {"QUEUE_URL": "...", "TABLE_NAME": "...",
                             "BUCKET_NAME": "...", "RAY_JOB_STOP_WAIT_TIME_S": "150"}}' \
        -- python jobs/consume.py

Configuration (environment): QUEUE_URL, TABLE_NAME, BUCKET_NAME (required on the cluster;
without them the embedded local mode's queue, status store and results under RAY_APP_HOME);
RAY_APP_ENGINE (ray | in-process), RAY_APP_EXIT_AFTER_IDLE_POLLS, and the driver settings of
``ray_app.service.consume`` (RAY_APP_CAPACITY, RAY_APP_WAIT_S, RAY_APP_VISIBILITY_S,
RAY_APP_HEARTBEAT_S, RAY_APP_LEASE_S, RAY_APP_DRAIN_S: keep RAY_JOB_STOP_WAIT_TIME_S above
it, RAY_APP_BACKOFF_S, RAY_APP_MAX_ACTORS, RAY_APP_GPUS_PER_ACTOR: 1 on the GPU cluster).
The same driver runs locally as `ray-app consume`.
"""

import logging
import os
import sys

from ray_app.service import consume


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    idle = os.environ.get("RAY_APP_EXIT_AFTER_IDLE_POLLS")
    return consume(os.environ.get("RAY_APP_ENGINE", "ray"), int(idle) if idle else None)


if __name__ == "__main__":
    sys.exit(main())
