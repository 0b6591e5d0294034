"""Sources of a sky survey: the synthetic Milky Way over any area, and HEALPix-partitioned
Parquet datasets (the HATS layout).

Synthetic sky
    Field stars are drawn per HEALPix cell of level :data:`SKY_LEVEL` (13.4 deg^2), each cell
    from its own seed ``(seed, cell)``: any patch, however it is cut, sees exactly the same
    stars where it overlaps another. A cell holds ``POLE_DENSITY x density_scale x`` (the
    model's star count there relative to the Galactic pole) x its area stars, so counts
    follow latitude as Gaia's do. Injected registry streams are drawn once for the whole
    sky (seed ``(seed, "streams")``) and each patch keeps the members inside it.
HATS
    A catalogue partitioned as ``Norder=K/Dir=D/Npix=N/*.parquet`` (HEALPix order K, nested
    pixel N, D = N // 10000 rounded down to a multiple of 10000) is read with a pyarrow
    dataset and only the partitions that overlap the patch and its margin are opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from .regions import ConeRegion, HealpixRegion, _vec, centred_frame, healpix_index

#: HEALPix level of the synthetic sky's cells (13.4 deg^2 each).
SKY_LEVEL = 4
#: Field stars per deg^2 at the Galactic poles after the default query cuts (G < 20.5,
#: parallax < 1 mas, -0.5 < BP-RP < 2.5): about Gaia DR3's count there.
POLE_DENSITY = 2000.0
#: Members per injected stream (stars brighter than G = 20.5 before the cuts): the order of
#: the brighter known streams in Gaia DR3 (GD-1 ~ 2000, Pal 5 ~ 1000).
DEFAULT_STREAM_MEMBERS = 1000


def _cells_overlapping(region, level: int) -> np.ndarray:
    """Cells of ``level`` that may hold stars of a cone region (centres within the radius
    plus one cell size)."""
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**level, order="nested")
    pad = float(hp.pixel_resolution.to_value("deg")) * 1.5
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    v = _vec(lon.to_value("deg"), lat.to_value("deg"))
    c = _vec(region.ra, region.dec)[0]
    return np.flatnonzero(v @ c >= np.cos(np.radians(min(region.radius + pad, 180.0))))


@dataclass
class SyntheticSurveySky:
    """A seeded synthetic Gaia-like sky with registry streams injected (module docstring).

    Attributes
    ----------
    seed : int
    density_scale : float
        Fraction of the field's stars kept (> 0, <= 1): thins the field so that a survey of
        thousands of deg^2 runs on a laptop; the injected streams are not thinned.
    inject : tuple of str
        Registry keys of the streams to inject.
    stream_members : int
        Members per injected stream.
    """

    seed: int = 0
    density_scale: float = 0.02
    inject: tuple = ()
    stream_members: int = DEFAULT_STREAM_MEMBERS
    _streams: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if not (isinstance(self.density_scale, int | float) and 0 < self.density_scale <= 1):
            raise ValueError(f"density_scale must be in (0, 1], got {self.density_scale!r}")
        if isinstance(self.stream_members, bool) or not isinstance(self.stream_members, int) \
                or self.stream_members < 1:
            raise ValueError(f"stream members must be an integer >= 1, got "
                             f"{self.stream_members!r}")
        from .registry import get_stream

        self.inject = tuple(get_stream(k).key for k in self.inject)

    def streams(self) -> dict:
        """Every injected star of the whole sky (drawn once), with its stream's index."""
        if self._streams is None:
            from .synthetic import Injection, _members

            rng = np.random.default_rng([self.seed, 1 << 30])
            parts = []
            for i, key in enumerate(self.inject):
                m = _members(Injection(key, self.stream_members), rng, 20.5)
                m["stream_label"] = np.full(len(m["ra"]), i, np.int32)
                m["source_id"] = (healpix_index(m["ra"], m["dec"], 12).astype(np.int64) * 2**35
                                  + 2**34 + i * 2**20 + np.arange(len(m["ra"])))
                parts.append(m)
            self._streams = ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                             if parts else {})
        return self._streams

    def cell_stars(self, cell: int) -> dict:
        """The field stars of one cell (seeded by the cell: the same whoever asks)."""
        from astropy_healpix import HEALPix

        from .sky_model import draw_field, relative_sky_density

        hp = HEALPix(nside=2**SKY_LEVEL, order="nested")
        lon, lat = hp.healpix_to_lonlat([cell])
        ra0, dec0 = float(lon.to_value("deg")[0]), float(lat.to_value("deg")[0])
        pole_ra, pole_dec = 192.85948, 27.12825  # the north Galactic pole, ICRS
        rel = float(relative_sky_density(ra0, dec0)[0]
                    / relative_sky_density(pole_ra, pole_dec)[0])
        area = float(hp.pixel_area.to_value("deg2"))
        rng = np.random.default_rng([self.seed, int(cell)])
        n = int(rng.poisson(POLE_DENSITY * self.density_scale * rel * area))
        if n == 0:
            return {}
        region = HealpixRegion(centred_frame(ra0, dec0), SKY_LEVEL, (int(cell),))
        f = draw_field(region, n, rng, batch=max(20 * n, 5000))
        f.pop("component")
        f["stream_label"] = np.full(n, -1, np.int32)
        f["source_id"] = (healpix_index(f["ra"], f["dec"], 12).astype(np.int64) * 2**35
                          + int(cell) * 2**20 + np.arange(n))
        return f

    def stars_in(self, region: ConeRegion, cuts=None) -> dict:
        """Every star (field and injected) inside a cone passing ``cuts`` (a QueryCuts;
        default the archive's defaults), with truth columns ``stream_label`` (-1: field)
        and ``is_stream``."""
        parts = [self.cell_stars(int(c)) for c in _cells_overlapping(region, SKY_LEVEL)]
        streams = self.streams()
        if streams:
            parts.append(streams)
        parts = [p for p in parts if p]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        inside = region.contains(cols["ra"], cols["dec"]) & passes_cuts(cols, cuts)
        cols = {k: v[inside] for k, v in cols.items()}
        cols.pop("distance_kpc", None)
        cols["is_stream"] = cols["stream_label"] >= 0
        return cols


