"""Gaia DR3 source: ADQL built from a region, chunked for the archive, fetched through
astroquery's ``launch_job_async``, cached as Parquet under the query's hash.

Chunking
    A region is tiled in its own frame into cells of at most :data:`MAX_CELL_DEG` on a side.
    Each cell is queried with a padded rectangle polygon (the archive refuses long polygons;
    every polygon's diameter stays under :data:`MAX_POLYGON_DEG`), optionally split further
    into ``source_id`` ranges on HEALPix boundaries (``source_id // 2**35`` is the level-12
    pixel) for dense cells. A star belongs to exactly one chunk: the cell that holds its
    (phi1, phi2) in half-open intervals, and the source_id range that holds its id; polygons
    overlap slightly but ownership does not, so the union has no gap and no duplicate.

Retries
    Archive errors are sorted by HTTP status and exception type, never by message text (see
    :func:`is_transient`): permanent (the query is wrong: an HTTP 4xx other than 408/429, a
    job ending in phase ERROR; :class:`GaiaQueryError`, a ``ValueError``) and transient (HTTP
    5xx, 408 and 429, connection errors, socket timeouts, a job ABORTED by the service or not
    finished within ``job_timeout_s``: retried with exponential backoff, then
    :class:`GaiaArchiveUnavailable`). astroquery reports HTTP errors as text only, so the
    client's connections record each response's status and the archive re-raises the error
    as :class:`ArchiveHTTPError` carrying it.

Cache
    Every successful chunk answer is written as Parquet to a blob cache (``get``/``put`` of
    bytes, see :mod:`ray_app.io.cache`) under ``sha256(query text)``, so a retried or repeated
    job never sends the same query twice. Failed chunks write nothing.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.frames import frame_to_icrs, icrs_to_frame
from .regions import Region, _vec, healpix_index

log = logging.getLogger(__name__)

GAIA_TABLE = "gaiadr3.gaia_source"
GAIA_COLUMNS = ("source_id", "ra", "dec", "pmra", "pmdec", "parallax", "ra_error",
                "dec_error", "pmra_error", "pmdec_error", "parallax_error",
                "phot_g_mean_mag", "bp_rp", "ruwe")
#: The archive's limit on a polygon's size, degrees (longer polygons are refused).
MAX_POLYGON_DEG = 23.0
MAX_CELL_DEG = 15.0
EDGE_STEP_DEG = 2.0  # constant-phi lines are drawn as great-circle chords this long
PAD_DEG = 0.05       # polygon margin around a cell: covers the chords' sag and rounding
SOURCE_ID_PER_LEVEL12 = 2**35
SOURCE_ID_END = 12 * 4**12 * 2**35  # one past the largest possible source_id


@dataclass(frozen=True)
class QueryCuts:
    """Row cuts of a Gaia query (DESIGN section 3): all in the archive, none on
    ``parallax_over_error`` (it would remove distant stream members).

    Attributes
    ----------
    parallax_max : float
        Keep ``parallax < parallax_max`` (mas); also drops rows with no parallax.
    g_max : float
        Keep ``phot_g_mean_mag < g_max`` (mag).
    bp_rp_min, bp_rp_max : float
        Keep ``bp_rp_min < bp_rp < bp_rp_max`` (mag).
    """

    parallax_max: float = 1.0
    g_max: float = 20.5
    bp_rp_min: float = -0.5
    bp_rp_max: float = 2.5

    def __post_init__(self):
        for name in ("parallax_max", "g_max", "bp_rp_min", "bp_rp_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise ValueError(f"cuts.{name} must be a finite number, got {v!r}")
        if not self.parallax_max > 0:
            raise ValueError(f"cuts.parallax_max must be > 0 mas, got {self.parallax_max!r}")
        if not self.bp_rp_min < self.bp_rp_max:
            raise ValueError(f"cuts.bp_rp_min ({self.bp_rp_min}) must be < bp_rp_max "
                             f"({self.bp_rp_max})")

    def conditions(self) -> list[str]:
        return [f"parallax < {self.parallax_max:.6g}",
                f"phot_g_mean_mag < {self.g_max:.6g}",
                f"bp_rp > {self.bp_rp_min:.6g}", f"bp_rp < {self.bp_rp_max:.6g}"]

    def to_dict(self) -> dict:
        return {"parallax_max": self.parallax_max, "g_max": self.g_max,
                "bp_rp_min": self.bp_rp_min, "bp_rp_max": self.bp_rp_max}


@dataclass(frozen=True)
class Chunk:
    """One archive query: a cell of the region and a source_id range.

    Attributes
    ----------
    index : int
    phi1 : (lo, hi)
        Half-open cell bounds in the region's (unwrapped) phi1, degrees.
    phi2 : (lo, hi)
        Half-open cell bounds in phi2, degrees.
    polygon : tuple of (ra, dec)
        The query polygon (the cell, padded by :data:`PAD_DEG`).
    source_id_range : (lo, hi)
        Half-open source_id bounds.
    adql : str
        The query text (its hash is the cache key).
    """

    index: int
    phi1: tuple[float, float]
    phi2: tuple[float, float]
    polygon: tuple[tuple[float, float], ...]
    source_id_range: tuple[int, int]
    adql: str

    @property
    def cache_key(self) -> str:
        return query_cache_key(self.adql)


def query_cache_key(adql: str) -> str:
    """``gaia-<sha256 of the whitespace-normalised query>``."""
    return "gaia-" + hashlib.sha256(" ".join(adql.split()).encode()).hexdigest()


def build_adql(polygon, cuts: QueryCuts, source_id_range: tuple[int, int] | None = None,
               table: str = GAIA_TABLE) -> str:
    """The ADQL of one chunk (columns, polygon, cuts, source_id range)."""
    pts = ", ".join(f"{ra:.6f}, {dec:.6f}" for ra, dec in polygon)
    where = [f"1 = CONTAINS(POINT('ICRS', ra, dec), POLYGON('ICRS', {pts}))",
             *cuts.conditions()]
    if source_id_range is not None:
        lo, hi = source_id_range
        if lo > 0:
            where.append(f"source_id >= {lo}")
        if hi < SOURCE_ID_END:
            where.append(f"source_id < {hi}")
    return (f"SELECT {', '.join(GAIA_COLUMNS)}\nFROM {table}\nWHERE "
            + "\n  AND ".join(where))


def _splits(lo: float, hi: float, max_len: float) -> np.ndarray:
    n = max(int(np.ceil((hi - lo) / max_len - 1e-9)), 1)
    return np.round(np.linspace(lo, hi, n + 1), 9)


def _cell_polygon(frame, a, b, c, d) -> tuple[tuple[float, float], ...]:
    """Counter-clockwise (in phi1, phi2) padded rectangle, long edges as short chords."""
    a, b, c, d = a - PAD_DEG, b + PAD_DEG, c - PAD_DEG, d + PAD_DEG
    n = max(int(np.ceil((b - a) / EDGE_STEP_DEG)), 1)
    p1 = np.linspace(a, b, n + 1)
    phi1 = np.concatenate([p1, p1[::-1]])
    phi2 = np.concatenate([np.full(n + 1, c), np.full(n + 1, d)])
    ra, dec = frame_to_icrs(frame, phi1, phi2)
    return tuple((round(float(x), 6), round(float(y), 6)) for x, y in zip(ra, dec, strict=True))


def polygon_diameter_deg(polygon) -> float:
    v = _vec([p[0] for p in polygon], [p[1] for p in polygon])
    return float(np.degrees(np.arccos(np.clip((v @ v.T).min(), -1, 1))))


def _source_id_cuts(frame, a, b, c, d, n: int) -> list[int]:
    """``n - 1`` cut points between source_id ranges holding similar sky areas of the cell,
    on level-8 HEALPix boundaries (hence also level-12 ones)."""
    if n <= 1:
        return []
    g1, g2 = np.meshgrid(np.linspace(a, b, 60), np.linspace(c, d, 60))
    w = np.cos(np.radians(g2)).ravel()
    ra, dec = frame_to_icrs(frame, g1.ravel(), g2.ravel())
    pix = healpix_index(ra, dec, 8)
    unit = SOURCE_ID_PER_LEVEL12 * 4 ** (12 - 8)
    o = np.argsort(pix)
    cw = np.cumsum(w[o]) / w.sum()
    cuts = []
    for q in np.arange(1, n) / n:
        p = int(pix[o][min(np.searchsorted(cw, q), len(o) - 1)]) + 1
        if not cuts or p * unit > cuts[-1]:
            cuts.append(p * unit)
    return [x for x in cuts if 0 < x < SOURCE_ID_END]


def plan_chunks(region: Region, cuts: QueryCuts, source_id_splits: int = 1,
                max_cell_deg: float = MAX_CELL_DEG, table: str = GAIA_TABLE) -> list[Chunk]:
    """Tile ``region`` into archive-sized chunks (see the module docstring).

    Parameters
    ----------
    source_id_splits : int
        Split every cell into this many source_id ranges (>= 1), for dense cells whose answer
        would exceed the archive's row limits.
    max_cell_deg : float
        Cell side, degrees; the padded polygon's diameter must stay under 23 deg.
    """
    if not 1 <= source_id_splits <= 4096:
        raise ValueError(f"source_id_splits must be in [1, 4096], got {source_id_splits!r}")
    lo, hi = region.phi1_range
    chunks: list[Chunk] = []
    edges1 = _splits(lo, hi, max_cell_deg)
    for a, b in zip(edges1[:-1], edges1[1:], strict=True):
        fine = np.linspace(a, b, max(int((b - a) / 0.1), 2) + 1)
        e_lo, e_hi = region.phi2_envelope(fine)
        ok = e_lo <= e_hi
        if not ok.any():
            continue
        p2_lo = max(float(np.min(e_lo[ok])), -89.0)
        p2_hi = min(float(np.max(e_hi[ok])), 89.0)
        edges2 = _splits(p2_lo, p2_hi, max_cell_deg)
        for c, d in zip(edges2[:-1], edges2[1:], strict=True):
            poly = _cell_polygon(region.frame, a, b, c, d)
            diameter = polygon_diameter_deg(poly)
            if diameter >= MAX_POLYGON_DEG:
                raise ValueError(f"chunk polygon spans {diameter:.1f} deg (archive limit "
                                 f"{MAX_POLYGON_DEG}); lower max_cell_deg")
            sid = [0, *_source_id_cuts(region.frame, a, b, c, d, source_id_splits),
                   SOURCE_ID_END]
            for s_lo, s_hi in zip(sid[:-1], sid[1:], strict=True):
                rng = (int(s_lo), int(s_hi))
                chunks.append(Chunk(len(chunks), (float(a), float(b)), (float(c), float(d)),
                                    poly, rng, build_adql(poly, cuts, rng, table)))
    if not chunks:
        raise ValueError("the region's footprint is empty: nothing to query")
    return chunks


def owned_by(region: Region, chunk: Chunk, ra, dec, source_id,
             open_edges: tuple[bool, bool, bool, bool] = (False, False, False, False)
             ) -> np.ndarray:
    """Stars of a chunk's answer that this chunk owns: inside the region, the half-open cell
    and the source_id range. ``open_edges`` = (phi1 low, phi1 high, phi2 low, phi2 high)
    drops the cell bounds that are the tiling's outer edges, so no star of the region can
    fall outside every cell through rounding."""
    p1, p2 = icrs_to_frame(region.frame, ra, dec)
    p1 = region.unwrap_phi1(p1)
    (a, b), (c, d) = chunk.phi1, chunk.phi2
    s_lo, s_hi = chunk.source_id_range
    lo1, hi1, lo2, hi2 = open_edges
    inside = region.contains(ra, dec)
    inside &= (p1 >= a) | lo1
    inside &= (p1 < b) | hi1
    inside &= (p2 >= c) | lo2
    inside &= (p2 < d) | hi2
    sid = np.asarray(source_id, np.int64)
    return inside & (sid >= s_lo) & (sid < s_hi)


def open_edges(chunks: list[Chunk], ch: Chunk) -> tuple[bool, bool, bool, bool]:
    """Which of the chunk's cell edges are outer edges of the tiling."""
    same_strip = [c.phi2 for c in chunks if c.phi1 == ch.phi1]
    return (ch.phi1[0] == min(c.phi1[0] for c in chunks),
            ch.phi1[1] == max(c.phi1[1] for c in chunks),
            ch.phi2[0] == min(p[0] for p in same_strip),
            ch.phi2[1] == max(p[1] for p in same_strip))


