"""Gaia DR3 source: ADQL golden files, chunk coverage (no gap, no overlap), the astroquery
path against a local TAP server (success, 500, timeouts, errors, empty), and the cache."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy_healpix import HEALPix

from ray_app.data.gaia import (
    MAX_POLYGON_DEG,
    ArchiveHTTPError,
    ArchiveJobEnded,
    GaiaArchive,
    GaiaArchiveUnavailable,
    GaiaEmptyResult,
    GaiaQueryError,
    QueryCuts,
    RetryPolicy,
    fetch_region,
    is_transient,
    ownership,
    plan_chunks,
    polygon_diameter_deg,
    query_cache_key,
)
from ray_app.data.regions import parse_region, polygon_contains
from ray_app.data.registry import get_stream
from ray_app.io.cache import LocalBlobCache, S3BlobCache
from tests.tap_server import TapServer, _inside_polygon

GOLDEN = Path(__file__).parent / "golden"
FAST = RetryPolicy(attempts=3, base_s=0.0)


def _gaia_ids(ra, dec, rng):
    """source_ids that encode each star's level-12 HEALPix pixel, as Gaia's do."""
    pix = HEALPix(nside=2**12, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg)
    return pix.astype(np.int64) * 2**35 + rng.integers(0, 2**35, len(ra))


def _sky(region, n, rng, spill=0.3):
    """Stars inside the region plus some just outside it (a sky the archive would hold)."""
    ra, dec = region.sample(n, rng)
    jr = rng.normal(0, spill, n)
    ra2, dec2 = ra + jr / np.maximum(np.cos(np.radians(dec)), 0.1), np.clip(
        dec + rng.normal(0, spill, n), -90, 90)
    ra, dec = np.concatenate([ra, np.mod(ra2, 360)]), np.concatenate([dec, dec2])
    m = len(ra)
    t = {"source_id": _gaia_ids(ra, dec, rng), "ra": ra, "dec": dec,
         "pmra": rng.normal(-3, 3, m), "pmdec": rng.normal(-3, 3, m),
         "parallax": rng.normal(0.3, 0.6, m), "phot_g_mean_mag": rng.uniform(14, 21.5, m),
         "bp_rp": rng.normal(1.0, 0.6, m), "ruwe": rng.uniform(0.8, 1.6, m)}
    for c in ("ra_error", "dec_error", "pmra_error", "pmdec_error", "parallax_error"):
        t[c] = rng.uniform(0.02, 1.0, m)
    t["parallax"][rng.uniform(size=m) < 0.02] = np.nan  # 2-parameter solutions
    # 35 random low bits: a collision would be a broken generator, not bad luck
    assert len(np.unique(t["source_id"])) == m
    return t


REGIONS = {
    "gd-1": lambda: get_stream("gd-1").footprint,
    "orphan-chenab": lambda: get_stream("orphan-chenab").footprint,
    "cone": lambda: parse_region({"cone": {"center": [150.0, 30.0], "radius": 25.0}}),
    "polygon": lambda: parse_region({"polygon": [[350, -10], [20, -12], [25, 15], [355, 20]]}),
    "healpix": lambda: parse_region({"healpix": {"level": 3, "pixels": [100, 101, 102, 110]}}),
    "cone-own-frame": lambda: parse_region({"cone": {"center": [180.0, 0.0], "radius": 10.0},
                                            "frame": {"pole": [90.0, 45.0]}}),
}


@pytest.mark.parametrize("name", ["gd-1", "cone"])
def test_adql_golden(name):
    region = REGIONS[name]()
    cuts = get_stream("gd-1").default_cuts if name == "gd-1" else QueryCuts()
    chunks = plan_chunks(region, cuts)
    text = "\n\n".join(f"-- chunk {c.index}: phi1 {c.phi1}, phi2 {c.phi2}\n{c.adql}"
                       for c in chunks) + "\n"
    path = GOLDEN / f"{name}.adql"
    if os.environ.get("RAY_APP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"ADQL for {name} changed (RAY_APP_UPDATE_GOLDEN=1 to accept)"
    assert "parallax_over_error" not in text
    assert "parallax < 1" in text and "phot_g_mean_mag < 20.5" in text


@pytest.mark.parametrize("name", sorted(REGIONS))
@pytest.mark.parametrize("splits", [1, 3])
def test_chunks_cover_the_region_once(name, splits, rng):
    region = REGIONS[name]()
    chunks = plan_chunks(region, QueryCuts(), source_id_splits=splits)
    assert all(polygon_diameter_deg(c.polygon) < MAX_POLYGON_DEG for c in chunks)
    if splits > 1:
        assert len({c.source_id_range for c in chunks}) > 1
    sky = _sky(region, 30000, rng)
    # include stars exactly on cell edges
    c0 = chunks[0]
    from ray_app.core.frames import frame_to_icrs
    p2 = rng.uniform(*c0.phi2, 200)
    era, edec = frame_to_icrs(region.frame, np.full(200, c0.phi1[1]), p2)
    ra, dec = np.concatenate([sky["ra"], era]), np.concatenate([sky["dec"], edec])
    sid = np.concatenate([sky["source_id"], _gaia_ids(era, edec, rng)])
    owner = ownership(region, chunks, ra, dec, sid)   # raises on double ownership
    inside = region.contains(ra, dec)
    assert np.array_equal(owner >= 0, inside), "a star of the region is in no chunk"
    assert inside.sum() > 15000
    # every owned star lies inside its chunk's query polygon (the archive returns it)
    for ch in chunks:
        mine = owner == ch.index
        if mine.any():
            poly = np.array(ch.polygon)
            assert _inside_polygon(ra[mine], dec[mine], poly).all()
            assert polygon_contains(poly[:, 0], poly[:, 1], ra[mine], dec[mine]).all()


@pytest.fixture
def gd1_sky(rng):
    return _sky(get_stream("gd-1").footprint, 20000, rng)


def _expected(region, cuts, sky):
    m = region.contains(sky["ra"], sky["dec"])
    with np.errstate(invalid="ignore"):
        m &= (sky["parallax"] < cuts.parallax_max) & (sky["phot_g_mean_mag"] < cuts.g_max)
        m &= (sky["bp_rp"] > cuts.bp_rp_min) & (sky["bp_rp"] < cuts.bp_rp_max)
    return np.sort(sky["source_id"][m])


def _archive(server, **kw):
    kw = {"socket_timeout_s": 1.0, "job_timeout_s": 2.0, "poll_s": 0.02, **kw}
    return GaiaArchive(server.url, **kw)


def test_fetch_through_astroquery_then_cache_hit(gd1_sky, tmp_path):
    s = get_stream("gd-1")
    cache = LocalBlobCache(tmp_path / "cache")
    with TapServer(gd1_sky) as server:
        table, report, chunks = fetch_region(s.footprint, s.default_cuts, _archive(server),
                                             cache, FAST)
        assert server.count("POST") == len(chunks) == report.archive_queries
        assert np.array_equal(table.column("source_id").to_numpy(),
                              _expected(s.footprint, s.default_cuts, gd1_sky))
        assert table.num_rows == report.rows_kept > 1000
        assert np.isnan(table.column("parallax").to_numpy()).sum() == 0  # cut drops NULLs
        assert len(list((tmp_path / "cache").glob("gaia-*.parquet"))) == len(chunks)
        before = len(server.requests)
        again, report2, _ = fetch_region(s.footprint, s.default_cuts, _archive(server), cache,
                                         FAST)
        assert len(server.requests) == before, "a cached fetch must not touch the archive"
        assert report2.from_cache == len(chunks) and report2.archive_queries == 0
        assert again.equals(table)


def test_retry_after_500_and_after_timeouts(gd1_sky, tmp_path):
    s = get_stream("gd-1")
    slept = []
    with TapServer(gd1_sky, hang_s=4.0) as server:
        server.plan = ["500", "hang", "stuck", "ok"]
        table, report, chunks = fetch_region(s.footprint, s.default_cuts,
                                             _archive(server, socket_timeout_s=1.5,
                                                      job_timeout_s=1.0),
                                             LocalBlobCache(tmp_path), RetryPolicy(4, 0.01),
                                             sleep=slept.append)
        # chunk 0 took 4 attempts: 500 page, socket timeout, job timeout, success
        assert server.count("POST") == len(chunks) + 3
        assert slept == [0.01, 0.02, 0.04]
    assert np.array_equal(table.column("source_id").to_numpy(),
                          _expected(s.footprint, s.default_cuts, gd1_sky))


def test_archive_that_keeps_failing_is_reported_and_nothing_cached(gd1_sky, tmp_path):
    s = get_stream("gd-1")
    cache = LocalBlobCache(tmp_path)
    with TapServer(gd1_sky) as server:
        server.plan = ["ok", "500", "500", "500"]
        with pytest.raises(GaiaArchiveUnavailable, match="failed 3 times on chunk 1.*HTTPError"):
            fetch_region(s.footprint, s.default_cuts, _archive(server), cache, FAST,
                         sleep=lambda s: None)
        chunks = plan_chunks(s.footprint, s.default_cuts)
        assert cache.get(chunks[0].cache_key) is not None   # the good chunk is kept
        assert cache.get(chunks[1].cache_key) is None       # the failed one is not
        # the job's retry resumes: chunk 0 from the cache, the rest from the archive
        posts = server.count("POST")
        _, report, _ = fetch_region(s.footprint, s.default_cuts, _archive(server), cache, FAST)
        assert report.from_cache == 1
        assert server.count("POST") - posts == len(chunks) - 1


def test_query_errors_are_permanent_and_not_retried(gd1_sky, tmp_path):
    s = get_stream("gd-1")
    with TapServer(gd1_sky) as server:
        server.plan = ["syntax"]
        with pytest.raises(GaiaQueryError, match="(?s)refused chunk 0.*Error while parsing ADQL"):
            fetch_region(s.footprint, s.default_cuts, _archive(server), LocalBlobCache(tmp_path),
                         FAST)
        assert server.count("POST") == 1
    assert list(tmp_path.iterdir()) == []


def test_errors_are_classified_by_status_and_type_not_by_text(gd1_sky, tmp_path):
    """503, 429 and an ABORTED job are retried; a 400 whose text says "memory", "connection"
    and "500" is the query's fault and is not."""
    s = get_stream("gd-1")
    with TapServer(gd1_sky) as server:
        server.plan = ["503", "429", "aborted", "ok"]
        _, _, chunks = fetch_region(s.footprint, s.default_cuts, _archive(server),
                                    LocalBlobCache(tmp_path / "a"), RetryPolicy(4, 0.0),
                                    sleep=lambda s: None)
        assert server.count("POST") == len(chunks) + 3
        server.plan = ["400"]
        before = server.count("POST")
        with pytest.raises(GaiaQueryError, match="refused chunk 0: ArchiveHTTPError: HTTP 400"):
            fetch_region(s.footprint, s.default_cuts, _archive(server),
                         LocalBlobCache(tmp_path / "b"), RetryPolicy(4, 0.0),
                         sleep=lambda s: None)
        assert server.count("POST") == before + 1  # not retried


