"""Who must act on an error: the three classes the job service treats differently.

* the **submitter's** error: ``ValueError`` (and its subclasses: ``InvalidJob``,
  ``CatalogueError``...). The job can never succeed as asked: FAILED, and its message goes to
  the dead-letter queue with the reason. No retry.
* the **operator's** error: :class:`ConfigurationError`. The job is valid but this deployment
  cannot run it (a bad ``RAY_APP_*`` setting, a GPU memory budget no shard plan fits, a backend
  that is not installed). The job is recorded FAILED with an operator reason, its message is
  released (not dead-lettered: after the fix it runs as submitted), a metric is raised and the
  driver logs an error.
* anything else is **transient** (network, throttling, a lost actor): released and retried
  with backoff; after the queue's receive limit the job is FAILED.

It lives in the core because the core raises it (shard plans, backends).
"""

from __future__ import annotations


class ConfigurationError(Exception):
    """This deployment's configuration cannot serve a valid job; the operator must act.

    Deliberately not a ``ValueError``: a valid job must never be dead-lettered as bad input
    because the cluster is misconfigured.
    """
