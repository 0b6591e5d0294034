"""Great-circle stream frames: sky positions and proper motions rotated into (phi1, phi2).

A stream frame is a rotation of the ICRS unit sphere: ``phi1`` runs along the stream's great
circle, ``phi2`` across it. Proper motions are rotated with the same matrix, so
``pm_phi1_cosphi2`` and ``pm_phi2`` are the components along and across the stream.

All angles are in degrees, proper motions in mas/yr. Pure NumPy; no astropy on the hot path
(astropy is used by the tests as the independent reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit_vectors(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    lon = np.radians(lon_deg)
    lat = np.radians(lat_deg)
    cl = np.cos(lat)
    return np.stack([cl * np.cos(lon), cl * np.sin(lon), np.sin(lat)])


@dataclass(frozen=True)
class StreamFrame:
    """A rotated spherical frame given by a 3x3 rotation matrix (ICRS -> stream).

    Parameters
    ----------
    matrix : tuple of tuple of float
        Orthonormal rotation matrix with ``det = +1``; row 0 points at (phi1, phi2) = (0, 0),
        row 2 at the frame's pole.
    name : str
        Human-readable name, written into metadata.
    """

    matrix: tuple[tuple[float, float, float], ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=float)
        if m.shape != (3, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"frame matrix must be a finite 3x3 array, got shape {m.shape}")
        if not np.allclose(m @ m.T, np.eye(3), atol=1e-6) or np.linalg.det(m) < 0:
            raise ValueError("frame matrix must be a proper rotation (orthonormal, det=+1)")

    @classmethod
    def from_pole(cls, pole_ra: float, pole_dec: float, origin_ra: float, origin_dec: float,
                  name: str = "custom") -> StreamFrame:
        """Frame whose pole is (pole_ra, pole_dec) and whose phi1 = 0 lies nearest the origin.

        The origin is projected onto the great circle, so it need not lie exactly on it.

        Raises
        ------
        ValueError
            If the origin coincides with the pole or its antipode (no direction for phi1 = 0).
        """
        z = _unit_vectors(np.array(pole_ra), np.array(pole_dec)).ravel()
        o = _unit_vectors(np.array(origin_ra), np.array(origin_dec)).ravel()
        x = o - np.dot(o, z) * z
        norm = np.linalg.norm(x)
        if norm < 1e-8:
            raise ValueError(
                f"frame origin ({origin_ra}, {origin_dec}) is at the pole; "
                "choose an origin on the stream's great circle"
            )
        x /= norm
        y = np.cross(z, x)
        return cls(tuple(tuple(float(v) for v in row) for row in (x, y, z)), name=name)

    @property
    def rotation(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=float)

    def rotated(self, angle_deg: float) -> StreamFrame:
        """This frame turned by ``angle_deg`` about its origin (phi1, phi2) = (0, 0): the new
        equator leaves the origin at ``angle_deg`` from the old one, towards +phi2.

        A blind search scans orientations with these frames: a thin stream through the
        origin is dense along its own direction only.
        """
        if angle_deg == 0:
            return self
        a = np.radians(angle_deg)
        x, y, z = self.rotation
        y2 = np.cos(a) * y + np.sin(a) * z
        z2 = -np.sin(a) * y + np.cos(a) * z
        return StreamFrame(tuple(tuple(float(v) for v in row) for row in (x, y2, z2)),
                           name=f"{self.name} rotated {angle_deg:+g} deg")

    @property
    def pole(self) -> tuple[float, float]:
        """(ra, dec) of the frame's pole, degrees."""
        z = self.rotation[2]
        return (float(np.mod(np.degrees(np.arctan2(z[1], z[0])), 360.0)),
                float(np.degrees(np.arcsin(np.clip(z[2], -1.0, 1.0)))))

    def to_dict(self) -> dict:
        return {"name": self.name, "matrix": [list(r) for r in self.matrix]}


def _rotate(rot: np.ndarray, lon, lat, pm_lon=None, pm_lat=None):
    """Rotate spherical positions (and tangent-plane proper motions) by the matrix ``rot``."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    v = rot @ _unit_vectors(lon, lat).reshape(3, -1)
    lon2 = np.degrees(np.arctan2(v[1], v[0])).reshape(lon.shape)
    lat2 = np.degrees(np.arcsin(np.clip(v[2], -1.0, 1.0))).reshape(lon.shape)
    if pm_lon is None or pm_lat is None:
        return lon2, lat2
    a, d = np.radians(lon).ravel(), np.radians(lat).ravel()
    e_lon = np.stack([-np.sin(a), np.cos(a), np.zeros_like(a)])
    e_lat = np.stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    t = rot @ (np.asarray(pm_lon, float).ravel() * e_lon
               + np.asarray(pm_lat, float).ravel() * e_lat)
    a2, d2 = np.radians(lon2).ravel(), np.radians(lat2).ravel()
    e_lon2 = np.stack([-np.sin(a2), np.cos(a2), np.zeros_like(a2)])
    e_lat2 = np.stack([-np.sin(d2) * np.cos(a2), -np.sin(d2) * np.sin(a2), np.cos(d2)])
    pm1 = np.einsum("ij,ij->j", t, e_lon2).reshape(lon.shape)
    pm2 = np.einsum("ij,ij->j", t, e_lat2).reshape(lon.shape)
    return lon2, lat2, pm1, pm2


def icrs_to_frame(frame: StreamFrame, ra, dec, pmra=None, pmdec=None):
    """Rotate ICRS positions (and optionally proper motions) into ``frame``.

    Parameters
    ----------
    ra, dec : array_like
        ICRS coordinates in degrees.
    pmra, pmdec : array_like, optional
        Proper motions in mas/yr; ``pmra`` includes the cos(dec) factor, as Gaia's does.

    Returns
    -------
    phi1, phi2 : ndarray
        Stream coordinates in degrees, phi1 in (-180, 180].
    pm_phi1_cosphi2, pm_phi2 : ndarray
        Only when proper motions are given; mas/yr. Observed (not solar-reflex corrected).
    """
    return _rotate(frame.rotation, ra, dec, pmra, pmdec)


def frame_to_icrs(frame: StreamFrame, phi1, phi2, pm_phi1_cosphi2=None, pm_phi2=None):
    """Inverse of :func:`icrs_to_frame`; ra is returned in [0, 360)."""
    out = _rotate(frame.rotation.T, phi1, phi2, pm_phi1_cosphi2, pm_phi2)
    return (np.mod(out[0], 360.0),) + tuple(out[1:])


def fit_great_circle_pole(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    """Pole (ra, dec) of the great circle that best fits the points (least squares on the sphere).

    The pole is the eigenvector of the points' scatter matrix with the smallest eigenvalue,
    oriented so that the points run in the direction of increasing phi1 (pole at dec >= 0 when
    that is ambiguous).
    """
    v = _unit_vectors(np.asarray(ra, float), np.asarray(dec, float)).reshape(3, -1)
    if v.shape[1] < 3:
        raise ValueError(f"need at least 3 points to fit a great circle, got {v.shape[1]}")
    w, vecs = np.linalg.eigh(v @ v.T)
    pole = vecs[:, 0]
    if pole[2] < 0:
        pole = -pole
    return (float(np.mod(np.degrees(np.arctan2(pole[1], pole[0])), 360.0)),
            float(np.degrees(np.arcsin(np.clip(pole[2], -1, 1)))))
