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

Nothing of the user's is ever replaced: :func:`check_out_dir` (called before any work, and
again just before the rename) accepts a missing or empty directory, and replaces an existing
one only when it is a previous output of ours (its ``manifest.json`` lists every file in it)
and ``overwrite`` was asked for.
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


#: Written into every manifest, so a later run can tell our outputs from a user's folder.
PRODUCER = "ray-app"


def write_manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest = {"producer": PRODUCER,
                "files": [{"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
                          for p in files]}
    write_json(directory / "manifest.json", manifest)
    return manifest


def is_previous_output(directory: Path) -> bool:
    """True when ``directory`` holds exactly one of our outputs: a ``manifest.json`` that we
    wrote and that lists every other entry of the directory (so nothing else would be lost)."""
    try:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        listed = {f["name"] for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = {p.name for p in Path(directory).iterdir()} - {"manifest.json"}
    return isinstance(manifest, dict) and manifest.get("producer", PRODUCER) == PRODUCER \
        and present <= listed


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_dir(out: str | Path, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse, before any work, an output location that we could not use without loss.

    Parameters
    ----------
    out : str or Path
        The output directory asked for.
    overwrite : bool
        Replace a previous output of ours (never anything else).
    flag : str
        How the caller names the option in its error messages.

    Returns
    -------
    Path
        ``out`` made absolute (``.`` and ``..`` resolved), the path to write to.

    Raises
    ------
    ValueError
        ``out`` is a file; a non-empty directory that is not a previous output of ours; a
        previous output without ``overwrite``; or a place this process cannot write to.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {str(out)!r} is an existing file, not a directory: choose a "
                         "directory that does not exist yet (nothing was written)")
    if out.is_dir() and any(out.iterdir()):
        if not is_previous_output(out):
            raise ValueError(f"{flag} {str(out)!r} already holds files that are not an output "
                             "of ray-app (no manifest.json of ours lists them): choose a new "
                             "or empty directory (nothing was written or deleted)")
        if not overwrite:
            raise ValueError(f"{flag} {str(out)!r} holds a previous ray-app output: pass "
                             "--overwrite to replace it, or choose another directory")
    if out == Path(out.anchor):
        raise ValueError(f"{flag} {str(out)!r} is a filesystem root: choose a directory")
    base = _nearest_existing(out.parent)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(out)!r} cannot be created: {str(base)!r} is not a "
                         "writable directory")
    return out


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a scratch directory; on success it replaces ``out``, on error it is removed.

    ``out`` is checked again (:func:`check_out_dir`) just before it is replaced, so files
    that appeared there while the job ran are not lost either.
    """
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
        write_manifest(partial)
        check_out_dir(out, overwrite)
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


def merge_columns(inputs: dict, computed: dict) -> tuple[dict, dict]:
    """Input columns first, then computed ones; an input column whose name a computed one
    takes is kept as ``input_<name>`` (never overwritten). Returns (columns, renames)."""
    out, renamed = {}, {}
    for name, values in inputs.items():
        new = name
        while new in computed or (new != name and new in inputs):
            new = f"input_{new}"
        if new != name:
            renamed[name] = new
        out[new] = values
    out.update(computed)
    return out, renamed


def write_stars(path: Path, columns: dict) -> None:
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    pq.write_table(table, path, compression="zstd")


def write_gaia_ecsv(path: Path, table: pa.Table) -> None:
    from astropy.table import Table

    Table({name: table.column(name).to_numpy(zero_copy_only=False)
           for name in table.column_names}).write(path, format="ascii.ecsv", overwrite=True)
