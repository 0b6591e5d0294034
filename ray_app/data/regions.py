"""Sky regions: a stream's footprint, or a blind region (polygon, cone or HEALPix pixels).

Every region has a stream-like frame (phi1 along, phi2 across) and answers three questions:

* ``contains(ra, dec)``: exact membership (the definition every fetch and test uses);
* ``area_deg2``: its size, checked against :data:`MAX_REGION_DEG2` for blind regions;
* ``phi2_envelope(phi1)``: conservative lower/upper phi2 bounds of the region along phi1,
  from which :mod:`ray_app.data.gaia` cuts query polygons the archive accepts.

Angles are degrees. Pure NumPy (astropy-healpix for pixel regions); no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..core.frames import StreamFrame, _unit_vectors, frame_to_icrs, icrs_to_frame

#: Largest blind region a job may ask for (deg^2); a stream footprint is not limited by it.
MAX_REGION_DEG2 = 3000.0
#: A polygon's vertices must lie within this angle of its centre (gnomonic tests need < 90).
MAX_POLYGON_RADIUS_DEG = 60.0
MAX_CONE_RADIUS_DEG = 30.0
#: Smallest cone (1 arcmin): below it a region holds no stream and rounds to zero area.
MIN_CONE_RADIUS_DEG = 1.0 / 60.0
MAX_POLYGON_VERTICES = 1000
MAX_HEALPIX_PIXELS = 100_000


def _vec(ra, dec) -> np.ndarray:
    """(N, 3) unit vectors."""
    return _unit_vectors(np.asarray(ra, float), np.asarray(dec, float)).reshape(3, -1).T


def _lonlat(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return (np.mod(np.degrees(np.arctan2(v[..., 1], v[..., 0])), 360.0),
            np.degrees(np.arcsin(np.clip(v[..., 2], -1, 1))))


def healpix_index(ra, dec, level: int) -> np.ndarray:
    """Nested HEALPix index (nside = 2**level) of each position; at level 12 it is Gaia's
    ``source_id // 2**35``."""
    import astropy.units as u
    from astropy_healpix import HEALPix

    return HEALPix(nside=2**level, order="nested").lonlat_to_healpix(
        np.asarray(ra, float) * u.deg, np.asarray(dec, float) * u.deg)


def centred_frame(ra: float, dec: float, name: str = "region frame") -> StreamFrame:
    """A frame with (phi1, phi2) = (0, 0) at (ra, dec) and phi1 increasing with ra there."""
    return StreamFrame.from_pole(np.mod(ra + 180.0, 360.0), 90.0 - dec, ra, dec, name=name)


def spherical_polygon_area(ra, dec) -> float:
    """Area (deg^2) of a simple polygon with great-circle edges (fan of signed triangles)."""
    v = _vec(ra, dec)
    c = v.sum(axis=0)
    c /= np.linalg.norm(c)
    a, b = v, np.roll(v, -1, axis=0)
    num = np.einsum("ij,ij->i", np.broadcast_to(c, a.shape), np.cross(a, b))
    den = 1.0 + a @ c + b @ c + np.einsum("ij,ij->i", a, b)
    return float(abs(np.sum(2.0 * np.arctan2(num, den))) * (180.0 / np.pi) ** 2)


