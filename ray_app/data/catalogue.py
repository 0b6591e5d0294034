"""Reading and validating user catalogues (Parquet or any table pyarrow can open).

A catalogue is a dict of column name -> 1-D NumPy array. Required columns are checked by name
and by plausible units, so a table with proper motions in arcsec/yr or radians is refused with
a message saying which column looks wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("source_id", "ra", "dec", "pmra", "pmdec", "parallax")
OPTIONAL_COLUMNS = ("phot_g_mean_mag", "bp_rp", "parallax_error", "pmra_error", "pmdec_error",
                    "ruwe")


class CatalogueError(ValueError):
    """A catalogue that cannot be used; the message names the file, column and problem."""


def is_uri(source: str | Path) -> bool:
    return "://" in str(source)


def read_catalogue(source: str | Path, columns_map: dict | None = None
                   ) -> tuple[dict, pa.Table]:
    """Read a Parquet catalogue and return (columns, raw arrow table).

    Parameters
    ----------
    source : str or Path
        Local Parquet file, or a URI pyarrow's filesystems open (``s3://bucket/key``; the S3
        endpoint and credentials come from the standard AWS environment, ``AWS_ENDPOINT_URL``
        included).
    columns_map : dict, optional
        Renames from the file's names to ours, e.g. ``{"RA_ICRS": "ra"}``.

    Raises
    ------
    CatalogueError
        Missing or unreadable file, missing columns, wrong types or implausible units: the
        input will never work as it is. Other I/O errors (network) propagate as they are:
        a retry may succeed.
    """
    name = str(source)
    try:
        if is_uri(name):
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(name)
            table = pq.read_table(path, filesystem=filesystem)
        else:
            if not Path(name).exists():
                raise FileNotFoundError(name)
            table = pq.read_table(name)
    except FileNotFoundError:
        raise CatalogueError(f"input catalogue {name!r} does not exist") from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise CatalogueError(
            f"input catalogue {name!r} is not a readable Parquet file: {exc}") from exc
    if columns_map:
        unknown = sorted(set(columns_map) - set(table.column_names))
        if unknown:
            raise CatalogueError(f"{name}: columns mapping names column(s) "
                                 f"{', '.join(unknown)} that the file does not have "
                                 f"(it has: {', '.join(table.column_names)})")
        table = table.rename_columns([columns_map.get(c, c) for c in table.column_names])
    return columns_from_table(table, origin=name), table


def parse_columns_map(text: str | dict | None) -> dict | None:
    """``"RA_ICRS=ra,DE_ICRS=dec"`` (or a dict) -> ``{"RA_ICRS": "ra", "DE_ICRS": "dec"}``.

    Targets must be known column names; each source maps once.
    """
    if text is None or text == "" or text == {}:
        return None
    if isinstance(text, str):
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise ValueError(f"columns must look like FILE_NAME=our_name[,...], got {text!r}")
        mapping = {a.strip(): b.strip() for a, b in pairs}
    elif isinstance(text, dict) and all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in text.items()):
        mapping = dict(text)
    else:
        raise ValueError(f"columns must map file column names to ours, got {text!r}")
    allowed = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    bad = sorted(v for v in mapping.values() if v not in allowed)
    if bad:
        raise ValueError(f"columns maps to unknown name(s) {', '.join(bad)}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    return mapping


def columns_from_table(table: pa.Table, origin: str = "table") -> dict:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise CatalogueError(
            f"{origin}: missing required column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(table.column_names)})")
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if name in REQUIRED_COLUMNS or name in OPTIONAL_COLUMNS:
            try:
                if name == "source_id":
                    arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
                else:
                    arr = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False),
                                     dtype=np.float64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
                raise CatalogueError(
                    f"{origin}: column {name!r} must be numeric, got {col.type}") from exc
            cols[name] = arr
    return validate_columns(cols, origin)


def validate_columns(cols: dict, origin: str = "catalogue") -> dict:
    """Check sizes, ids and units of a column dict; returns it unchanged."""
    n = len(cols["source_id"])
    for name in REQUIRED_COLUMNS:
        if len(cols[name]) != n:
            raise CatalogueError(f"{origin}: column {name!r} has {len(cols[name])} rows, "
                                 f"source_id has {n}")
    if n == 0:
        raise CatalogueError(f"{origin}: the catalogue has no rows")
    if len(np.unique(cols["source_id"])) != n:
        raise CatalogueError(f"{origin}: source_id values must be unique")
    ra, dec = cols["ra"], cols["dec"]
    if np.any((ra[np.isfinite(ra)] < -360) | (ra[np.isfinite(ra)] > 360)):
        raise CatalogueError(f"{origin}: column 'ra' must be in degrees (|ra| <= 360)")
    if np.any(np.abs(dec[np.isfinite(dec)]) > 90):
        raise CatalogueError(f"{origin}: column 'dec' must be in degrees within [-90, 90]")
    for name in ("pmra", "pmdec"):
        v = cols[name][np.isfinite(cols[name])]
        if len(v) and np.median(np.abs(v)) > 1e4:
            raise CatalogueError(f"{origin}: column {name!r} does not look like mas/yr "
                                 f"(median |value| {np.median(np.abs(v)):.3g})")
    plx = cols["parallax"][np.isfinite(cols["parallax"])]
    if len(plx) and np.median(np.abs(plx)) > 1e3:
        raise CatalogueError(f"{origin}: column 'parallax' does not look like mas "
                             f"(median |value| {np.median(np.abs(plx)):.3g})")
    return cols