def ownership(region: Region, chunks: list[Chunk], ra, dec, source_id) -> np.ndarray:
    """For each star, the index of the chunk that owns it (-1: outside the region); raises if
    a star is owned twice. Used to check plans."""
    out = np.full(len(ra), -1, np.int64)
    count = np.zeros(len(ra), np.int64)
    for ch in chunks:
        m = owned_by(region, ch, ra, dec, source_id, open_edges(chunks, ch))
        out[m] = ch.index
        count += m
    if np.any(count > 1):
        raise AssertionError(f"{int(np.sum(count > 1))} stars owned by several chunks")
    return out


# ---------------------------------------------------------------- errors and retries
class GaiaQueryError(ValueError):
    """The archive refused the query itself (permanent: retrying cannot help)."""


class GaiaArchiveUnavailable(RuntimeError):
    """The archive kept failing transiently (5xx, timeouts, connection errors)."""


class GaiaEmptyResult(ValueError):
    """The archive answered, but no star of the region passes the cuts."""


class ArchiveHTTPError(Exception):
    """The archive answered an HTTP request with an error status (``status``)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ArchiveJobEnded(Exception):
    """An archive job ended in a phase other than COMPLETED (``phase``: ERROR or ABORTED)."""

    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase = phase


#: HTTP statuses worth retrying: the server's trouble (5xx), a request timeout, a rate limit.
TRANSIENT_STATUS = frozenset({408, 429})


def is_transient(exc: BaseException) -> bool:
    """Whether an archive error may go away on a retry, by HTTP status and exception type.

    Transient: HTTP 5xx, 408 and 429; a job ABORTED by the service; timeouts (socket or job);
    connection errors (refused, reset, unreachable) and broken HTTP exchanges. Everything else
    is permanent: an HTTP 4xx, a job in phase ERROR (the service rejected the query), or an
    error of ours. The message text is never looked at: an error page that mentions "memory"
    or "connection" is not a reason to retry.
    """
    import http.client

    import requests

    if isinstance(exc, ArchiveHTTPError):
        return exc.status >= 500 or exc.status in TRANSIENT_STATUS
    if isinstance(exc, ArchiveJobEnded):
        return exc.phase == "ABORTED"
    if isinstance(exc, GaiaArchiveUnavailable | TimeoutError | ConnectionError | socket.gaierror
                  | http.client.HTTPException | requests.ConnectionError | requests.Timeout):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


_NETWORK_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
                             errno.EHOSTDOWN, errno.ETIMEDOUT, errno.ECONNABORTED})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``base_s * 2**attempt`` (capped), ``attempts`` tries in all."""

    attempts: int = 5
    base_s: float = 2.0
    max_s: float = 120.0

    def delay(self, attempt: int) -> float:
        return min(self.base_s * 2**attempt, self.max_s)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``RAY_APP_GAIA_ATTEMPTS`` (default 5) and ``RAY_APP_GAIA_BACKOFF_S`` (first delay,
        default 2 s; doubled per attempt up to 120 s)."""
        import os

        try:
            attempts = int(os.environ.get("RAY_APP_GAIA_ATTEMPTS", cls.attempts))
            base = float(os.environ.get("RAY_APP_GAIA_BACKOFF_S", cls.base_s))
        except ValueError as exc:
            raise ValueError(f"RAY_APP_GAIA_ATTEMPTS must be an integer >= 1 and "
                             f"RAY_APP_GAIA_BACKOFF_S a number >= 0: {exc}") from None
        if attempts < 1 or base < 0:
            raise ValueError(f"RAY_APP_GAIA_ATTEMPTS must be >= 1 and RAY_APP_GAIA_BACKOFF_S "
                             f">= 0, got {attempts}, {base}")
        return cls(attempts=attempts, base_s=base)


class GaiaArchive:
    """The Gaia TAP service through astroquery (``GaiaClass.launch_job_async``).

    Parameters
    ----------
    url : str
        Base URL of the archive; TAP lives under ``tap-server/tap`` (as at ESA).
    socket_timeout_s : float
        Timeout of every HTTP request (connect and read).
    job_timeout_s : float
        How long an async job may stay queued/executing before the attempt counts as a
        timeout.
    poll_s : float
        Interval between phase polls.
    """

    def __init__(self, url: str = "https://gea.esac.esa.int/", socket_timeout_s: float = 60.0,
                 job_timeout_s: float = 3600.0, poll_s: float = 2.0):
        self.url = url if url.endswith("/") else url + "/"
        self.socket_timeout_s = socket_timeout_s
        self.job_timeout_s = job_timeout_s
        self.poll_s = poll_s
        self._gaia = None
        self._last = threading.local()  # the status of this thread's last HTTP response

    def _client(self):
        if self._gaia is None:
            self._gaia = _make_gaia_client(self.url, self.socket_timeout_s, self._record)
        return self._gaia

    def _record(self, status: int) -> None:
        self._last.status = status

    def query(self, adql: str) -> pa.Table:
        """Run one async query; returns the answer as an Arrow table.

        Raises
        ------
        ArchiveHTTPError
            An HTTP error status (astroquery's text-only error, re-raised with the status).
        ArchiveJobEnded
            The job ended in phase ERROR or ABORTED.
        TimeoutError
            The job did not finish within ``job_timeout_s``.
        """
        import requests

        self._last.status = None
        try:
            return self._query(adql)
        except requests.exceptions.HTTPError as exc:
            status = getattr(exc.response, "status_code", None) or self._last.status
            if status is None or status < 400:
                raise ConnectionError(f"HTTP exchange failed: {exc}") from exc
            raise ArchiveHTTPError(status, str(exc).strip()[:500]) from exc

    def _query(self, adql: str) -> pa.Table:
        job = self._client().launch_job_async(adql, background=True, verbose=False)
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            phase = job.get_phase(update=True).strip().upper()
            if phase not in ("PENDING", "QUEUED", "EXECUTING"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"archive job {job.jobid} still {phase} after "
                                   f"{self.job_timeout_s:g} s")
            time.sleep(self.poll_s)
        if phase != "COMPLETED":
            try:
                detail = job.get_error()
            except Exception as exc:  # the error document itself may be unavailable
                detail = f"(no error document: {exc})"
            raise ArchiveJobEnded(phase, f"archive job {job.jobid} ended in phase {phase}: "
                                         f"{detail}")
        return _astropy_to_arrow(job.get_results())


def _make_gaia_client(url: str, timeout_s: float, record: Callable[[int], None]):
    """astroquery's GaiaClass on ``url`` with per-request socket timeouts; ``record`` receives
    the HTTP status of every response."""
    import http.client
    from urllib.parse import urlparse

    from astroquery.gaia import GaiaClass
    from astroquery.utils.tap.conn.tapconn import ConnectionHandler, TapConn

    u = urlparse(url)
    https = u.scheme == "https"
    port = u.port or (443 if https else 80)

    def recording(base):
        class Recording(base):
            def getresponse(self):
                response = super().getresponse()
                record(response.status)
                return response
        return Recording

    http_conn = recording(http.client.HTTPConnection)
    https_conn = recording(http.client.HTTPSConnection)

    class TimeoutConnections(ConnectionHandler):
        def get_connection(self, *, ishttps=False, cookie=None, verbose=False):
            if ishttps or https:
                return https_conn(u.hostname, port, timeout=timeout_s)
            return http_conn(u.hostname, port, timeout=timeout_s)

        def get_connection_secure(self, verbose):
            return https_conn(u.hostname, port, timeout=timeout_s)

    base = u.path.rstrip("/")
    conn = TapConn(https, u.hostname, server_context=f"{base}/tap-server", port=port,
                   sslport=port, connhandler=TimeoutConnections(u.hostname, port, port),
                   tap_context="tap", upload_context="Upload", table_edit_context="TableTool",
                   data_context="data", datalink_context="datalink")
    return GaiaClass(tap_plus_conn_handler=conn, datalink_handler=conn,
                     gaia_tap_server=url, gaia_data_server=url, show_server_messages=False)


def _astropy_to_arrow(table) -> pa.Table:
    cols = {}
    names = {n.lower(): n for n in table.colnames}
    for c in GAIA_COLUMNS:
        if c not in names:
            raise GaiaQueryError(f"archive answer lacks column {c!r} (has: "
                                 f"{', '.join(table.colnames)})")
        col = table[names[c]]
        data = np.ma.getdata(col)
        mask = np.ma.getmaskarray(col)
        if c == "source_id":
            cols[c] = pa.array(np.asarray(data, np.int64))
        else:
            vals = np.asarray(data, np.float64).copy()
            vals[mask] = np.nan
            cols[c] = pa.array(vals)
    return pa.table(cols)


def _table_bytes(table: pa.Table, adql: str) -> bytes:
    sink = io.BytesIO()
    table = table.replace_schema_metadata({b"adql": adql.encode()})
    pq.write_table(table, sink)
    return sink.getvalue()


def fetch_chunk(chunk: Chunk, archive, cache, retry: RetryPolicy = RetryPolicy(),
                sleep: Callable[[float], None] = time.sleep) -> tuple[pa.Table, bool]:
    """One chunk's answer: from the cache, else from the archive (cached on success).

    Returns
    -------
    (table, from_cache)
    """
    blob = cache.get(chunk.cache_key) if cache is not None else None
    if blob is not None:
        return pq.read_table(io.BytesIO(blob)), True
    last: BaseException | None = None
    for attempt in range(retry.attempts):
        try:
            table = archive.query(chunk.adql)
        except GaiaQueryError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise GaiaQueryError(f"the archive refused chunk {chunk.index}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            last = exc
            log.warning("Gaia chunk %d attempt %d/%d failed (%s: %s)", chunk.index,
                        attempt + 1, retry.attempts, type(exc).__name__, exc)
            if attempt + 1 < retry.attempts:
                sleep(retry.delay(attempt))
            continue
        if cache is not None:
            cache.put(chunk.cache_key, _table_bytes(table, chunk.adql))
        return table, False
    raise GaiaArchiveUnavailable(
        f"Gaia archive failed {retry.attempts} times on chunk {chunk.index} "
        f"(last: {type(last).__name__}: {last})")


@dataclass
class FetchReport:
    chunks: int
    from_cache: int
    archive_queries: int
    rows_returned: int
    rows_kept: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fetch_region(region: Region, cuts: QueryCuts, archive, cache,
                 retry: RetryPolicy = RetryPolicy(), source_id_splits: int = 1,
                 progress: Callable[[int, int], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep
                 ) -> tuple[pa.Table, FetchReport, list[Chunk]]:
    """All Gaia stars of ``region`` passing ``cuts``, sorted by source_id.

    Raises
    ------
    GaiaQueryError
        The archive refused a query (permanent).
    GaiaArchiveUnavailable
        Transient failures outlasted the retry policy (a later retry of the job may work;
        chunks fetched so far stay cached).
    GaiaEmptyResult
        No star in the region passes the cuts; the empty answers are not kept in the cache.
    """
    chunks = plan_chunks(region, cuts, source_id_splits=source_id_splits)
    parts, from_cache, returned = [], 0, 0
    for i, ch in enumerate(chunks):
        table, hit = fetch_chunk(ch, archive, cache, retry, sleep)
        from_cache += hit
        returned += table.num_rows
        if table.num_rows:
            cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
                    ("ra", "dec", "source_id")}
            keep = owned_by(region, ch, cols["ra"], cols["dec"], cols["source_id"],
                            open_edges(chunks, ch))
            parts.append(table.filter(pa.array(keep)))
        if progress is not None:
            progress(i + 1, len(chunks))
    out = pa.concat_tables(parts) if parts else None
    if out is None or out.num_rows == 0:
        if cache is not None and hasattr(cache, "delete"):
            for ch in chunks:
                cache.delete(ch.cache_key)
        raise GaiaEmptyResult(
            f"the Gaia archive returned no star of the {region.kind} region "
            f"({region.area_deg2:.1f} deg^2) passing the cuts {cuts.to_dict()} "
            f"({len(chunks)} chunk queries, {returned} rows before the footprint filter)")
    out = out.sort_by("source_id")
    report = FetchReport(len(chunks), from_cache, len(chunks) - from_cache, returned,
                         out.num_rows)
    return out, report, chunks
