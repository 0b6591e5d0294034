"""The jobId rule, shared by the status and result stores and the job schema.

A jobId becomes an S3 key prefix, a DynamoDB key and a folder name, so it is restricted to
1-128 characters of ``[A-Za-z0-9_-]`` and checked before any storage call.
"""

from __future__ import annotations

import re
import uuid

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidJob(ValueError):
    """A job that can never succeed (the submitter's error); ``job_id`` is set when it could
    be read."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id


def validate_job_id(value) -> str:
    """Return the jobId or raise :class:`InvalidJob` (checked before any storage call)."""
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        length = len(value) if isinstance(value, str) else None
        raise InvalidJob(f"jobId must be 1-128 characters of [A-Za-z0-9_-], got {shown!r}"
                         + (f" (length {length})" if length is not None else ""))
    return value


def new_job_id() -> str:
    """A fresh random jobId (16 hex digits)."""
    return uuid.uuid4().hex[:16]
