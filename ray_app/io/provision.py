"""Create (idempotently) and remove the AWS resources of the job service.

* SQS queue ``<queue>`` with long polling, a visibility timeout suited to heartbeats, and a
  redrive policy to ``<queue>-dlq`` after 3 receives (the DLQ keeps messages 14 days);
* S3 bucket ``<bucket>``: private (public access blocked), encrypted (SSE-S3), with a lifecycle
  rule expiring ``jobs/`` outputs and aborting incomplete multipart uploads;
* DynamoDB table ``<table>``: key ``jobId`` (string), on-demand, encrypted, TTL on ``ttl``.

Running :func:`provision` twice changes nothing the second time (it reports "unchanged").
Clients come from boto3's standard configuration (``AWS_ENDPOINT_URL`` honoured).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .status import STATUS_INDEX

MAX_RECEIVES = 3
DLQ_RETENTION_S = 14 * 86400


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}")
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")


@dataclass(frozen=True)
class ServiceNames:
    queue: str
    bucket: str
    table: str
    visibility_s: int = 120
    results_days: int = 90

    def __post_init__(self) -> None:
        # AWS's own naming rules, checked before any call so a typo is bad input (exit 2)
        if not BUCKET_NAME.fullmatch(self.bucket) or ".." in self.bucket:
            raise ValueError(f"--bucket {self.bucket!r} is not a valid S3 bucket name: 3-63 "
                             "characters of lower-case letters, digits, '.' and '-', starting "
                             "and ending with a letter or digit")
        if not QUEUE_NAME.fullmatch(self.queue):
            raise ValueError(f"--queue {self.queue!r} is not a valid SQS queue name: 1-75 "
                             "characters of letters, digits, '-' and '_' (-dlq and -high are "
                             "added for the dead-letter and high-priority queues)")
        if not TABLE_NAME.fullmatch(self.table):
            raise ValueError(f"--table {self.table!r} is not a valid DynamoDB table name: "
                             "3-255 characters of letters, digits, '_', '-' and '.'")
        if isinstance(self.visibility_s, bool) or not isinstance(self.visibility_s, int) \
                or not 0 <= self.visibility_s <= 43200:
            raise ValueError(f"--visibility must be an integer in [0, 43200] s, got "
                             f"{self.visibility_s!r}")

    @property
    def dlq(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def high(self) -> str:
        """The high-priority queue beside it."""
        return f"{self.queue}-high"


def _clients(sqs=None, s3=None, dynamodb=None):
    from . import aws

    return sqs or aws.client("sqs"), s3 or aws.client("s3"), dynamodb or aws.client(
        "dynamodb")


def _queue_url(sqs, name: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if "NonExistentQueue" in exc.response["Error"]["Code"]:
            return None
        raise


def _ensure_queue(sqs, name: str, attributes: dict, report: dict) -> str:
    url = _queue_url(sqs, name)
    if url is None:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        report[f"queue {name}"] = "created"
        return url
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    differs = {k: v for k, v in attributes.items() if _norm(current.get(k)) != _norm(v)}
    if differs:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=differs)
        report[f"queue {name}"] = f"updated {sorted(differs)}"
    else:
        report[f"queue {name}"] = "unchanged"
    return url


def _norm(v):
    """Attribute values compared as SQS returns them (JSON policies with any value types)."""
    if v is None:
        return None
    if isinstance(v, str) and v.startswith("{"):
        try:
            return {k: str(x) for k, x in json.loads(v).items()}
        except ValueError:
            return v
    return str(v)


def provision(names: ServiceNames, sqs=None, s3=None, dynamodb=None) -> dict:
    """Create whatever is missing; returns {"report": {...}, "queue_url", "dlq_url", ...}."""
    from botocore.exceptions import ClientError

    sqs, s3, dynamodb = _clients(sqs, s3, dynamodb)
    report: dict[str, str] = {}
    dlq_url = _ensure_queue(sqs, names.dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION_S)},
                            report)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(names.visibility_s),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(MAX_RECEIVES)}),
    }
    queue_url = _ensure_queue(sqs, names.queue, attributes, report)
    # jobs of priority >= 5 go here; drivers drain it first; same dead-letter queue
    high_url = _ensure_queue(sqs, names.high, attributes, report)

    try:
        s3.head_bucket(Bucket=names.bucket)
        report[f"bucket {names.bucket}"] = "unchanged"
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
        region = s3.meta.region_name
        kwargs = {"Bucket": names.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        report[f"bucket {names.bucket}"] = "created"
    # settings are declarative: putting the same configuration again changes nothing
    s3.put_public_access_block(Bucket=names.bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=names.bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                   "BucketKeyEnabled": True}]})
    s3.put_bucket_lifecycle_configuration(Bucket=names.bucket, LifecycleConfiguration={
        "Rules": [{"ID": "expire-job-outputs", "Status": "Enabled",
                   "Filter": {"Prefix": "jobs/"},
                   "Expiration": {"Days": names.results_days},
                   "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})

    # listings query this index (status, updatedAt) instead of scanning the table
    index = {"IndexName": STATUS_INDEX, "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                           {"AttributeName": "updatedAt", "KeyType": "RANGE"}]}
    attributes = [{"AttributeName": "jobId", "AttributeType": "S"},
                  {"AttributeName": "status", "AttributeType": "S"},
                  {"AttributeName": "updatedAt", "AttributeType": "S"}]
    try:
        table = dynamodb.describe_table(TableName=names.table)["Table"]
        report[f"table {names.table}"] = "unchanged"
        if not any(i["IndexName"] == STATUS_INDEX
                   for i in table.get("GlobalSecondaryIndexes", [])):
            # a table made by an older version: add the index (DynamoDB backfills it)
            dynamodb.update_table(TableName=names.table, AttributeDefinitions=attributes,
                                  GlobalSecondaryIndexUpdates=[{"Create": index}])
            report[f"table {names.table} index {STATUS_INDEX}"] = "created"
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        dynamodb.create_table(
            TableName=names.table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=attributes,
            KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[index],
            SSESpecification={"Enabled": True})
        dynamodb.get_waiter("table_exists").wait(TableName=names.table,
                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        report[f"table {names.table}"] = "created"
    ttl = dynamodb.describe_time_to_live(TableName=names.table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(TableName=names.table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "ttl"})
        report[f"table {names.table} ttl"] = "enabled"
    return {"report": report, "queue_url": queue_url, "high_queue_url": high_url,
            "dlq_url": dlq_url,
            "bucket": names.bucket, "table": names.table}


def teardown(names: ServiceNames, sqs=None, s3=None, dynamodb=None) -> dict:
    """Delete the queue, its DLQ, the bucket (emptied first) and the table, where present."""
    from botocore.exceptions import ClientError

    sqs, s3, dynamodb = _clients(sqs, s3, dynamodb)
    report = {}
    for name in (names.queue, names.high, names.dlq):
        url = _queue_url(sqs, name)
        if url:
            sqs.delete_queue(QueueUrl=url)
        report[f"queue {name}"] = "deleted" if url else "absent"

    def delete_bucket():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=names.bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=names.bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=names.bucket)

    for what, delete, absent in (
            (f"bucket {names.bucket}", delete_bucket, ("404", "NoSuchBucket")),
            (f"table {names.table}", lambda: dynamodb.delete_table(TableName=names.table),
             ("ResourceNotFoundException",))):
        try:
            delete()
            report[what] = "deleted"
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in absent:
                raise
            report[what] = "absent"
    return report
