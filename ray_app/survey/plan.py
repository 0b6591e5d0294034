"""The area of a survey and its patches.

The area is a set of HEALPix pixels of level :data:`FINE_LEVEL` (0.21 deg^2): those of a
region, of listed HEALPix pixels, of the whole sky, optionally only at |b| > a latitude. Each
patch *owns* the fine pixels under one HEALPix pixel of the patch level, so the owned areas
partition the survey area exactly (no gap, no overlap), and *searches* a cone around them
widened by the overlap, so a structure cut by a patch edge is whole in a neighbour.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ..core.frames import icrs_to_frame
from ..data.regions import _vec, healpix_index, parse_region
from ..data.sky_model import GALACTIC

#: HEALPix level of the area's pixels (nside 128, 0.21 deg^2).
FINE_LEVEL = 7
#: Default patch level (HEALPix level 3: 53.7 deg^2, about 7.3 deg across).
DEFAULT_PATCH_LEVEL = 3
#: Default overlap (deg) added around each patch's owned pixels.
DEFAULT_OVERLAP_DEG = 2.0
#: Largest cone a patch may search (deg): a region job's limit.
MAX_PATCH_RADIUS_DEG = 30.0
SKY_DEG2 = 4 * np.pi * (180 / np.pi) ** 2


@dataclass(frozen=True)
class Patch:
    """One patch: ``id``, the HEALPix ``pixel`` of the patch level it owns, the ``owned``
    fine pixels (level :data:`FINE_LEVEL`), and the cone it searches."""

    id: str
    level: int
    pixel: int
    owned: tuple
    ra: float
    dec: float
    radius: float

    @property
    def owned_area_deg2(self) -> float:
        return len(self.owned) * SKY_DEG2 / (12 * 4**FINE_LEVEL)

    def region(self) -> dict:
        """The patch's search region, as a job's ``region`` field."""
        return {"cone": {"center": [round(self.ra, 6), round(self.dec, 6)],
                         "radius": round(self.radius, 4)}}

    def to_dict(self) -> dict:
        return {"id": self.id, "level": self.level, "pixel": self.pixel, "ra": self.ra,
                "dec": self.dec, "radius_deg": self.radius,
                "owned_area_deg2": round(self.owned_area_deg2, 3),
                "owned_fine_pixels": len(self.owned)}


def _fine_centres():
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**FINE_LEVEL, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    return lon.to_value("deg"), lat.to_value("deg")


def parse_healpix_list(text: str) -> tuple[int, list[int]]:
    """``LEVEL:PIX,PIX,...`` -> (level, pixels), or ValueError naming what is allowed."""
    try:
        level_s, pix_s = text.split(":", 1)
        level = int(level_s)
        pixels = [int(p) for p in pix_s.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--healpix must be LEVEL:PIX,PIX,... (nested pixels), got "
                         f"{text!r}") from None
    if not 0 <= level <= FINE_LEVEL:
        raise ValueError(f"--healpix level must be in [0, {FINE_LEVEL}], got {level}")
    bad = [p for p in pixels if not 0 <= p < 12 * 4**level]
    if not pixels or bad:
        raise ValueError(f"--healpix pixels must be integers in [0, {12 * 4**level}) at level "
                         f"{level}, got {pix_s!r}")
    return level, sorted(set(pixels))


def area_pixels(region: dict | None = None, healpix: str | None = None,
                min_abs_b: float | None = None, all_sky: bool = False) -> np.ndarray:
    """The survey area as sorted fine pixels (exactly one of region, healpix, all_sky, or
    only ``min_abs_b``, which then applies to the whole sky)."""
    given = [x is not None for x in (region, healpix)] + [bool(all_sky)]
    if sum(given) > 1:
        raise ValueError("give one of --region, --healpix and --all-sky (and optionally "
                         "--min-abs-b)")
    if sum(given) == 0 and min_abs_b is None:
        raise ValueError("no survey area: give --region, --healpix, --all-sky or --min-abs-b")
    if min_abs_b is not None and not (isinstance(min_abs_b, int | float)
                                      and 0 <= min_abs_b < 90):
        raise ValueError(f"--min-abs-b must be in [0, 90) deg, got {min_abs_b!r}")
    ra, dec = _fine_centres()
    keep = np.ones(len(ra), dtype=bool)
    if region is not None:
        keep &= parse_region(region, max_area_deg2=SKY_DEG2).contains(ra, dec)
    if healpix is not None:
        level, pixels = parse_healpix_list(healpix)
        parent = np.arange(len(ra)) >> (2 * (FINE_LEVEL - level))
        keep &= np.isin(parent, pixels)
    if min_abs_b is not None:
        _, b = icrs_to_frame(GALACTIC, ra, dec)
        keep &= np.abs(b) > min_abs_b
    out = np.flatnonzero(keep)
    if not len(out):
        raise ValueError("the survey area holds no sky (check --region / --healpix / "
                         "--min-abs-b)")
    return out


def plan_patches(fine: np.ndarray, patch_level: int = DEFAULT_PATCH_LEVEL,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> list[Patch]:
    """Patches owning the area's fine pixels, grouped by their patch-level parent."""
    from astropy_healpix import HEALPix

    if isinstance(patch_level, bool) or not isinstance(patch_level, int) or \
            not 1 <= patch_level <= 6:
        raise ValueError(f"--patch-level must be an integer in [1, 6], got {patch_level!r}")
    if not (isinstance(overlap_deg, int | float) and 0 <= overlap_deg <= 10):
        raise ValueError(f"--overlap must be in [0, 10] deg, got {overlap_deg!r}")
    ra, dec = _fine_centres()
    fine_res = float(HEALPix(nside=2**FINE_LEVEL).pixel_resolution.to_value("deg"))
    hp = HEALPix(nside=2**patch_level, order="nested")
    shift = 2 * (FINE_LEVEL - patch_level)
    fine = np.asarray(fine, np.int64)
    parents = fine >> shift
    patches = []
    for parent in np.unique(parents):
        owned = fine[parents == parent]
        lon, lat = hp.healpix_to_lonlat([int(parent)])
        c_ra, c_dec = float(lon.to_value("deg")[0]), float(lat.to_value("deg")[0])
        cos = _vec(ra[owned], dec[owned]) @ _vec(c_ra, c_dec)[0]
        reach = float(np.degrees(np.arccos(np.clip(cos.min(), -1, 1))))
        radius = reach + fine_res + float(overlap_deg)
        if radius > MAX_PATCH_RADIUS_DEG:
            raise ValueError(f"patches of level {patch_level} search cones of {radius:.1f} "
                             f"deg; at most {MAX_PATCH_RADIUS_DEG:g}: raise --patch-level")
        patches.append(Patch(f"p{patch_level}-{int(parent)}", patch_level, int(parent),
                             tuple(int(x) for x in owned), c_ra, c_dec, round(radius, 4)))
    return patches


def plan_digest(patches: list[Patch], settings: dict) -> str:
    """A digest of what the survey computes: a re-run with the same digest may resume."""
    blob = json.dumps({"patches": [(p.id, p.radius) for p in patches], **settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def owner_of(ra, dec, patches: list[Patch]) -> np.ndarray:
    """Index of the patch that owns each position (-1: outside the survey area)."""
    pix = healpix_index(np.atleast_1d(ra), np.atleast_1d(dec), FINE_LEVEL)
    table = {f: i for i, p in enumerate(patches) for f in p.owned}
    return np.array([table.get(int(x), -1) for x in pix], dtype=np.int64)
