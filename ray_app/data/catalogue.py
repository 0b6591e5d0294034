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
        numeric = (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                   or pa.types.is_decimal(col.type) or pa.types.is_null(col.type))
        if name in REQUIRED_COLUMNS or name in OPTIONAL_COLUMNS:
            # text is refused, not parsed: a string column is a sign of a broken export
            if not numeric:
                raise CatalogueError(f"{origin}: column {name!r} must be numeric (an integer "
                                     f"or floating-point type), got {col.type}")
            try:
                if name == "source_id":
                    arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
                else:
                    arr = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False),
                                     dtype=np.float64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
                raise CatalogueError(
                    f"{origin}: column {name!r} must be numeric, got {col.type}") from exc
        elif numeric and col.null_count and not pa.types.is_floating(col.type):
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
        else:  # every other column travels to stars.parquet as it is
            arr = col.to_numpy(zero_copy_only=False)
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
    if looks_like_radians(ra, dec):
        raise CatalogueError(
            f"{origin}: columns 'ra' and 'dec' look like radians (every value within "
            f"|ra| <= 2 pi, |dec| <= pi/2, spanning {np.ptp(ra[np.isfinite(ra)]):.3g} x "
            f"{np.ptp(dec[np.isfinite(dec)]):.3g}); they must be in degrees")
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


def looks_like_radians(ra: np.ndarray, dec: np.ndarray) -> bool:
    """True when every finite ra/dec fits radian ranges although the stars spread over more
    than a degree-scale patch could: values within 2 pi and pi/2 and a dec span above 0.5
    (a field that small in degrees would have to sit at the origin of both coordinates and
    be no more than ~6 x 3 deg, while radians-sized spans of 0.5 are 29 deg)."""
    ra = ra[np.isfinite(ra)]
    dec = dec[np.isfinite(dec)]
    if len(ra) < 2 or len(dec) < 2:
        return False
    fits = np.all(np.abs(ra) <= 2 * np.pi + 1e-9) and np.all(np.abs(dec) <= np.pi / 2 + 1e-9)
    return bool(fits and (np.ptp(dec) > 0.5 or np.ptp(ra) > 1.0))


#: Photometry used by default when a table has both columns (Gaia's G and BP-RP).
DEFAULT_PHOTOMETRY = {"magnitude": "phot_g_mean_mag", "colour": "bp_rp"}


def parse_photometry(spec) -> dict | None:
    """``photometry`` of a job: ``"MAG,COLOUR"`` (CLI), ``{"magnitude": M, "colour": C}``
    (message), ``"none"`` (switch the photometric filter off) or ``None`` (Gaia's
    ``phot_g_mean_mag`` and ``bp_rp`` when the table has them). ``C`` is a column or ``A-B``
    of two columns. Returns ``{"magnitude", "colour"}``, ``{"off": True}`` or None.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() in ("none", "off"):
            return {"off": True}
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"photometry must be MAG,COLOUR (COLOUR a column or A-B) or "
                             f"'none', got {spec!r}")
        spec = {"magnitude": parts[0], "colour": parts[1]}
    if not isinstance(spec, dict) or set(spec) != {"magnitude", "colour"} or not all(
            isinstance(v, str) and v.strip() for v in spec.values()):
        raise ValueError('photometry must be {"magnitude": column, "colour": column or '
                         f'"A-B"}}, got {spec!r}')
    colour = spec["colour"].strip()
    if colour.count("-") > 1 or colour.startswith("-") or colour.endswith("-"):
        raise ValueError(f"photometry colour must be a column or A-B of two columns, got "
                         f"{colour!r}")
    return {"magnitude": spec["magnitude"].strip(), "colour": colour}


def photometry_columns(cols: dict, spec: dict | None, origin: str = "catalogue"
                       ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(magnitude, colour, description) from a catalogue's columns, or None without
    photometry. A named column the table lacks is an error; the default pair is used only
    when present."""
    if spec is not None and spec.get("off"):
        return None
    if spec is None:
        if not all(c in cols for c in DEFAULT_PHOTOMETRY.values()):
            return None
        spec = DEFAULT_PHOTOMETRY
    colour_cols = spec["colour"].split("-") if spec["colour"] not in cols else [spec["colour"]]
    for name in [spec["magnitude"], *colour_cols]:
        if name not in cols:
            raise CatalogueError(f"{origin}: photometry names column {name!r}, which the "
                                 f"table does not have (it has: {', '.join(cols)})")

    def num(name):
        try:
            return np.asarray(cols[name], dtype=np.float64)
        except (TypeError, ValueError):
            raise CatalogueError(f"{origin}: photometry column {name!r} must be numeric") \
                from None

    mag = num(spec["magnitude"])
    colour = num(colour_cols[0]) if len(colour_cols) == 1 else num(colour_cols[0]) - num(
        colour_cols[1])
    return mag, colour, {"magnitude": spec["magnitude"], "colour": spec["colour"]}
