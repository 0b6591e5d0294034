"""A smooth Milky-Way model that draws Gaia-like field stars for any sky region.

Three components (thin disc, thick disc, halo) with textbook structural and kinematic
parameters (Bland-Hawthorn & Gerhard 2016; Juric et al. 2008; Bond et al. 2010), a luminosity
function per component, and Gaia DR3-like errors. For each star:

1. a sky position uniform in the region (ra, dec -> Galactic l, b);
2. a component and a distance from ``rho_c(d; l, b) d^2 Phi_c(G_max - mu(d))`` on a log grid
   (the line of sight's density times the fraction of the component's luminosity function
   bright enough to be seen), so star counts vary with latitude as Gaia's do and the disc
   dominates nearby, the halo far away;
3. an absolute magnitude from the luminosity function truncated at the magnitude limit, a
   colour from a crude main sequence / giant branch, the apparent G;
4. a Galactocentric velocity from the component's velocity ellipsoid and rotation, made
   heliocentric and projected to proper motions (the solar reflex is what gives field stars
   their large, position-dependent proper motions);
5. observed parallax and proper motions with Gaia DR3-like errors (Lindegren et al. 2021:
   about 0.02 mas at G < 14, 0.5 mas at G = 20, 1.3 mas at G = 21; proper-motion errors about
   the parallax error per year).

Stars are drawn until ``n`` pass the query cuts (parallax, G, colour), as an archive query
would return them. Units: degrees, kpc, km/s, mas, mas/yr, mag. Pure NumPy; seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.frames import StreamFrame, frame_to_icrs, icrs_to_frame
from .regions import healpix_index

#: ICRS -> Galactic rotation (Hipparcos definition, as astropy's).
GALACTIC = StreamFrame(((-0.0548755604162154, -0.8734370902348850, -0.4838350155487132),
                        (0.4941094278755837, -0.4448296299600112, 0.7469822444972189),
                        (-0.8676661490190047, -0.1980763734312015, 0.4559837761750669)),
                       name="Galactic")
R_SUN_KPC = 8.2
Z_SUN_KPC = 0.02
V_SUN = np.array([11.1, 245.0, 7.25])  # km/s, Galactocentric (U, V_circ + V, W)
V_CIRC = 232.8
K = 4.740470463  # km/s per (kpc mas/yr)


@dataclass(frozen=True)
class Component:
    name: str
    local_density: float      # relative number density at the Sun
    scale_length: float       # kpc (discs)
    scale_height: float       # kpc (discs); halo: flattening q
    sigma: tuple              # (sigma_R, sigma_phi, sigma_z), km/s
    lag: float                # rotation = V_CIRC - lag (km/s); halo: V_CIRC (no rotation)
    lf_range: tuple           # absolute G range of the luminosity function
    lf_slope: float           # p(M) ~ 10**(slope M) (more faint stars)
    giant_fraction: float     # fraction of red giants, M_G uniform in (-2, 2.5)
    colour_offset: float      # metal-poor populations are bluer at fixed M_G

    def density(self, X, Y, Z) -> np.ndarray:
        R = np.hypot(X, Y)
        if self.name == "halo":
            r2 = R**2 + (Z / self.scale_height) ** 2 + 0.5**2
            return self.local_density * (R_SUN_KPC**2 / r2) ** 1.35
        return self.local_density * np.exp(-(R - R_SUN_KPC) / self.scale_length
                                           - np.abs(Z) / self.scale_height)


COMPONENTS = (
    Component("thin disc", 1.0, 2.6, 0.30, (35.0, 25.0, 18.0), 10.0, (-1.0, 13.0), 0.16,
              0.03, 0.0),
    Component("thick disc", 0.12, 3.6, 0.90, (60.0, 45.0, 40.0), 40.0, (3.0, 13.0), 0.20,
              0.05, -0.08),
    Component("halo", 0.005, 0.0, 0.70, (140.0, 100.0, 95.0), V_CIRC, (3.5, 13.0), 0.20,
              0.05, -0.15),
)

_DIST = np.geomspace(0.02, 150.0, 160)  # kpc
_MU = 5 * np.log10(_DIST * 100.0)        # distance modulus


_CELL_LEVEL = 6


def _cell_centres_galactic(cells) -> tuple[np.ndarray, np.ndarray]:
    from astropy_healpix import HEALPix

    lon, lat = HEALPix(nside=2**_CELL_LEVEL, order="nested").healpix_to_lonlat(cells)
    l_, b_ = icrs_to_frame(GALACTIC, lon.to_value("deg"), lat.to_value("deg"))
    return np.radians(l_), np.radians(b_)


def gaia_parallax_error(g: np.ndarray) -> np.ndarray:
    """Gaia DR3-like parallax uncertainty (mas) as a function of G."""
    z = 10 ** (0.4 * (np.maximum(g, 13.0) - 15.0))
    return np.sqrt(40.0 + 800.0 * z + 30.0 * z**2) / 1000.0 * 1.1


def _lf_parts(c: Component, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of the component's stars that are dwarfs / giants with M_G < m."""
    lo, hi = c.lf_range
    a = c.lf_slope * np.log(10)
    mm = np.clip(m, lo, hi)
    dwarfs = (np.exp(a * mm) - np.exp(a * lo)) / (np.exp(a * hi) - np.exp(a * lo))
    giants = np.clip((m + 2.0) / 4.5, 0, 1)
    return (1 - c.giant_fraction) * dwarfs, c.giant_fraction * giants