def passes_cuts(cols, cuts=None) -> np.ndarray:
    """Rows passing a QueryCuts (default its defaults): parallax below the limit (and not
    NaN), and, where the columns exist, G and BP-RP within theirs."""
    from .gaia import QueryCuts

    cuts = cuts or QueryCuts()
    get = (lambda k: np.asarray(cols[k])) if isinstance(cols, dict) else \
        (lambda k: cols[k].to_numpy(zero_copy_only=False))
    names = cols.keys() if isinstance(cols, dict) else cols.column_names
    ok = get("parallax") < cuts.parallax_max
    if "phot_g_mean_mag" in names:
        ok &= get("phot_g_mean_mag") < cuts.g_max
    if "bp_rp" in names:
        bp_rp = get("bp_rp")
        ok &= (bp_rp > cuts.bp_rp_min) & (bp_rp < cuts.bp_rp_max)
    return ok


# ---------------------------------------------------------------- HATS-partitioned Parquet
_PARTITION = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)")


def hats_partitions(root: str | Path) -> list[tuple[int, int, Path]]:
    """(order, pixel, path) of every partition file of a HATS-layout catalogue."""
    root = Path(root)
    out = []
    for path in sorted(root.glob("Norder=*/Dir=*/Npix=*")):
        m = _PARTITION.search(path.as_posix())
        if m is None:
            continue
        files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
        out += [(int(m[1]), int(m[3]), f) for f in files]
    if not out:
        raise ValueError(f"{root} holds no Norder=K/Dir=D/Npix=N partitions (HATS layout)")
    return out


def read_hats(root: str | Path, region: ConeRegion, columns: list[str] | None = None
              ) -> tuple[pa.Table, int, int]:
    """The rows of a HATS catalogue inside ``region``, opening only the partitions whose
    pixel overlaps it. Returns (table, partitions opened, partitions in the catalogue)."""
    from astropy_healpix import HEALPix

    parts = hats_partitions(root)
    c = _vec(region.ra, region.dec)[0]
    wanted = []
    for order, pix, path in parts:
        hp = HEALPix(nside=2**order, order="nested")
        lon, lat = hp.healpix_to_lonlat([pix])
        centre = _vec(lon.to_value("deg"), lat.to_value("deg"))[0]
        # a pixel's farthest point is within ~1.2 x its resolution of its centre
        reach = region.radius + 1.2 * float(hp.pixel_resolution.to_value("deg"))
        if centre @ c >= np.cos(np.radians(min(reach, 180.0))):
            wanted.append(str(path))
    if not wanted:
        return pa.table({}), 0, len(parts)
    table = ds.dataset(wanted, format="parquet").to_table(columns=columns)
    inside = region.contains(table["ra"].to_numpy(), table["dec"].to_numpy())
    return table.filter(pa.array(inside)), len(wanted), len(parts)


def write_hats(table: pa.Table, root: str | Path, order: int) -> list[Path]:
    """Write ``table`` (with ra, dec) as a HATS-layout catalogue at one HEALPix order."""
    import pyarrow.parquet as pq

    root = Path(root)
    pix = healpix_index(table["ra"].to_numpy(), table["dec"].to_numpy(), order)
    written = []
    for p in np.unique(pix):
        d = root / f"Norder={order}" / f"Dir={int(p) // 10000 * 10000}" / f"Npix={int(p)}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(pix == p)), d / "part0.parquet")
        written.append(d / "part0.parquet")
    return written
