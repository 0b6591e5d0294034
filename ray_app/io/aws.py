"""The one place boto3 clients are made: standard retry mode everywhere.

Boto3's default ("legacy") retry mode retries fewer error kinds and without a retry quota;
"standard" retries throttling, transient 5xx and connection errors with exponential backoff
and jitter (3 attempts unless ``AWS_MAX_ATTEMPTS`` or the AWS config says otherwise).
Endpoints and credentials come from boto3's own configuration (``AWS_ENDPOINT_URL`` included),
so the same code talks to AWS and to a local emulator.
"""

from __future__ import annotations

RETRY_MODE = "standard"


def client(service: str):
    """A boto3 client for ``service`` ("s3", "sqs", "dynamodb") with standard retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(retries={"mode": RETRY_MODE}))


def unavailable_line(exc: BaseException) -> str | None:
    """One line for an operational failure (a service we could not use), or None."""
    import sqlite3

    from ..data.gaia import GaiaArchiveUnavailable

    if isinstance(exc, sqlite3.OperationalError):  # the local mode's stores
        from .home import local_home

        return (f"the local store is unavailable: {exc}. Check that RAY_APP_HOME "
                f"({local_home()}) is writable and its disk not full")
    if isinstance(exc, GaiaArchiveUnavailable):
        return (f"the Gaia archive is unavailable: {exc}; retries with backoff were "
                "exhausted. Try again later (fetched chunks stay cached), or set "
                "RAY_APP_GAIA_URL to a mirror")
    try:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
        )
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if isinstance(exc, EndpointConnectionError):
        return (f"AWS endpoint unreachable: {exc.kwargs.get('endpoint_url')} (boto3 retried "
                "in standard mode). Check AWS_ENDPOINT_URL / AWS_DEFAULT_REGION and the "
                "network, or unset TABLE_NAME/BUCKET_NAME/QUEUE_URL for the local mode")
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY (or use the local mode: no TABLE_NAME/BUCKET_NAME)")
    if isinstance(exc, NoRegionError):
        return "no AWS region configured: set AWS_DEFAULT_REGION"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return (f"AWS refused {exc.operation_name}: {err.get('Code')}: {err.get('Message')}. "
                "Check the IAM policy (cluster/iam-*.json) and the resource names")
    return None
