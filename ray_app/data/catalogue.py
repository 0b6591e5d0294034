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


def read_catalogue(path: str | Path, columns_map: dict | None = None) -> tuple[dict, pa.Table]:
    """Read a Parquet catalogue and return (columns, raw arrow table).

    Parameters
    ----------
    path : str or Path
        Local Parquet file.
    columns_map : dict, optional
        Renames from the file's names to ours, e.g. ``{"RA_ICRS": "ra"}``.

    Raises
    ------
    CatalogueError
        Unreadable file, missing columns, wrong types or implausible units.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"input catalogue {str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CatalogueError(
            f"input catalogue {str(path)!r} is not a readable Parquet file: {exc}") from exc
    if columns_map:
        table = table.rename_columns([columns_map.get(c, c) for c in table.column_names])
    return columns_from_table(table, origin=str(path)), table


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
