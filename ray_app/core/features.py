"""Standardized phase-space features (DESIGN 2.2) and catalogue cleaning.

Each feature is divided by a fixed, documented scale so that "one unit" means a comparable
amount of separation in every dimension for a thin halo stream. The defaults are physical
choices, not fitted to any data set:

=================  =========  ================================================================
feature            default    why
=================  =========  ================================================================
phi1               5 deg      along the stream: streams stay coherent over tens of degrees, so
                              the kNN ball is stretched along phi1 (a matched filter for a
                              long, thin structure)
phi2               0.5 deg    across the stream: halo streams are 0.1-1 deg wide
pm_phi1_cosphi2    0.5 mas/yr stream proper-motion dispersion plus Gaia errors at G~19
pm_phi2            0.5 mas/yr as above
parallax           0.5 mas    halo streams (d > 5 kpc) have parallax < 0.2 mas and Gaia
                              errors ~0.1-1 mas: parallax only separates near-disc foreground
=================  =========  ================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FEATURE_NAMES = ("phi1", "phi2", "pm_phi1_cosphi2", "pm_phi2", "parallax")
FEATURE_UNITS = ("deg", "deg", "mas/yr", "mas/yr", "mas")


@dataclass(frozen=True)
class FeatureScales:
    """Per-feature divisors, in the units of :data:`FEATURE_UNITS`; all must be > 0."""

    phi1: float = 10.0
    phi2: float = 0.3
    pm_phi1_cosphi2: float = 0.3
    pm_phi2: float = 0.3
    parallax: float = 0.5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ValueError(
                    f"feature scale {name!r} must be a finite number > 0, got {value!r}"
                )

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in FEATURE_NAMES], dtype=np.float64)

    def to_dict(self) -> dict:
        return {n: {"scale": getattr(self, n), "unit": u}
                for n, u in zip(FEATURE_NAMES, FEATURE_UNITS, strict=True)}


def feature_matrix(columns: dict, scales: FeatureScales) -> np.ndarray:
    """Stack the raw feature columns (dict name -> array) and divide by the scales.

    Returns an (n, 5) float64 array in :data:`FEATURE_NAMES` order.
    """
    raw = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in FEATURE_NAMES])
    return raw / scales.as_array()


def finite_rows(columns: dict) -> np.ndarray:
    """Boolean mask of rows whose every feature is finite (DESIGN 2: NaN rows are dropped)."""
    mask = None
    for n in FEATURE_NAMES:
        ok = np.isfinite(np.asarray(columns[n], dtype=np.float64))
        mask = ok if mask is None else mask & ok
    return mask


def stream_features(frame, ra, dec, pmra, pmdec, parallax,
                    scales: FeatureScales | None = None) -> tuple[dict, np.ndarray]:
    """Frame coordinates and scaled features of stars given in ICRS.

    Parameters
    ----------
    frame : StreamFrame
        The job's frame.
    ra, dec, pmra, pmdec, parallax : arrays
        Degrees, mas/yr (pmra includes cos(dec)), mas.
    scales : FeatureScales, optional
        Default: :class:`FeatureScales()`.

    Returns
    -------
    raw : dict
        Unscaled features by name (:data:`FEATURE_NAMES`).
    X : (n, 5) float64
        Scaled features.
    """
    from .frames import icrs_to_frame

    phi1, phi2, pm1, pm2 = icrs_to_frame(frame, ra, dec, pmra, pmdec)
    raw = {"phi1": phi1, "phi2": phi2, "pm_phi1_cosphi2": pm1, "pm_phi2": pm2,
           "parallax": np.asarray(parallax, dtype=np.float64)}
    return raw, feature_matrix(raw, scales or FeatureScales())
