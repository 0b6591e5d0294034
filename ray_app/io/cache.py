"""Blob caches for fetched data (Gaia chunks), beside the job results.

Both expose ``get(key) -> bytes | None``, ``put(key, data)`` and ``delete(key)``; keys are
``[A-Za-z0-9_.-]`` names (query hashes). Writes are atomic: a reader sees a whole object or
none (local: write to a temporary name, then rename; S3: a PUT is atomic).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_KEY = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _check(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.startswith("."):
        raise ValueError(f"cache key must be 1-200 characters of [A-Za-z0-9_.-], got {key!r}")
    return key


class LocalBlobCache:
    """Files ``<root>/<key>.parquet``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / f"{_check(key)}.parquet"

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.exists() else None

    def put(self, key: str, data: bytes) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobCache({str(self.root)!r})"


class S3BlobCache:
    """Objects ``s3://<bucket>/<prefix>/<key>.parquet`` (boto3; ``AWS_ENDPOINT_URL`` honoured)."""

    def __init__(self, bucket: str, prefix: str = "cache/gaia", client=None):
        from . import aws

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.s3 = client or aws.client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{_check(key)}.parquet"

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def __repr__(self) -> str:
        return f"S3BlobCache(s3://{self.bucket}/{self.prefix}/)"


def open_cache(location: str | Path):
    """``s3://bucket/prefix`` or a local folder."""
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise ValueError(f"cache location {text!r} has no bucket")
        return S3BlobCache(bucket, prefix or "cache/gaia")
    return LocalBlobCache(text)
