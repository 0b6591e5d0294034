"""Validated parameters of one recovery job.

Every check raises ``ValueError`` with the field name (as the job message spells it), the value
received and what is allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .core.features import FeatureScales
from .core.knn import validate_k
from .core.significance import DEFAULT_SIGMA_THRESHOLD, validate_sigma
from .data.catalogue import is_uri, parse_columns_map
from .data.registry import get_stream

DEFAULT_N_NEIGHBORS = 32
MAX_SHARDS = 4096


@dataclass
class RecoverParams:
    """Parameters of ``ray-app recover`` (and, later, of a queue message).

    Attributes
    ----------
    stream_key : str
        Registry key or alias (``streamKey``).
    n_neighbors : int
        k of the kNN (``nNeighbors``), 1..1024.
    sigma_threshold : float
        Candidate threshold (``sigmaThreshold``) > 0; integers accepted as floats.
    input_path : str, optional
        Parquet catalogue (local path or ``s3://`` URI); ``None`` uses the seeded synthetic
        catalogue.
    columns : dict, optional
        Renames from the catalogue's column names to ours (``{"RA_ICRS": "ra"}``).
    out_dir : str
        Output directory (replaced atomically).
    seed : int
        Seed of the synthetic catalogue and of the null calibration.
    write_ecsv : bool
        Write ``gaia_table.ecsv`` (skip for very large tables).
    n_background, n_stream : int
        Synthetic catalogue sizes when no input is given.
    shards : int, optional
        Shard count (``shards``); default chosen from the star count and actor memory.
    scales : FeatureScales
    """

    stream_key: str = "gd-1"
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
    scales: FeatureScales = field(default_factory=FeatureScales)

    def __post_init__(self) -> None:
        self.stream = get_stream(self.stream_key)
        self.n_neighbors = validate_k(self.n_neighbors)
        self.sigma_threshold = validate_sigma(self.sigma_threshold)
        if self.input_path is not None and not is_uri(self.input_path) \
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stream_key"] = self.stream.key
        d["scales"] = self.scales.to_dict()
        return d
