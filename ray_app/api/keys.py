"""API keys: random bearer tokens, stored only as SHA-256 digests, each mapped to the
``submittedBy`` name of its holder (and whether it is an admin's).

The store is one JSON file: a local path (default ``$RAY_APP_HOME/apikeys.json`` in local
mode) or an ``s3://bucket/key`` object (default ``s3://$BUCKET_NAME/config/apikeys.json`` in
AWS mode, so every Serve replica and the operator's ``ray-app apikey`` see the same keys);
``RAY_APP_API_KEYS`` overrides either. Changes are read-modify-write cycles made safe
against concurrent writers: S3 conditional puts (``If-Match`` the ETag read) or an flock
beside a local file. A key itself is printed once, by ``create``, and never
stored: a digest of a 256-bit random token cannot be reversed or guessed, so no salt or slow
hash is needed (unlike a password).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..io.home import local_home

KEY_PREFIX = "rak_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
#: How long a replica trusts its copy of the key file before reading it again (revocations
#: reach every replica within this time).
RELOAD_S = 15.0


@dataclass(frozen=True)
class ApiUser:
    """Who a request's key belongs to."""

    name: str
    admin: bool = False


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"API key name must be 1-128 characters of [A-Za-z0-9_.@-] (it "
                         f"becomes the jobs' submittedBy), got {name!r}")
    return name


def default_location() -> str:
    if os.environ.get("RAY_APP_API_KEYS"):
        return os.environ["RAY_APP_API_KEYS"]
    bucket = os.environ.get("BUCKET_NAME")
    if bucket and os.environ.get("TABLE_NAME"):
        return f"s3://{bucket}/config/apikeys.json"
    return str(local_home() / "apikeys.json")


class ApiKeys:
    """The key file at ``location`` (a path or an s3:// URI)."""

    def __init__(self, location: str | None = None):
        self.location = location or default_location()
        self._lock = threading.Lock()
        self._cache: tuple[float, list[dict]] | None = None

    # ------------------------------------------------------------------ storage
    def _read(self) -> list[dict]:
        return self._read_versioned()[0]

    def _read_versioned(self) -> tuple[list[dict], str | None]:
        """The keys and the version they were read at (an S3 ETag; None: no file yet)."""
        if self.location.startswith("s3://"):
            from botocore.exceptions import ClientError

            from ..io import aws

            bucket, _, key = self.location[5:].partition("/")
            try:
                obj = aws.client("s3").get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return [], None
                raise
            body, version = obj["Body"].read(), obj["ETag"]
        else:
            p = Path(self.location)
            if not p.exists():
                return [], None
            body, version = p.read_bytes(), "file"
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"{self.location} is not an API key file ({{\"keys\": [...]}})")
        return data["keys"], version

    def _write(self, keys: list[dict], version: str | None) -> bool:
        """Write ``keys`` if the file is still at ``version``; False if someone else wrote
        in between (S3's conditional put; a local file is written under a lock instead)."""
        body = json.dumps({"keys": keys}, indent=1).encode()
        if self.location.startswith("s3://"):
            from botocore.exceptions import ClientError

            from ..io import aws

            bucket, _, key = self.location[5:].partition("/")
            cond = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
            try:
                aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body, **cond)
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("PreconditionFailed",
                                                     "ConditionalRequestConflict"):
                    return False
                raise
        else:
            p = Path(self.location)
            tmp = p.with_name(p.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, p)  # readers never see half a file
        self._cache = None
        return True

    @contextlib.contextmanager
    def _exclusive(self):
        """A local key file is changed by one process at a time (an flock beside it)."""
        if self.location.startswith("s3://"):
            yield
            return
        import fcntl

        p = Path(self.location)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p.with_name(p.name + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _change(self, change) -> None:
        """Read, ``change(keys)`` (a new list, or None for no write), write; again if another
        writer got in between, so that two operators' changes never lose one another."""
        for _ in range(20):
            with self._lock, self._exclusive():
                keys, version = self._read_versioned()
                new = change(list(keys))
                if new is None or self._write(new, version):
                    return
            time.sleep(0.05 * (1 + secrets.randbelow(4)))
        raise RuntimeError(f"{self.location} kept changing under 20 attempts; try again")

    # ------------------------------------------------------------------ operations
    def create(self, name: str, admin: bool = False) -> str:
        """A new key for ``name``; returned once, stored only as its digest."""
        validate_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {"name": name, "sha256": digest(key), "admin": bool(admin),
                  "hint": key[:len(KEY_PREFIX) + 4],
                  "createdAt": datetime.now(UTC).isoformat(timespec="seconds")}
        self._change(lambda keys: keys + [record])
        return key

    def revoke(self, name: str) -> int:
        """Remove every key of ``name``; how many were removed."""
        validate_name(name)
        removed = []

        def drop(keys):
            kept = [k for k in keys if k.get("name") != name]
            removed[:] = [len(keys) - len(kept)]
            return kept if len(kept) != len(keys) else None

        self._change(drop)
        return removed[0]

    def list(self) -> list[dict]:
        """Names, admin flags, hints and creation times (never digests)."""
        return [{k: v for k, v in rec.items() if k != "sha256"} for rec in self._read()]

    def lookup(self, key: str) -> ApiUser | None:
        """The holder of ``key``, or None (compared in constant time)."""
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        d = digest(key)
        for fresh in (False, True):  # a miss reads the file again: a new key works at once
            with self._lock:
                age = time.monotonic() - self._cache[0] if self._cache else None
                if age is None or age > RELOAD_S or (fresh and age > 1.0):
                    self._cache = (time.monotonic(), self._read())
                keys = self._cache[1]
            for rec in keys:
                if hmac.compare_digest(str(rec.get("sha256", "")), d):
                    return ApiUser(rec["name"], bool(rec.get("admin")))
        return None