@pytest.mark.parametrize("exc,transient", [
    (ArchiveHTTPError(500, "x"), True), (ArchiveHTTPError(502, "x"), True),
    (ArchiveHTTPError(408, "x"), True), (ArchiveHTTPError(429, "x"), True),
    (ArchiveHTTPError(400, "connection timed out, memory"), False),
    (ArchiveHTTPError(404, "x"), False), (ArchiveHTTPError(403, "x"), False),
    (ArchiveJobEnded("ABORTED", "x"), True), (ArchiveJobEnded("ERROR", "out of memory"), False),
    (TimeoutError("x"), True), (ConnectionResetError("x"), True),
    (ConnectionRefusedError("x"), True), (OSError(errno.ENETUNREACH, "x"), True),
    (ValueError("HTTP 503 connection timeout memory"), False),
    (RuntimeError("500 Internal Server Error"), False), (KeyError("ra"), False),
])
def test_is_transient_by_type_and_status(exc, transient):
    assert is_transient(exc) is transient


def test_empty_answer_is_a_clear_error_and_not_cached(gd1_sky, tmp_path):
    s = get_stream("gd-1")
    n = len(plan_chunks(s.footprint, s.default_cuts))
    with TapServer(gd1_sky) as server:
        server.plan = ["empty"] * n
        with pytest.raises(GaiaEmptyResult, match="no star of the stream-footprint region"):
            fetch_region(s.footprint, s.default_cuts, _archive(server), LocalBlobCache(tmp_path),
                         FAST)
    assert list(tmp_path.glob("*.parquet")) == []


