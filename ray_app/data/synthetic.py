"""Seeded Gaia-like synthetic catalogues.

Two generators:

* :func:`synthetic_sky` (the realistic one, used by jobs with ``source: synthetic``): field
  stars from the Milky-Way model of :mod:`ray_app.data.sky_model` inside any region, plus
  streams injected along registry tracks (:class:`Injection`), each star labelled with its
  true stream (``stream_label``, -1 for the field); marginals checked against the real GD-1
  field in tests/test_synthetic.py;
* :func:`synthetic_catalogue`, a small toy (a Gaussian-mixture background in a stream-frame
  box) kept for fast unit tests of the core algorithms, where its simplicity is the point.

The toy's model, in the stream frame and rotated to ICRS:

* background: positions uniform on the sphere patch with a gentle phi2 gradient; proper motions
  from a two-component (halo + thick-disc-like) Gaussian mixture offset from the stream's;
  parallaxes from an exponential distance-like distribution plus Gaia-like errors;
* stream: ``n_stream`` stars along the phi1 range with a slightly curved phi2 track, Gaussian
  width, clumpy density along phi1, a proper-motion drift along phi1, intrinsic dispersion plus
  errors, and parallax 1/distance plus errors.

Units: degrees, mas/yr, mas. ``is_stream`` is the truth label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core.frames import frame_to_icrs, icrs_to_frame
from .regions import healpix_index
from .registry import StreamInfo, get_stream


def synthetic_catalogue(stream: str | StreamInfo = "gd-1", n_background: int = 20000,
                        n_stream: int = 400, seed: int = 42, phi2_half_width: float = 5.0,
                        phi1_range: tuple[float, float] | None = None) -> dict:
    """Generate a catalogue as a dict of column name -> ndarray.

    Parameters
    ----------
    stream : str or StreamInfo
        Registry key (or entry) whose frame, extent, distance and proper motion are used.
    n_background, n_stream : int
        Star counts (>= 0). ``n_stream = 0`` gives a stream-free catalogue.
    seed : int
        Seed of the generator; the same seed gives the same catalogue.
    phi2_half_width : float
        Half-width of the field across the stream, degrees.
    phi1_range : (lo, hi), optional
        Field extent along the stream (default: the registry track's extent).
    """
    if n_background < 0 or n_stream < 0:
        raise ValueError(f"star counts must be >= 0, got n_background={n_background}, "
                         f"n_stream={n_stream}")
    info = stream if isinstance(stream, StreamInfo) else get_stream(stream)
    rng = np.random.default_rng(seed)
    lo, hi = phi1_range or info.phi1_range
    mid_ra, mid_dec = frame_to_icrs(info.frame, np.array([(lo + hi) / 2]), np.array([0.0]))
    # the stream's proper motion at the track midpoint, in the frame
    _, _, pm1_0, pm2_0 = icrs_to_frame(info.frame, mid_ra, mid_dec,
                                       np.array([info.pm_mid[0]]), np.array([info.pm_mid[1]]))
    pm1_0, pm2_0 = float(pm1_0[0]), float(pm2_0[0])
    plx_stream = 1.0 / info.distance_kpc

    # --- background
    nb = n_background
    phi1_b = rng.uniform(lo, hi, nb)
    s_lo, s_hi = np.sin(np.radians(-phi2_half_width)), np.sin(np.radians(phi2_half_width))
    u = rng.uniform(s_lo, s_hi, nb)
    # thin the sample for a gentle gradient across the field (more stars at negative phi2)
    keep = rng.uniform(size=nb) < 1.0 - 0.3 * (u - s_lo) / (s_hi - s_lo)
    u = np.where(keep, u, rng.uniform(s_lo, s_hi, nb))
    phi2_b = np.degrees(np.arcsin(u))
    disc = rng.uniform(size=nb) < 0.35
    pm1_b = np.where(disc, rng.normal(pm1_0 + 4.0, 4.0, nb), rng.normal(pm1_0 + 2.0, 2.5, nb))
    pm2_b = np.where(disc, rng.normal(pm2_0 + 1.5, 4.0, nb), rng.normal(pm2_0 + 0.5, 2.5, nb))
    true_plx_b = np.where(disc, rng.exponential(0.5, nb), rng.exponential(0.15, nb))

    # --- stream
    ns = n_stream
    # clumpy along phi1: accept positions with a density that varies by a factor ~3
    cand = rng.uniform(lo, hi, 4 * ns + 16)
    phase = rng.uniform(0, 2 * np.pi)
    accept = rng.uniform(size=cand.size) < 0.5 + 0.5 * np.sin(
        2 * np.pi * 3 * (cand - lo) / (hi - lo) + phase) ** 2
    phi1_s = cand[accept][:ns]
    if len(phi1_s) < ns:
        phi1_s = np.concatenate([phi1_s, rng.uniform(lo, hi, ns - len(phi1_s))])
    x = (phi1_s - (lo + hi) / 2) / max(hi - lo, 1e-9)
    phi2_s = 0.8 * x**2 + rng.normal(0.0, info.width_deg, ns)
    pm1_s = pm1_0 + 2.0 * x + rng.normal(0.0, 0.15, ns)
    pm2_s = pm2_0 + 0.5 * x + rng.normal(0.0, 0.15, ns)
    true_plx_s = np.full(ns, plx_stream)

    phi1 = np.concatenate([phi1_b, phi1_s])
    phi2 = np.concatenate([phi2_b, phi2_s])
    pm1 = np.concatenate([pm1_b, pm1_s])
    pm2 = np.concatenate([pm2_b, pm2_s])
    true_plx = np.concatenate([true_plx_b, true_plx_s])
    n = nb + ns
    g = np.clip(rng.uniform(14.0, 20.5, n) + 0.0, 12.0, 21.0)
    # Gaia-like error growth with magnitude
    plx_err = 0.02 + 0.5 * 10 ** (0.4 * (g - 20.0))
    pm_err = 0.7 * plx_err
    order = rng.permutation(n)
    ra, dec, pmra, pmdec = frame_to_icrs(info.frame, phi1, phi2,
                                         pm1 + rng.normal(0, pm_err), pm2 + rng.normal(0, pm_err))
    source_id = np.sort(rng.choice(2**40, size=n, replace=False).astype(np.int64) * 2**19)
    cols = {
        "source_id": source_id,
        "ra": ra[order], "dec": dec[order],
        "pmra": pmra[order], "pmdec": pmdec[order],
        "parallax": (true_plx + rng.normal(0, plx_err))[order],
        "parallax_error": plx_err[order],
        "pmra_error": pm_err[order], "pmdec_error": pm_err[order],
        "phot_g_mean_mag": g[order],
        "bp_rp": rng.normal(0.9, 0.3, n)[order],
        "is_stream": np.concatenate([np.zeros(nb, bool), np.ones(ns, bool)])[order],
    }
    return cols


def shuffle_kinematics(cols: dict, rng: np.random.Generator) -> dict:
    """A stream-free copy of a catalogue: proper motions and parallax permuted across stars.

    Positions stay; ``pmra``, ``pmdec`` and ``parallax`` move together to a random other star,
    so both marginals survive and any stream (coherent in position *and* motion) is destroyed.
    """
    out = dict(cols)
    perm = rng.permutation(len(cols["ra"]))
    for c in ("pmra", "pmdec", "parallax"):
        out[c] = np.asarray(cols[c])[perm]
    return out


# ---------------------------------------------------------------- realistic synthetic sky
#: Red giants (M_G -2 to 2.5) per star of an injected stream's whole population (to M_G 13):
#: an old population's, about one giant per ten stars of the two magnitudes below the
#: turnoff; an injected GD-1 is then 6 % giants with median G 19.5 (the real GD-1 members of
#: tests/data are at g 18-21). A stream drawn with the halo field's 5 % is mostly giants once
#: the magnitude limit removes its dwarfs.
STREAM_GIANT_FRACTION = 0.002


@dataclass(frozen=True)
class Injection:
    """A stream to inject along a registry track.

    Attributes
    ----------
    stream : str or StreamInfo
        Registry key (or entry) whose 6-D track the members follow.
    n_members : int
        Members generated brighter than the magnitude limit (some fall to the colour and
        parallax cuts, as real members would).
    width_deg : float, optional
        Gaussian phi2 dispersion about the track (default: the registry width); with
        ``width_end_deg``, the dispersion at the track's low-phi1 end.
    width_end_deg : float, optional
        The phi2 dispersion at the track's high-phi1 end, the dispersion changing linearly
        along phi1 in between (a stream whose tail widens); default: a constant width.
    phi1_range_deg : (float, float), optional
        Where along the track the members lie (deg of the registry frame's phi1; default the
        whole track): a stream that ends inside its footprint.
    velocity_dispersion_kms : float
        Intrinsic velocity dispersion (km/s), converted to proper motion at each star's
        distance (a cold globular-cluster stream: 2-5 km/s; dwarf-galaxy streams: 10-20).
    depth_fraction : float
        Relative line-of-sight depth (Gaussian sigma of distance / track distance).
    clumpiness : float
        Amplitude (0-1) of the density variations along the track (gaps and over-densities).
    tilt_deg : float
        Rotate the injected stream by this angle about its midpoint in the registry frame
        (phi2 gains tan(tilt) x (phi1 - mid)): a stream whose true pole is that far from the
        registry's, to test frame robustness.
    giant_fraction : float
        Share of red giants (M_G -2 to 2.5) in the stream's whole population, down to M_G 13.
        Default :data:`STREAM_GIANT_FRACTION`, an old population's: an injected GD-1 at
        ~10 kpc is then mostly main-sequence stars near the turnoff, like the real one
        (g 18-21). 0.05 is the sky model's halo field, whose giants outnumber the
        main-sequence stars left above the magnitude limit at stream distances (66 % of an
        injected GD-1's kept stars, 96 % of Pal 5's): a giant-heavy stream, brighter and with
        smaller errors than real ones (the default until 2026-12-02).
    """

    stream: object
    n_members: int
    width_deg: float | None = None
    width_end_deg: float | None = None
    phi1_range_deg: tuple | None = None
    velocity_dispersion_kms: float = 4.0
    depth_fraction: float = 0.03
    clumpiness: float = 0.6
    tilt_deg: float = 0.0
    giant_fraction: float = STREAM_GIANT_FRACTION


def _members(inj: Injection, rng: np.random.Generator, g_max: float) -> dict:
    """Members of one injected stream (before the region and query cuts)."""
    from .sky_model import COMPONENTS, K, _colour, _draw_abs_mag, gaia_parallax_error

    info = inj.stream if isinstance(inj.stream, StreamInfo) else get_stream(inj.stream)
    t = info.track_frame
    lo, hi = info.phi1_range if inj.phi1_range_deg is None else inj.phi1_range_deg
    n = inj.n_members
    if n <= 0:
        return {}
    # density along the track: 1 + clumpiness x a smooth random curve in [-1, 1]
    k = rng.uniform(1.0, 6.0, 4)
    ph = rng.uniform(0, 2 * np.pi, 4)

    def shape(p1):
        x = (p1 - lo) / max(hi - lo, 1e-9)
        return np.sum(np.sin(2 * np.pi * k[:, None] * x + ph[:, None]), axis=0) / 4

    phi1 = np.empty(0)
    while len(phi1) < n:
        cand = rng.uniform(lo, hi, 4 * n)
        acc = rng.uniform(size=cand.size) * (1 + inj.clumpiness) < 1 + inj.clumpiness * shape(
            cand)
        phi1 = np.concatenate([phi1, cand[acc]])
    phi1 = phi1[:n]
    width = inj.width_deg if inj.width_deg is not None else info.width_deg
    if inj.width_end_deg is not None:
        width = width + (inj.width_end_deg - width) * (phi1 - lo) / max(hi - lo, 1e-9)
    phi2 = np.interp(phi1, t["phi1"], t["phi2"]) + rng.normal(0, width, n) + np.tan(
        np.radians(inj.tilt_deg)) * (phi1 - 0.5 * (lo + hi))
    dist_track = t["distance_kpc"]
    ok = np.isfinite(dist_track) & (dist_track > 0)
    dist0 = (np.interp(phi1, t["phi1"][ok], dist_track[ok]) if ok.sum() >= 2
             else np.full(n, info.distance_kpc))
    d = dist0 * (1 + rng.normal(0, inj.depth_fraction, n))
    d = np.maximum(d, 0.05)
    sig_pm = inj.velocity_dispersion_kms / (K * d)
    pm1 = np.interp(phi1, t["phi1"], t["pm_phi1_cosphi2"]) + rng.normal(0, sig_pm)
    pm2 = np.interp(phi1, t["phi1"], t["pm_phi2"]) + rng.normal(0, sig_pm)
    mu = 5 * np.log10(d * 100.0)
    # an old, metal-poor population with its own giant share
    halo = replace(COMPONENTS[2], giant_fraction=inj.giant_fraction)
    mg, giant = _draw_abs_mag(halo, g_max - mu, rng)
    g = mg + mu
    colour = _colour(mg, giant, halo.colour_offset, rng)
    plx_err = gaia_parallax_error(g)
    pm_err = plx_err * rng.uniform(0.9, 1.3, n)
    ra, dec, pmra, pmdec = frame_to_icrs(info.frame, phi1, phi2, pm1, pm2)
    return {"ra": ra, "dec": dec, "pmra": pmra + rng.normal(0, pm_err),
            "pmdec": pmdec + rng.normal(0, pm_err),
            "parallax": 1 / d + rng.normal(0, plx_err), "parallax_error": plx_err,
            "pmra_error": pm_err, "pmdec_error": pm_err, "ra_error": 0.7 * plx_err,
            "dec_error": 0.6 * plx_err, "phot_g_mean_mag": g, "bp_rp": colour,
            "distance_kpc": d}


def synthetic_sky(region, n_background: int, injections=(), seed: int = 42,
                  cuts=None, photometry: bool = True) -> dict:
    """A seeded Gaia-like catalogue of ``region``: Milky-Way field stars plus injected streams.

    Parameters
    ----------
    region : Region
        Where the stars are (a stream footprint or a blind region).
    n_background : int
        Field stars passing the cuts (>= 0), drawn by :func:`ray_app.data.sky_model.draw_field`.
    injections : sequence of Injection
        Streams to inject; members outside the region or failing the cuts are dropped.
    seed : int
    cuts : QueryCuts, optional
        The archive cuts to emulate (default: :class:`~ray_app.data.gaia.QueryCuts()`).
    photometry : bool
        Keep ``phot_g_mean_mag`` and ``bp_rp`` (cuts use them either way).

    Returns
    -------
    dict
        The Gaia query's columns, plus truth: ``stream_label`` (-1: field; i: the i-th
        injection), ``is_stream``, ``distance_kpc``.
    """
    from .gaia import QueryCuts
    from .sky_model import draw_field

    if isinstance(n_background, bool) or not isinstance(n_background, int | np.integer) \
            or n_background < 0:
        raise ValueError(f"n_background must be an integer >= 0, got {n_background!r}")
    cuts = cuts or QueryCuts()
    rng = np.random.default_rng(seed)
    parts = []
    if n_background:
        f = draw_field(region, int(n_background), rng, g_max=cuts.g_max,
                       parallax_max=cuts.parallax_max,
                       bp_rp_range=(cuts.bp_rp_min, cuts.bp_rp_max))
        f.pop("component")
        f["stream_label"] = np.full(len(f["ra"]), -1, np.int32)
        parts.append(f)
    for i, inj in enumerate(injections):
        m = _members(inj, rng, cuts.g_max)
        if not m:
            continue
        keep = region.contains(m["ra"], m["dec"]) & (m["phot_g_mean_mag"] < cuts.g_max) \
            & (m["parallax"] < cuts.parallax_max) & (m["bp_rp"] > cuts.bp_rp_min) \
            & (m["bp_rp"] < cuts.bp_rp_max)
        m = {k: v[keep] for k, v in m.items()}
        m["stream_label"] = np.full(int(keep.sum()), i, np.int32)
        parts.append(m)
    if not parts:
        raise ValueError("a synthetic sky needs n_background > 0 or an injection")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cols["ra"])
    order = rng.permutation(n)
    cols = {k: v[order] for k, v in cols.items()}
    # Gaia-like ids: the level-12 HEALPix pixel in the top bits, unique below
    pix = healpix_index(cols["ra"], cols["dec"], 12)
    low = rng.choice(2**35, size=n, replace=False) if n < 2**20 else \
        (np.arange(n, dtype=np.int64) * 7919 + rng.integers(0, 2**20)) % 2**35
    cols["source_id"] = pix.astype(np.int64) * 2**35 + low
    cols["ruwe"] = np.clip(rng.lognormal(np.log(1.0), 0.08, n), 0.7, None)
    cols["is_stream"] = cols["stream_label"] >= 0
    if not photometry:
        cols.pop("phot_g_mean_mag")
        cols.pop("bp_rp")
    return cols
