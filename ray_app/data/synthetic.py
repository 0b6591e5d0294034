"""Seeded Gaia-like synthetic catalogues: a smooth background plus one injected stream.

Minimal by design (the data issue brings a calibrated Milky-Way background). Everything is
generated in the stream frame and rotated to ICRS, so the output has exactly the columns a Gaia
query returns, plus ground-truth labels:

* background: positions uniform on the sphere patch with a gentle phi2 gradient; proper motions
  from a two-component (halo + thick-disc-like) Gaussian mixture offset from the stream's;
  parallaxes from an exponential distance-like distribution plus Gaia-like errors;
* stream: ``n_stream`` stars along the phi1 range with a slightly curved phi2 track, Gaussian
  width, clumpy density along phi1, a proper-motion drift along phi1, intrinsic dispersion plus
  errors, and parallax 1/distance plus errors.

Units: degrees, mas/yr, mas. ``is_stream`` is the truth label.
"""

from __future__ import annotations

import numpy as np

from ..core.frames import frame_to_icrs, icrs_to_frame
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
