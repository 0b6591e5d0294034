"""The job service: the job message schema (``jobspec``), the wiring of queue, status and
result stores from the environment (``wiring``) and the queue driver (``driver``) that runs
each message through :mod:`ray_app.pipeline`.
"""

from .wiring import Service, check_source, consume, enqueue, prepare, service_from_env, submit

__all__ = ["Service", "check_source", "consume", "enqueue", "prepare", "service_from_env",
           "submit"]
