"""Validated parameters of one recovery job.

Every check raises ``ValueError`` with the field name (as the job message spells it), the value
received and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.features import FeatureScales
from ..core.knn import validate_k
from ..core.membership import DEFAULT_MEMBER_PROBABILITY, validate_member_probability
from ..core.significance import DEFAULT_SIGMA_THRESHOLD, validate_sigma
from ..data.catalogue import is_uri, parse_columns_map, parse_photometry
from ..data.gaia import QueryCuts
from ..data.regions import Region, parse_region
from ..data.registry import get_stream
from ..io.home import local_home
from ..io.outputs import check_out_dir
from ..io.results import LocalResultStore

DEFAULT_N_NEIGHBORS = 32
MAX_SHARDS = 4096
GAIA_SOURCES = ("gaia-dr3", "gaia")
DEFAULT_GAIA_URL = "https://gea.esac.esa.int/"
#: Positional feature scale (deg) of a blind region searched in one isotropic frame
#: (``orientations = 1``): no direction is preferred, so phi1 and phi2 get the same scale.
BLIND_POSITION_SCALE_DEG = 1.0
#: Positional scales (deg) of the orientation scan of a blind region without a frame: a
#: matched filter for a thin stream (phi2) running along the frame (phi1). A stream tilted by
#: more than ~atan(phi2 / phi1) from a frame's equator loses its density advantage in it.
BLIND_SCAN_SCALES = {"phi1": 2.5, "phi2": 0.5}
#: Most frames of an orientation scan.
MAX_ORIENTATIONS = 36


def default_orientations(phi1_scale: float = BLIND_SCAN_SCALES["phi1"],
                         phi2_scale: float = BLIND_SCAN_SCALES["phi2"]) -> int:
    """Frames that cover every direction through a region's centre: neighbouring
    orientations are 2 atan(phi2 / phi1) apart, so a stream is never more than one tolerance
    (11.3 deg for the default scales, 8 frames) off the nearest frame."""
    step = 2.0 * math.degrees(math.atan(phi2_scale / phi1_scale))
    return max(1, math.ceil(180.0 / step))


def validate_orientations(value) -> int | None:
    """``orientations`` (frames of a blind region's scan) or ValueError naming the limits."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= \
            MAX_ORIENTATIONS:
        raise ValueError(f"orientations must be an integer in [1, {MAX_ORIENTATIONS}], "
                         f"got {value!r}")
    return value
#: Tilts (deg) of the registry track searched by a named-stream job: the registry frame and
#: four frames whose poles are 4 and 8 deg off it (a thin stream tolerates ~2 deg).
DEFAULT_FRAME_TILTS = (0.0, -4.0, 4.0, -8.0, 8.0)
MAX_FRAME_TILT_DEG = 30.0


@dataclass(frozen=True, eq=False)
class RegionTarget:
    """A blind region job's target: what the runner needs of a stream, for a region."""

    region: Region
    oriented: bool  # the job gave a frame (a direction to favour along phi1)

    key = "region"
    name = "blind region"

    @property
    def frame(self):
        return self.region.frame

    @property
    def footprint(self) -> Region:
        return self.region

    @property
    def default_cuts(self) -> QueryCuts:
        return QueryCuts()

    def to_dict(self) -> dict:
        return {"key": self.key, "region": self.region.to_dict(),
                "default_cuts": self.default_cuts.to_dict()}


@dataclass
class RecoverParams:
    """Parameters of ``ray-app recover`` (and, later, of a queue message).

    Attributes
    ----------
    stream_key : str, optional
        Registry key or alias (``streamKey``); or give ``region``.
    region : dict, optional
        A blind region (``region`` of the job message, see
        :func:`ray_app.data.regions.parse_region`); exclusive with ``stream_key``.
    n_neighbors : int
        k of the kNN (``nNeighbors``), 1..1024.
    sigma_threshold : float
        Candidate threshold (``sigmaThreshold``) > 0; integers accepted as floats.
    input_path : str, optional
        Parquet catalogue (local path or ``s3://`` URI), ``"gaia-dr3"`` for the Gaia archive,
        or ``None`` for the seeded synthetic sky. Region jobs keep the rows inside the region.
    cache : str, optional
        Where Gaia chunks are cached (folder or ``s3://bucket/prefix``); default
        ``$RAY_APP_HOME/cache/gaia``.
    gaia_url : str, optional
        Gaia archive base URL (default ``$RAY_APP_GAIA_URL`` or ESA's).
    columns : dict, optional
        Renames from the catalogue's column names to ours (``{"RA_ICRS": "ra"}``).
    out_dir : str
        Output directory, written atomically. It must not exist, be empty, or (with
        ``overwrite``) hold a previous output of ours; checked here, before any work.
    overwrite : bool
        Replace a previous ray-app output in ``out_dir`` (never other files).
    member_probability : float
        ``memberProbability``: members are the stars whose membership probability is at
        least this (0, 1]; default 0.5.
    photometry : str or dict, optional
        ``photometry``: ``"MAG,COLOUR"``, ``{"magnitude": M, "colour": C}`` (C a column or
        ``A-B``), ``"none"``; default Gaia's ``phot_g_mean_mag`` and ``bp_rp`` when present.
    frame_tilts : tuple of float
        A named stream is searched relative to its registry track and to that track tilted
        by these angles (deg; 0 included): a registry frame off by a few degrees still finds
        the stream. Every frame is paid for in the look-elsewhere correction.
    orientations : int, optional
        A blind region without a frame is searched in this many great-circle frames through
        its centre, 180/n deg apart, with the scan scales :data:`BLIND_SCAN_SCALES` (default
        :func:`default_orientations`: 8); 1 searches one isotropic frame. Each frame is paid
        for in the look-elsewhere correction. Not for named streams or framed regions.
    seed : int
        Seed of the synthetic catalogue and of the null calibration.
    write_ecsv : bool
        Write ``gaia_table.ecsv`` (skip for very large tables).
    n_background, n_stream : int
        Synthetic catalogue sizes when no input is given.
    shards : int, optional
        Shard count (``shards``); default chosen from the star count and actor memory.
    scales : FeatureScales, optional
        Default: the stream's own scales (``StreamInfo.feature_scales``), or the blind-region
        scales.
    """

    stream_key: str | None = "gd-1"
    n_neighbors: int = DEFAULT_N_NEIGHBORS
    sigma_threshold: float = DEFAULT_SIGMA_THRESHOLD
    input_path: str | None = None
    out_dir: str = "results/gd-1"
    seed: int = 42
    write_ecsv: bool = True
    n_background: int = 30000
    n_stream: int = 500
    shards: int | None = None
    columns: dict | None = None
    scales: FeatureScales | None = None
    region: dict | None = None
    cache: str | None = None
    gaia_url: str | None = None
    overwrite: bool = False
    frame_tilts: tuple = DEFAULT_FRAME_TILTS
    member_probability: float = DEFAULT_MEMBER_PROBABILITY
    photometry: object = None
    orientations: int | None = None
    cuts: QueryCuts | None = None

    def __post_init__(self) -> None:
        if (self.stream_key is None) == (self.region is None):
            raise ValueError("give exactly one of streamKey (a registry stream) and region "
                             f"(a blind search); got streamKey={self.stream_key!r}, "
                             f"region={self.region!r}")
        self.orientations = validate_orientations(self.orientations)
        self.frame_angles = (0.0,)  # orientations of the scan (deg), blind regions only
        if self.region is not None:
            reg = parse_region(self.region)
            self.stream = RegionTarget(reg, oriented="frame" in self.region)
            if self.stream.oriented and self.orientations is not None:
                raise ValueError("orientations applies to a region without a frame (a frame "
                                 "fixes the direction); drop one of them")
            if not self.stream.oriented:
                n = self.orientations or default_orientations()
                if n == 1:
                    scan = {"phi1": BLIND_POSITION_SCALE_DEG, "phi2": BLIND_POSITION_SCALE_DEG}
                else:
                    scan = BLIND_SCAN_SCALES
                    self.frame_angles = tuple(180.0 * i / n for i in range(n))
                if self.scales is None:
                    self.scales = FeatureScales(**scan)
        else:
            if self.orientations is not None:
                raise ValueError("orientations applies to blind regions (--region); a named "
                                 "stream is searched along its registry track")
            self.stream = get_stream(self.stream_key)
            if self.scales is None:
                self.scales = self.stream.feature_scales()
        if self.scales is None:
            self.scales = FeatureScales()
        self.gaia = self.input_path in GAIA_SOURCES
        if self.gaia:

            self.cache = self.cache or LocalResultStore(local_home()).cache_location()
            self.gaia_url = self.gaia_url or os.environ.get("RAY_APP_GAIA_URL",
                                                            DEFAULT_GAIA_URL)
        self.n_neighbors = validate_k(self.n_neighbors)
        self.sigma_threshold = validate_sigma(self.sigma_threshold)
        if self.input_path is not None and not self.gaia and not is_uri(self.input_path) \
                and not Path(self.input_path).exists():
            raise ValueError(f"input {self.input_path!r} does not exist")
        self.columns = parse_columns_map(self.columns)
        if self.shards is not None and (isinstance(self.shards, bool)
                                        or not isinstance(self.shards, int)
                                        or not 1 <= self.shards <= MAX_SHARDS):
            raise ValueError(f"shards must be an integer in [1, {MAX_SHARDS}], "
                             f"got {self.shards!r}")
        for name in ("n_background", "n_stream", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        tilts = tuple(float(t) for t in self.frame_tilts)
        if 0.0 not in tilts or len(set(tilts)) != len(tilts) or len(tilts) > 9 or any(
                not abs(t) <= MAX_FRAME_TILT_DEG for t in tilts):
            raise ValueError(f"frame_tilts must be 1-9 distinct angles within +-"
                             f"{MAX_FRAME_TILT_DEG:g} deg including 0, got {self.frame_tilts!r}")
        self.frame_tilts = tilts
        self.member_probability = validate_member_probability(self.member_probability)
        self.photometry = parse_photometry(self.photometry)
        self.out_dir = str(check_out_dir(self.out_dir, self.overwrite))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stream_key"] = self.stream.key
        d["scales"] = self.scales.to_dict()
        return d