def _lf_cdf(c: Component, m: np.ndarray) -> np.ndarray:
    """Fraction of the component's stars with M_G < m."""
    dwarfs, giants = _lf_parts(c, m)
    return dwarfs + giants


def _draw_abs_mag(c: Component, m_max: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """M_G below ``m_max`` from the luminosity function; returns (M_G, is_giant)."""
    lo, hi = c.lf_range
    a = c.lf_slope * np.log(10)
    n = len(m_max)
    f_dw, f_gi = _lf_parts(c, m_max)
    giant = rng.uniform(size=n) * (f_dw + f_gi) < f_gi
    top = np.clip(m_max, lo, hi)
    u = rng.uniform(size=n)
    dwarf_m = np.log(np.exp(a * lo) + u * (np.exp(a * top) - np.exp(a * lo))) / a
    giant_m = -2.0 + rng.uniform(size=n) * np.clip(np.minimum(m_max, 2.5) + 2.0, 0, 4.5)
    return np.where(giant, giant_m, dwarf_m), giant


def _colour(m: np.ndarray, giant: np.ndarray, offset: float, rng) -> np.ndarray:
    ms = 0.35 + 0.17 * (m - 2.5)
    ms = np.where(m < 2.5, 0.35 + 0.05 * (m - 2.5), ms)
    rgb = 1.0 + 0.12 * (2.5 - m)
    return np.where(giant, rgb, ms) + offset + rng.normal(0, 0.06, len(m))


def _velocities(c: Component, X, Y, rng) -> np.ndarray:
    """Galactocentric Cartesian velocities (km/s), shape (3, n)."""
    n = len(X)
    phi = np.arctan2(Y, X)
    s_r, s_p, s_z = c.sigma
    v_r = rng.normal(0, s_r, n)
    v_phi = -(V_CIRC - c.lag) + rng.normal(0, s_p, n)  # the disc turns towards -phi here
    v_z = rng.normal(0, s_z, n)
    return np.stack([v_r * np.cos(phi) - v_phi * np.sin(phi),
                     v_r * np.sin(phi) + v_phi * np.cos(phi), v_z])


def relative_sky_density(ra, dec, g_max: float = 20.5) -> np.ndarray:
    """The model's star count per unit area brighter than ``g_max`` towards (ra, dec), in
    arbitrary units (the line-of-sight integral of :func:`draw_field`, before the cuts); a
    ratio of two positions is the ratio of their star counts."""
    cell = healpix_index(np.atleast_1d(ra), np.atleast_1d(dec), _CELL_LEVEL)
    cl, cb = _cell_centres_galactic(cell)
    x = np.cos(cb)[:, None] * np.cos(cl)[:, None] * _DIST
    y = np.cos(cb)[:, None] * np.sin(cl)[:, None] * _DIST
    z = np.sin(cb)[:, None] * _DIST
    X, Y, Z = x - R_SUN_KPC, y, z + Z_SUN_KPC
    return sum((comp.density(X, Y, Z) * _DIST**3 * _lf_cdf(comp, g_max - _MU)).sum(axis=1)
               for comp in COMPONENTS)


def draw_field(region, n: int, rng: np.random.Generator, g_max: float = 20.5,
               parallax_max: float = 1.0, bp_rp_range: tuple = (-0.5, 2.5),
               error_scale: float = 1.0, batch: int = 200_000) -> dict:
    """``n`` field stars inside ``region`` passing the cuts, with true distance and component.

    Returns a dict of ra, dec, pmra, pmdec, parallax and their errors, phot_g_mean_mag, bp_rp,
    distance_kpc, component (0 thin, 1 thick, 2 halo). ``error_scale`` multiplies the
    astrometric errors (1: DR3; Gaia DR2's were about 1.6 times larger at the faint end).
    """
    parts: dict[str, list] = {}
    got = 0
    while got < n:
        m = batch
        ra, dec = region.sample(m, rng)
        l_, b_ = icrs_to_frame(GALACTIC, ra, dec)
        lr, br = np.radians(l_), np.radians(b_)
        # line-of-sight weights rho d^3 (log grid) x LF(<limit), per component, evaluated at
        # the centres of ~0.9 deg HEALPix cells (the model is smooth on that scale)
        cell = healpix_index(ra, dec, _CELL_LEVEL)
        ucell, inv = np.unique(cell, return_inverse=True)
        cl, cb = _cell_centres_galactic(ucell)
        x = np.cos(cb)[:, None] * np.cos(cl)[:, None] * _DIST
        y = np.cos(cb)[:, None] * np.sin(cl)[:, None] * _DIST
        z = np.sin(cb)[:, None] * _DIST
        X, Y, Z = x - R_SUN_KPC, y, z + Z_SUN_KPC
        w = np.stack([comp.density(X, Y, Z) * _DIST**3 * _lf_cdf(comp, g_max - _MU)
                      for comp in COMPONENTS])          # (3, cells, len(_DIST))
        tot = w.sum(axis=2)                              # (3, cells)
        sky = tot.sum(axis=0)
        # sky density follows the line-of-sight integral: thin the uniform positions
        keep = rng.uniform(size=m) * sky.max() < sky[inv]
        comp_idx = (rng.uniform(size=m)[:, None] * sky[inv][:, None]
                    > np.cumsum(tot.T, axis=1)[inv]).sum(axis=1).clip(0, 2)
        cdf = np.cumsum(w, axis=2)
        cdf /= cdf[:, :, -1:]
        j = (rng.uniform(size=m)[:, None] > cdf[comp_idx, inv]).sum(axis=1)
        j = j.clip(0, len(_DIST) - 1)
        dlog = np.log(_DIST[1] / _DIST[0])
        d = _DIST[j] * np.exp(rng.uniform(-0.5, 0.5, m) * dlog)
        mu = 5 * np.log10(d * 100.0)
        mags = np.empty(m)
        colour = np.empty(m)
        v = np.empty((3, m))
        xs = d * np.cos(br) * np.cos(lr) - R_SUN_KPC
        ys = d * np.cos(br) * np.sin(lr)
        for ci, comp in enumerate(COMPONENTS):
            sel = comp_idx == ci
            if not sel.any():
                continue
            mg, giant = _draw_abs_mag(comp, g_max - mu[sel], rng)
            mags[sel] = mg
            colour[sel] = _colour(mg, giant, comp.colour_offset, rng)
            v[:, sel] = _velocities(comp, xs[sel], ys[sel], rng)
        g = mags + mu
        vh = v - V_SUN[:, None]
        e_l = np.stack([-np.sin(lr), np.cos(lr), np.zeros(m)])
        e_b = np.stack([-np.sin(br) * np.cos(lr), -np.sin(br) * np.sin(lr), np.cos(br)])
        pml = np.einsum("ij,ij->j", vh, e_l) / (K * d)
        pmb = np.einsum("ij,ij->j", vh, e_b) / (K * d)
        _, _, pmra, pmdec = frame_to_icrs(GALACTIC, l_, b_, pml, pmb)
        plx_err = gaia_parallax_error(g) * error_scale
        pm_err = plx_err * rng.uniform(0.9, 1.3, m)
        plx = 1.0 / d + rng.normal(0, plx_err)
        pmra = pmra + rng.normal(0, pm_err)
        pmdec = pmdec + rng.normal(0, pm_err)
        ok = keep & (g < g_max) & (plx < parallax_max) & (colour > bp_rp_range[0]) \
            & (colour < bp_rp_range[1])
        cols = {"ra": ra, "dec": dec, "pmra": pmra, "pmdec": pmdec, "parallax": plx,
                "parallax_error": plx_err, "pmra_error": pm_err, "pmdec_error": pm_err,
                "ra_error": 0.7 * plx_err, "dec_error": 0.6 * plx_err,
                "phot_g_mean_mag": g, "bp_rp": colour, "distance_kpc": d,
                "component": comp_idx.astype(np.int8)}
        for k, val in cols.items():
            parts.setdefault(k, []).append(val[ok])
        got += int(ok.sum())
    return {k: np.concatenate(v)[:n] for k, v in parts.items()}
