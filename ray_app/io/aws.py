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