def test_unreachable_archive_is_transient(tmp_path):
    s = get_stream("gd-1")
    arch = GaiaArchive("http://127.0.0.1:9/", socket_timeout_s=0.5)  # discard port: refused
    with pytest.raises(GaiaArchiveUnavailable, match="ConnectionRefused"):
        fetch_region(s.footprint, s.default_cuts, arch, LocalBlobCache(tmp_path), FAST)


def test_cache_in_s3_through_moto(gd1_sky, aws):
    s = get_stream("gd-1")
    cache = S3BlobCache(aws["names"].bucket)
    with TapServer(gd1_sky) as server:
        table, report, chunks = fetch_region(s.footprint, s.default_cuts, _archive(server),
                                             cache, FAST)
        keys = {o["Key"] for o in cache.s3.list_objects_v2(
            Bucket=aws["names"].bucket, Prefix="cache/gaia/")["Contents"]}
        assert keys == {f"cache/gaia/{c.cache_key}.parquet" for c in chunks}
        posts = server.count("POST")
        again, report2, _ = fetch_region(s.footprint, s.default_cuts, _archive(server), cache,
                                         FAST)
        assert server.count("POST") == posts and report2.from_cache == len(chunks)
        assert again.equals(table)


def test_cache_key_follows_the_query_text():
    a = "SELECT source_id FROM gaiadr3.gaia_source WHERE parallax < 1"
    assert query_cache_key(a) == query_cache_key(a.replace(" ", "  "))
    assert query_cache_key(a) != query_cache_key(a.replace("< 1", "< 2"))
