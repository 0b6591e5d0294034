"""Writers for one job's outputs, into a local directory, atomically.

Files (the contract other tools read; see README "Outputs"):

* ``persistence.npz``: ``diagram_0`` (n, 2) [birth, death] of finite pairs in log-density,
  ``peak_source_id``, ``saddle_source_id``, ``significance``; essential classes separately:
  ``essential_0`` (m, 2) [birth, -inf], ``essential_peak_source_id``,
  ``essential_key_saddle_source_id`` (-1: none), ``essential_significance``.
* ``candidates.json``: one object per candidate.
* ``candidate_members.npz``: ``candidate_<i>`` -> source_id array.
* ``metadata.json``: parameters, scales, counts, timings, versions, provenance.
* ``stars.parquet``: per star: raw columns, frame coordinates, ``feat_<name>``,
  ``log_density``, ``candidate``.
* ``gaia_table.ecsv``: the raw input table (optional).
* ``summary.png``: diagram, sky and proper-motion plane.
* ``manifest.json``: written last: every file with size and sha256.

Everything is written into a sibling ``<out>.partial-<random>`` directory that is renamed to
``<out>`` only when complete, so a failed run never leaves a directory that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path: Path, obj) -> None:
    # JSON has no infinities: write them as null so any JSON reader accepts the file
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    Path(path).write_text(text + "\n")


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return obj


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest = {"files": [{"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
                          for p in files]}
    write_json(directory / "manifest.json", manifest)
    return manifest


@contextmanager
def atomic_output_dir(out: str | Path):
    """Yield a scratch directory; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
        write_manifest(partial)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_persistence(path: Path, arrays: dict) -> None:
    np.savez_compressed(path, **arrays)


def write_members(path: Path, members: dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, **members) if members else np.savez_compressed(path)


def write_stars(path: Path, columns: dict) -> None:
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    pq.write_table(table, path, compression="zstd")


def write_gaia_ecsv(path: Path, table: pa.Table) -> None:
    from astropy.table import Table

    Table({name: table.column(name).to_numpy(zero_copy_only=False)
           for name in table.column_names}).write(path, format="ascii.ecsv", overwrite=True)