def _gnomonic(center: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gnomonic projection about ``center``: great circles become straight lines."""
    e1 = np.cross([0.0, 0.0, 1.0], center)
    if np.linalg.norm(e1) < 1e-12:
        e1 = np.array([1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(center, e1)
    w = v @ center
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([(v @ e1) / w, (v @ e2) / w], axis=-1)


def _points_in_planar_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule; ``pts`` (N, 2), ``poly`` (M, 2)."""
    x, y = pts[:, 0], pts[:, 1]
    inside = np.zeros(len(pts), bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        crosses = (b > y) != (d > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = a + (y - b) * (c - a) / (d - b)
        inside ^= crosses & (x < xi)
    return inside


def polygon_contains(poly_ra, poly_dec, ra, dec) -> np.ndarray:
    """Exact membership in a spherical polygon (great-circle edges, < 90 deg from its centre)."""
    pv = _vec(poly_ra, poly_dec)
    c = pv.sum(axis=0)
    c /= np.linalg.norm(c)
    v = _vec(ra, dec)
    front = v @ c > 1e-9
    out = np.zeros(len(v), bool)
    if front.any():
        out[front] = _points_in_planar_polygon(_gnomonic(c, v[front]), _gnomonic(c, pv))
    return out


@dataclass(frozen=True, eq=False)
class Region:
    """Base class; see the module docstring."""

    frame: StreamFrame

    kind = "region"

    def contains(self, ra, dec) -> np.ndarray:
        raise NotImplementedError

    def unwrap_phi1(self, phi1) -> np.ndarray:
        """phi1 mapped into [lo, lo + 360) so ranges that cross phi1 = 180 stay contiguous."""
        lo = self.phi1_range[0]
        return lo + np.mod(np.asarray(phi1, float) - lo, 360.0)

    @property
    def area_deg2(self) -> float:
        raise NotImplementedError

    @property
    def phi1_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def phi2_envelope(self, phi1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds (lo, hi) of the region's phi2 near each ``phi1`` (conservative)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniform on the sphere inside the region (ra, dec)."""
        lo, hi = self.phi1_range
        grid = np.linspace(lo, hi, 512)
        e_lo, e_hi = self.phi2_envelope(grid)
        p2_lo, p2_hi = float(np.min(e_lo)), float(np.max(e_hi))
        s_lo, s_hi = np.sin(np.radians(max(p2_lo, -90))), np.sin(np.radians(min(p2_hi, 90)))
        ra_out, dec_out, got = [], [], 0
        while got < n:
            m = max(2 * (n - got), 1024)
            p1 = rng.uniform(lo, min(hi, lo + 360.0), m)
            p2 = np.degrees(np.arcsin(rng.uniform(s_lo, s_hi, m)))
            ra, dec = frame_to_icrs(self.frame, p1, p2)
            keep = self.contains(ra, dec)
            ra_out.append(ra[keep])
            dec_out.append(dec[keep])
            got += int(keep.sum())
        return np.concatenate(ra_out)[:n], np.concatenate(dec_out)[:n]


@dataclass(frozen=True, eq=False)
class TrackFootprint(Region):
    """A stream's footprint: ``|phi2 - track(phi1)| <= half_width`` over the track's phi1 range.

    ``track_phi1``/``track_phi2`` are the track's nodes in the stream frame (sorted by phi1);
    between nodes the track is linear in (phi1, phi2).
    """

    track_phi1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    track_phi2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    half_width: float = 2.0

    kind = "stream-footprint"

    def __post_init__(self):
        if len(self.track_phi1) < 2 or np.any(np.diff(self.track_phi1) < 0):
            raise ValueError("a footprint needs at least 2 track nodes sorted by phi1")
        if not self.half_width > 0:
            raise ValueError(f"footprint half_width must be > 0 deg, got {self.half_width!r}")

    def track_at(self, phi1) -> np.ndarray:
        return np.interp(phi1, self.track_phi1, self.track_phi2)

    @property
    def phi1_range(self) -> tuple[float, float]:
        return float(self.track_phi1[0]), float(self.track_phi1[-1])

    def contains(self, ra, dec) -> np.ndarray:
        p1, p2 = icrs_to_frame(self.frame, ra, dec)
        lo, hi = self.phi1_range
        return (p1 >= lo) & (p1 <= hi) & (np.abs(p2 - self.track_at(p1)) <= self.half_width)

    def phi2_envelope(self, phi1):
        t = self.track_at(phi1)
        return t - self.half_width, t + self.half_width

    @property
    def area_deg2(self) -> float:
        lo, hi = self.phi1_range
        p1 = np.linspace(lo, hi, 2001)
        t = self.track_at(p1)
        strip = np.degrees(np.sin(np.radians(np.clip(t + self.half_width, -90, 90)))
                           - np.sin(np.radians(np.clip(t - self.half_width, -90, 90))))
        return float(np.trapezoid(strip, p1))

    def polygon(self, step_deg: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The footprint's outline (ra, dec), counter-clockwise, ~``step_deg`` spacing."""
        lo, hi = self.phi1_range
        p1 = np.linspace(lo, hi, max(int(np.ceil((hi - lo) / step_deg)) + 1, 2))
        t = self.track_at(p1)
        phi1 = np.concatenate([p1, p1[::-1]])
        phi2 = np.concatenate([t - self.half_width, (t + self.half_width)[::-1]])
        return frame_to_icrs(self.frame, phi1, phi2)

    def to_dict(self) -> dict:
        ra, dec = self.polygon(step_deg=2.0)
        return {"kind": self.kind, "frame": self.frame.to_dict(),
                "phi1_range_deg": list(self.phi1_range), "half_width_deg": self.half_width,
                "area_deg2": round(self.area_deg2, 3),
                "polygon": [[round(float(a), 4), round(float(b), 4)]
                            for a, b in zip(ra, dec, strict=True)]}


@dataclass(frozen=True, eq=False)
class ConeRegion(Region):
    ra: float = 0.0
    dec: float = 0.0
    radius: float = 1.0

    kind = "cone"

    def contains(self, ra, dec) -> np.ndarray:
        c = _vec(self.ra, self.dec)[0]
        return _vec(ra, dec) @ c >= np.cos(np.radians(self.radius))

    @property
    def area_deg2(self) -> float:
        return float(2 * np.pi * (1 - np.cos(np.radians(self.radius))) * (180 / np.pi) ** 2)

    def _centre_phi(self) -> tuple[float, float]:
        p1, p2 = icrs_to_frame(self.frame, np.array([self.ra]), np.array([self.dec]))
        return float(p1[0]), float(p2[0])

    @property
    def phi1_range(self) -> tuple[float, float]:
        c1, c2 = self._centre_phi()
        # the cone's extent in phi1 is widest at its centre's latitude: r / cos(phi2_c)
        ratio = np.sin(np.radians(self.radius)) / max(np.cos(np.radians(c2)), 1e-12)
        if self.radius >= 90.0 - abs(c2) or ratio >= 1.0:
            return -180.0, 180.0  # the cone holds the frame's pole: every phi1
        half = float(np.degrees(np.arcsin(ratio)))
        return c1 - half, c1 + half

    def phi2_envelope(self, phi1):
        c1, c2 = self._centre_phi()
        lo = np.full(np.shape(phi1), c2 - self.radius)
        return lo, np.full(np.shape(phi1), c2 + self.radius)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "center": [self.ra, self.dec], "radius_deg": self.radius,
                "frame": self.frame.to_dict(), "area_deg2": round(self.area_deg2, 3)}


def _boundary_envelope(frame: StreamFrame, bra, bdec, phi1, pad: float):
    """phi2 bounds near each phi1 from dense boundary samples (bins between grid midpoints)."""
    p1, p2 = icrs_to_frame(frame, bra, bdec)
    phi1 = np.asarray(phi1, float)
    order = np.argsort(phi1)
    grid = phi1[order]
    edges = np.concatenate([[-np.inf], (grid[1:] + grid[:-1]) / 2, [np.inf]])
    idx = np.clip(np.searchsorted(edges, p1, side="right") - 1, 0, len(grid) - 1)
    lo = np.full(len(grid), np.inf)
    hi = np.full(len(grid), -np.inf)
    np.minimum.at(lo, idx, p2)
    np.maximum.at(hi, idx, p2)
    # a bin's neighbours bound it too (the boundary is continuous)
    lo = np.minimum(lo, np.minimum(np.r_[lo[1:], np.inf], np.r_[np.inf, lo[:-1]]))
    hi = np.maximum(hi, np.maximum(np.r_[hi[1:], -np.inf], np.r_[-np.inf, hi[:-1]]))
    out_lo, out_hi = np.empty_like(lo), np.empty_like(hi)
    out_lo[order], out_hi[order] = lo - pad, hi + pad
    return out_lo, out_hi


def _densify(ra, dec, step_deg: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step_deg`` along a closed polygon's great-circle edges."""
    v = _vec(ra, dec)
    out = []
    for a, b in zip(v, np.roll(v, -1, axis=0), strict=True):
        ang = np.degrees(np.arccos(np.clip(a @ b, -1, 1)))
        t = np.linspace(0, 1, max(int(ang / step_deg) + 2, 2))[:-1, None]
        out.append(a * (1 - t) + b * t)  # chord points; normalised by _lonlat
    return _lonlat(np.concatenate(out))


@dataclass(frozen=True, eq=False)
class PolygonRegion(Region):
    vertices_ra: tuple = ()
    vertices_dec: tuple = ()

    kind = "polygon"

    def contains(self, ra, dec) -> np.ndarray:
        return polygon_contains(self.vertices_ra, self.vertices_dec, ra, dec)

    @property
    def area_deg2(self) -> float:
        return spherical_polygon_area(self.vertices_ra, self.vertices_dec)

    @cached_property
    def _boundary_phi(self):
        bra, bdec = _densify(self.vertices_ra, self.vertices_dec)
        return bra, bdec, *icrs_to_frame(self.frame, bra, bdec)

    @property
    def phi1_range(self) -> tuple[float, float]:
        _, _, p1, _ = self._boundary_phi
        return float(p1.min()), float(p1.max())

    def phi2_envelope(self, phi1):
        bra, bdec, _, _ = self._boundary_phi
        return _boundary_envelope(self.frame, bra, bdec, phi1, pad=0.05)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "frame": self.frame.to_dict(),
                "polygon": [[float(a), float(b)] for a, b in
                            zip(self.vertices_ra, self.vertices_dec, strict=True)],
                "area_deg2": round(self.area_deg2, 3)}


@dataclass(frozen=True, eq=False)
class HealpixRegion(Region):
    """Nested HEALPix pixels at ``level`` (nside = 2**level), by position."""

    level: int = 6
    pixels: tuple = ()

    kind = "healpix"

    def contains(self, ra, dec) -> np.ndarray:
        return np.isin(healpix_index(ra, dec, self.level), np.asarray(self.pixels, np.int64))

    @property
    def area_deg2(self) -> float:
        return len(self.pixels) * 41252.96124941928 / (12 * 4**self.level)

    @cached_property
    def _boundary_phi(self):
        from astropy_healpix import HEALPix

        lon, lat = HEALPix(nside=2**self.level, order="nested").boundaries_lonlat(
            np.asarray(self.pixels, np.int64), step=16)
        bra, bdec = lon.to_value("deg").ravel(), lat.to_value("deg").ravel()
        return bra, bdec, *icrs_to_frame(self.frame, bra, bdec)

    @property
    def phi1_range(self) -> tuple[float, float]:
        _, _, p1, _ = self._boundary_phi
        pad = 0.01
        return float(p1.min()) - pad, float(p1.max()) + pad

    def phi2_envelope(self, phi1):
        bra, bdec, _, _ = self._boundary_phi
        return _boundary_envelope(self.frame, bra, bdec, phi1, pad=0.05)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "level": self.level, "pixels": [int(p) for p in self.pixels],
                "frame": self.frame.to_dict(), "area_deg2": round(self.area_deg2, 3)}


# ---------------------------------------------------------------- parsing (job messages)
def _number(d: dict, name: str, lo: float, hi: float, where: str) -> float:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) \
            or not lo <= v <= hi:
        raise ValueError(f"{where}.{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _point(p, where: str) -> tuple[float, float]:
    if not (isinstance(p, list | tuple) and len(p) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in p)):
        raise ValueError(f"{where} must be an [ra, dec] pair of numbers in degrees, got {p!r}")
    ra, dec = float(p[0]), float(p[1])
    if not (np.isfinite(ra) and np.isfinite(dec) and -360 <= ra <= 360 and -90 <= dec <= 90):
        raise ValueError(f"{where} = {p!r} is outside ra in [-360, 360], dec in [-90, 90] deg")
    return ra, dec


def _frame(d: dict, centre: tuple[float, float]) -> StreamFrame:
    """``"frame": {"pole": [ra, dec]}`` (phi1 = 0 nearest the region's centre) or default."""
    spec = d.get("frame")
    if spec is None:
        return centred_frame(*centre)
    if not isinstance(spec, dict) or set(spec) - {"pole", "origin"} or "pole" not in spec:
        raise ValueError('region.frame must be {"pole": [ra, dec], "origin": [ra, dec]} '
                         f"(origin optional), got {spec!r}")
    pole = _point(spec["pole"], "region.frame.pole")
    origin = _point(spec["origin"], "region.frame.origin") if "origin" in spec else centre
    try:
        return StreamFrame.from_pole(*pole, *origin, name="region frame")
    except ValueError as exc:
        raise ValueError(f"region.frame: {exc}") from None


REGION_HELP = ('{"cone": {"center": [ra, dec], "radius": deg}} | {"polygon": [[ra, dec], ...]} '
               '| {"healpix": {"level": L, "pixels": [...]}}, optionally with '
               '"frame": {"pole": [ra, dec]}')


def parse_region(spec, max_area_deg2: float = MAX_REGION_DEG2) -> Region:
    """Validate a job's ``region`` and build it.

    Raises
    ------
    ValueError
        Naming the field, the value and what is allowed (shape, size limit, vertex count).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"region must be an object: {REGION_HELP}; got {spec!r}")
    shapes = [k for k in ("cone", "polygon", "healpix") if k in spec]
    unknown = sorted(set(spec) - {"cone", "polygon", "healpix", "frame"})
    if unknown or len(shapes) != 1:
        raise ValueError(f"region must have exactly one of cone, polygon, healpix (and "
                         f"optionally frame): {REGION_HELP}; got keys {sorted(spec)}")
    shape = shapes[0]
    if shape == "cone":
        c = spec["cone"]
        if not isinstance(c, dict) or set(c) != {"center", "radius"}:
            raise ValueError(f'region.cone must be {{"center": [ra, dec], "radius": deg}}, '
                             f"got {c!r}")
        centre = _point(c["center"], "region.cone.center")
        radius = _number(c, "radius", 0.0, MAX_CONE_RADIUS_DEG, "region.cone")
        if radius < MIN_CONE_RADIUS_DEG:
            raise ValueError(f"region.cone.radius must be in [{MIN_CONE_RADIUS_DEG:.4f}, "
                             f"{MAX_CONE_RADIUS_DEG:g}] deg (1 arcmin to 30 deg), got {radius!r}")
        region = ConeRegion(_frame(spec, centre), centre[0], centre[1], radius)
    elif shape == "polygon":
        p = spec["polygon"]
        if not isinstance(p, list) or not 3 <= len(p) <= MAX_POLYGON_VERTICES:
            raise ValueError(f"region.polygon must be a list of 3-{MAX_POLYGON_VERTICES} "
                             f"[ra, dec] vertices, got {p!r:.200}")
        pts = np.array([_point(q, f"region.polygon[{i}]") for i, q in enumerate(p)])
        v = _vec(pts[:, 0], pts[:, 1])
        c = v.sum(axis=0)
        if np.linalg.norm(c) < 1e-9:
            raise ValueError("region.polygon has no well-defined centre (vertices spread "
                             "around the sphere)")
        c /= np.linalg.norm(c)
        far = np.degrees(np.arccos(np.clip(v @ c, -1, 1))).max()
        if far > MAX_POLYGON_RADIUS_DEG:
            raise ValueError(f"region.polygon vertices reach {far:.1f} deg from its centre; "
                             f"at most {MAX_POLYGON_RADIUS_DEG:g}")
        centre = tuple(float(x[0]) for x in _lonlat(c[None, :]))
        region = PolygonRegion(_frame(spec, centre), tuple(pts[:, 0]), tuple(pts[:, 1]))
        if region.area_deg2 < 1e-6:
            raise ValueError("region.polygon has zero area (collinear or repeated vertices)")
    else:
        h = spec["healpix"]
        if not isinstance(h, dict) or set(h) != {"level", "pixels"}:
            raise ValueError(f'region.healpix must be {{"level": L, "pixels": [...]}}, '
                             f"got {h!r:.200}")
        level = h["level"]
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 12:
            raise ValueError(f"region.healpix.level must be an integer in [0, 12], got {level!r}")
        pix = h["pixels"]
        npix = 12 * 4**level
        if not isinstance(pix, list) or not 1 <= len(pix) <= MAX_HEALPIX_PIXELS or any(
                isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < npix for q in pix):
            raise ValueError(f"region.healpix.pixels must be 1-{MAX_HEALPIX_PIXELS} distinct "
                             f"integers in [0, {npix}) (nested, level {level}), got {pix!r:.200}")
        pixels = tuple(sorted(set(pix)))
        from astropy_healpix import HEALPix

        lon, lat = HEALPix(nside=2**level, order="nested").healpix_to_lonlat(
            np.asarray(pixels, np.int64))
        c = _vec(lon.to_value("deg"), lat.to_value("deg")).sum(axis=0)
        if np.linalg.norm(c) < 1e-9:
            raise ValueError("region.healpix pixels have no well-defined centre")
        centre = tuple(float(x[0]) for x in _lonlat(c[None, :] / np.linalg.norm(c)))
        region = HealpixRegion(_frame(spec, centre), level, pixels)
    if region.area_deg2 > max_area_deg2:
        raise ValueError(f"region ({shape}) covers {region.area_deg2:.1f} deg^2; at most "
                         f"{max_area_deg2:g} deg^2 per job (split the search into several jobs)")
    return region
