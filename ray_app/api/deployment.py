"""The API as a Ray Serve application: a FastAPI ingress deployment.

* On a cluster: ``serve deploy cluster/serve.yaml`` (import path ``ray_app.api.deployment:app``)
  while the queue drivers run as Ray jobs (``jobs/consume.py``); every replica builds its
  service from the environment in the config (``TABLE_NAME``, ``BUCKET_NAME``, ``QUEUE_URL``).
* Locally: ``ray-app serve`` (:func:`serve_local`): a local Ray instance, the Serve app on
  ``--host``/``--port``, and in local mode a queue driver in the same process, so a POSTed job
  runs to COMPLETED with no AWS at all.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from ray import serve

from .app import create_app

log = logging.getLogger(__name__)

#: Environment a replica needs from the process that starts it locally (a cluster's Serve
#: config sets its own).
FORWARDED_ENV = ("RAY_APP_HOME", "XDG_DATA_HOME", "HOME", "QUEUE_URL", "HIGH_QUEUE_URL",
                 "TABLE_NAME", "BUCKET_NAME", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "RAY_APP_API_KEYS", "RAY_APP_API_RATE", "RAY_APP_API_BURST",
                 "RAY_APP_MAX_QUEUED_PER_USER", "RAY_APP_API_LINK_S", "RAY_APP_VISIBILITY_S")

api = create_app()


# A replica serves HTTP only (the stores do the work): it asks for no CPU, so it never holds
# a slot that density actors or an autoscaler's GPU node would need.
@serve.deployment(name="ray-app-api", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=64)
@serve.ingress(api)
class ApiDeployment:
    pass


app = ApiDeployment.bind()


def serve_local(host: str = "127.0.0.1", port: int = 8000, driver: bool = True,
                ready=None, service=None) -> int:
    """``ray-app serve``: the API on ``host:port`` (and, in local mode, a queue driver) until
    SIGINT/SIGTERM; returns the exit code. ``ready`` is called with the base URL once up;
    ``service``: the one the caller already built from the environment."""
    import ray

    from ..engine.engines import default_engine
    from ..service.driver import Driver
    from ..service.wiring import driver_config, service_from_env

    service = service or service_from_env()  # a bad environment fails before anything starts
    engine = default_engine("ray") if driver and service.mode == "local" else None
    if engine is None and not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(ApiDeployment.options(ray_actor_options={
        "num_cpus": 0, "runtime_env": {"env_vars": env}}).bind(), name="ray-app",
        route_prefix="/", blocking=False)
    stop = threading.Event()
    runner = None
    if engine is not None:
        drv = Driver(service.queue, service.status, service.results, engine, driver_config())
        runner = threading.Thread(target=drv.run, daemon=True, name="queue-driver")
        runner.start()
    url = f"http://{host}:{port}"
    print(f"ray-app API on {url}/ (docs: {url}/docs)"
          + ("; queue driver running (local mode)" if runner else ""), flush=True)
    if ready is not None:
        ready(url)

    def _stop(*_):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stop.wait()
    finally:
        if runner is not None:
            drv.stop()
            runner.join(timeout=60)
        serve.shutdown()
        if engine is not None:
            engine.close()
    return 0
