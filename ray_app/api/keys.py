"""API keys: random bearer tokens, stored only as SHA-256 digests, each mapped to the
``submittedBy`` name of its holder (and whether it is an admin's).

The store is one JSON file: a local path (default ``$RAY_APP_HOME/apikeys.json`` in local
mode) or an ``s3://bucket/key`` object (default ``s3://$BUCKET_NAME/config/apikeys.json`` in
AWS mode, so every Serve replica and the operator's ``ray-app apikey`` see the same keys);
``RAY_APP_API_KEYS`` overrides either. A key itself is printed once, by ``create``, and never
stored: a digest of a 256-bit random token cannot be reversed or guessed, so no salt or slow
hash is needed (unlike a password).
"""

from __future__ import annotations

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
        if self.location.startswith("s3://"):
            from botocore.exceptions import ClientError

            from ..io import aws

            bucket, _, key = self.location[5:].partition("/")
            try:
                body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return []
                raise
        else:
            p = Path(self.location)
            if not p.exists():
                return []
            body = p.read_bytes()
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"{self.location} is not an API key file ({{\"keys\": [...]}})")
        return data["keys"]

    def _write(self, keys: list[dict]) -> None:
        body = json.dumps({"keys": keys}, indent=1).encode()
        if self.location.startswith("s3://"):
            from ..io import aws

            bucket, _, key = self.location[5:].partition("/")
            aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        else:
            p = Path(self.location)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, p)  # readers never see half a file
        self._cache = None

    # ------------------------------------------------------------------ operations
    def create(self, name: str, admin: bool = False) -> str:
        """A new key for ``name``; returned once, stored only as its digest."""
        validate_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            keys = self._read()
            keys.append({"name": name, "sha256": digest(key), "admin": bool(admin),
                         "hint": key[:len(KEY_PREFIX) + 4],
                         "createdAt": datetime.now(UTC).isoformat(timespec="seconds")})
            self._write(keys)
        return key

    def revoke(self, name: str) -> int:
        """Remove every key of ``name``; how many were removed."""
        validate_name(name)
        with self._lock:
            keys = self._read()
            kept = [k for k in keys if k.get("name") != name]
            if len(kept) != len(keys):
                self._write(kept)
        return len(keys) - len(kept)

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
