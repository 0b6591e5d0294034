"""Result stores: where a job's output files live, under ``jobs/{jobId}/``.

Files are uploaded in name order with ``manifest.json`` last, so a manifest means the job's
outputs are complete; a crashed attempt's partial files are simply overwritten by the next.
Both stores validate the jobId before touching storage (it becomes a key prefix).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .ids import validate_job_id

MANIFEST = "manifest.json"


def _input_name(name: str) -> str:
    """``survey/patch.parquet``-like names only: no way out of the inputs area."""
    parts = name.split("/")
    if not parts or any(not part or part in (".", "..") or not all(
            ch.isalnum() or ch in "-_." for ch in part) for part in parts):
        raise ValueError(f"input name must be /-separated parts of [A-Za-z0-9._-], got "
                         f"{name!r}")
    return name


def _ordered(local_dir: Path) -> list[Path]:
    files = sorted(p for p in Path(local_dir).iterdir() if p.is_file())
    if not any(p.name == MANIFEST for p in files):
        raise ValueError(f"{local_dir} has no {MANIFEST}: outputs are incomplete")
    return [p for p in files if p.name != MANIFEST] + [Path(local_dir) / MANIFEST]


class LocalResultStore:
    """``<root>/jobs/<jobId>/`` on the local disk (embedded local mode)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prefix(self, job_id: str) -> str:
        return str(self.root / "jobs" / validate_job_id(job_id))

    def cache_location(self) -> str:
        """Where fetched data (Gaia chunks) is cached, beside the results."""
        return str(self.root / "cache" / "gaia")

    def upload(self, job_id: str, local_dir: str | Path) -> str:
        dest = Path(self.prefix(job_id))
        dest.mkdir(parents=True, exist_ok=True)
        for p in _ordered(Path(local_dir)):
            shutil.copyfile(p, dest / p.name)
        return str(dest)

    def put_input(self, name: str, local_file: str | Path) -> str:
        """Store an input catalogue for jobs to read (``<root>/inputs/<name>``); its path."""
        dest = self.root / "inputs" / _input_name(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_file, dest)
        return str(dest)

    def manifest(self, job_id: str) -> dict | None:
        p = Path(self.prefix(job_id)) / MANIFEST
        return json.loads(p.read_text()) if p.exists() else None

    def download(self, job_id: str, to: str | Path, prefix: str | None = None) -> list[Path]:
        """Copy a job's files to ``to``; ``prefix``: where its status record says they are
        (``ray-app recover`` jobs keep theirs in their ``--out``)."""
        src = Path(prefix) if prefix and Path(prefix).is_dir() else Path(self.prefix(job_id))
        if not (src / MANIFEST).exists():
            raise FileNotFoundError(f"job {job_id!r} has no complete outputs in {src}")
        to = Path(to)
        to.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copyfile(p, to / p.name)) for p in sorted(src.iterdir())]


class S3ResultStore:
    """``s3://<bucket>/jobs/<jobId>/`` through boto3 (``AWS_ENDPOINT_URL`` honoured)."""

    def __init__(self, bucket: str, client=None, prefix: str = "jobs"):
        from . import aws

        self.bucket = bucket
        self.s3 = client or aws.client("s3")
        self.base = prefix.strip("/")

    def prefix(self, job_id: str) -> str:
        return f"{self.base}/{validate_job_id(job_id)}/"

    def cache_location(self) -> str:
        """Where fetched data (Gaia chunks) is cached, beside the results."""
        return f"s3://{self.bucket}/cache/gaia"

    def uri(self, job_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix(job_id)}"

    def upload(self, job_id: str, local_dir: str | Path) -> str:
        prefix = self.prefix(job_id)
        for p in _ordered(Path(local_dir)):
            with open(p, "rb") as fh:
                self.s3.put_object(Bucket=self.bucket, Key=prefix + p.name, Body=fh)
        return self.uri(job_id)

    def presign(self, job_id: str, name: str, expires_s: int = 3600) -> str:
        """A time-limited HTTPS link to one of a job's files (no AWS credentials needed by
        whoever follows it)."""
        return self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix(job_id) + name},
            ExpiresIn=int(expires_s))

    def put_input(self, name: str, local_file: str | Path) -> str:
        """Upload an input catalogue for jobs to read (``inputs/<name>``); its s3:// URI."""
        key = f"inputs/{_input_name(name)}"
        with open(local_file, "rb") as fh:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=fh)
        return f"s3://{self.bucket}/{key}"

    def manifest(self, job_id: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.prefix(job_id) + MANIFEST)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(obj["Body"].read())

    def download(self, job_id: str, to: str | Path, prefix: str | None = None) -> list[Path]:
        manifest = self.manifest(job_id)
        if manifest is None:
            raise FileNotFoundError(f"job {job_id!r} has no complete outputs in "
                                    f"{self.uri(job_id)}")
        to = Path(to)
        to.mkdir(parents=True, exist_ok=True)
        out = []
        for name in [f["name"] for f in manifest["files"]] + [MANIFEST]:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.prefix(job_id) + name)
            (to / name).write_bytes(obj["Body"].read())
            out.append(to / name)
        return out


def upload_folder(local_dir: str | Path, uri: str, client=None) -> list[str]:
    """Copy a finished output folder (subfolders included) to ``s3://bucket/prefix/``,
    ``manifest.json`` of the top folder last, so its presence means the copy is complete.
    Returns the keys written."""
    from . import aws

    bucket, _, prefix = uri[5:].partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise ValueError(f"expected s3://bucket/prefix, got {uri!r}")
    prefix = prefix.strip("/")
    s3 = client or aws.client("s3")
    root = Path(local_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    files = [p for p in files if p != root / MANIFEST] + ([root / MANIFEST]
                                                          if (root / MANIFEST).exists() else [])
    keys = []
    for p in files:
        key = "/".join(x for x in (prefix, p.relative_to(root).as_posix()) if x)
        with open(p, "rb") as fh:
            s3.put_object(Bucket=bucket, Key=key, Body=fh)
        keys.append(key)
    return keys
