"""Run a survey: patches as blind region jobs, resumable, merged into survey candidates.

Each patch is a stage in the hats-import style: a plain function of a patch, the survey's
parameters and the engine it receives, writing one job output folder under
``<out>/patches/<patch id>/`` whose ``manifest.json`` is the "done" marker; a re-run of the
same survey skips every patch that has one. A failing patch is retried, then reported in
``survey.json`` (with the area it leaves unsearched); the survey still completes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..core.frames import fit_great_circle_pole
from ..core.membership import DEFAULT_MEMBER_PROBABILITY
from ..core.significance import DEFAULT_SIGMA_THRESHOLD
from ..core.survey import great_circle_extent, job_sigma_for, merge_groups, survey_sigma
from ..data.catalogue import CatalogueError, is_uri
from ..data.registry import match_track
from ..data.survey_sky import DEFAULT_STREAM_MEMBERS, SyntheticSurveySky, read_hats
from ..io import outputs
from ..pipeline.params import DEFAULT_N_NEIGHBORS, GAIA_SOURCES, RecoverParams
from ..pipeline.runner import run_recovery
from .plan import (
    DEFAULT_OVERLAP_DEG,
    DEFAULT_PATCH_LEVEL,
    Patch,
    area_pixels,
    plan_digest,
    plan_patches,
)

log = logging.getLogger(__name__)

PRODUCER = "ray-app survey"
#: Columns every patch keeps from a Parquet/HATS source (plus any that exist of these).
OPTIONAL_COLUMNS = ("parallax_error", "pmra_error", "pmdec_error", "phot_g_mean_mag",
                    "bp_rp", "stream_label", "is_stream")


@dataclass
class SurveyParams:
    """Everything a survey computes from (the CLI's ``ray-app survey`` flags).

    Attributes
    ----------
    out : str
        Local folder of the survey (created; a re-run into it resumes).
    region, healpix, min_abs_b, all_sky
        The area (:func:`ray_app.survey.plan.area_pixels`).
    source : str
        ``synthetic`` (the seeded synthetic sky, with ``inject`` streams and the field
        thinned by ``density_scale``), ``gaia-dr3`` (the archive through the chunk cache), a
        Parquet file, or a HATS-layout folder (``Norder=K/Dir=D/Npix=N``).
    """

    out: str
    region: dict | None = None
    healpix: str | None = None
    min_abs_b: float | None = None
    all_sky: bool = False
    source: str = "synthetic"
    inject: tuple = ()
    density_scale: float = 0.02
    stream_members: int = DEFAULT_STREAM_MEMBERS
    patch_level: int = DEFAULT_PATCH_LEVEL
    overlap_deg: float = DEFAULT_OVERLAP_DEG
    n_neighbors: int = DEFAULT_N_NEIGHBORS
    sigma_threshold: float = DEFAULT_SIGMA_THRESHOLD
    member_probability: float = DEFAULT_MEMBER_PROBABILITY
    orientations: int | None = None
    seed: int = 0
    retries: int = 1
    concurrency: int = 2
    cache: str | None = None
    columns: dict | None = None
    cuts: dict | None = None
    patches: list = field(default_factory=list, repr=False)
    fine: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        from ..data.gaia import QueryCuts

        self._table, self._read_lock = None, threading.Lock()
        self.query_cuts = QueryCuts(**(self.cuts or {}))  # validated: ValueError names it
        self.fine = area_pixels(self.region, self.healpix, self.min_abs_b, self.all_sky)
        self.patches = plan_patches(self.fine, self.patch_level, self.overlap_deg)
        if self.source == "synthetic":
            self.sky = SyntheticSurveySky(self.seed, self.density_scale, tuple(self.inject),
                                          self.stream_members)
        elif self.inject:
            raise ValueError("--inject needs --source synthetic (streams are injected into "
                             "the synthetic sky)")
        if is_uri(self.out) and not self.out.startswith("s3://"):
            raise ValueError(f"--out must be a local folder or s3://bucket/prefix, got "
                             f"{self.out!r}")
        if self.source != "synthetic" and self.source not in GAIA_SOURCES and \
                not is_uri(self.source) and \
                not Path(self.source).exists():
            raise ValueError(f"--source {self.source!r}: not 'synthetic', 'gaia-dr3', or an "
                             "existing Parquet file or HATS folder")
        for name, lo in (("retries", 0), ("concurrency", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"--{name} must be an integer >= {lo}, got {v!r}")
        # each patch's job runs at the per-job sigma that the survey threshold corresponds
        # to: a structure below it could not pass the survey's look-elsewhere correction
        self.job_threshold = job_sigma_for(self.sigma_threshold, len(self.patches))
        # the first patch's parameters are checked now (k, threshold, orientations...), so a
        # bad value is refused before anything is written
        self.recover_params(self.patches[0], None, str(tmp_dir_never()))

    def source_table(self) -> pa.Table:
        """A single-file Parquet source, read (and renamed by ``columns``) once for all the
        patches that cut their cones out of it."""
        from ..data.catalogue import read_catalogue

        with self._read_lock:
            if self._table is None:
                self._table = read_catalogue(self.source, self.columns)[1]
        return self._table

    @property
    def area_deg2(self) -> float:
        return float(sum(p.owned_area_deg2 for p in self.patches))

    def settings(self) -> dict:
        return {"source": self.source, "inject": list(self.inject),
                "density_scale": self.density_scale, "stream_members": self.stream_members,
                "patch_level": self.patch_level, "overlap_deg": self.overlap_deg,
                "nNeighbors": self.n_neighbors, "sigmaThreshold": self.sigma_threshold,
                "memberProbability": self.member_probability,
                "orientations": self.orientations, "seed": self.seed,
                "columns": self.columns, "cuts": self.query_cuts.to_dict(),
                "area": {"region": self.region,
                                                  "healpix": self.healpix,
                                                  "min_abs_b": self.min_abs_b,
                                                  "all_sky": self.all_sky}}

    def digest(self) -> str:
        return plan_digest(self.patches, self.settings())

    def recover_params(self, patch: Patch, input_path: str | None, out_dir: str
                       ) -> RecoverParams:
        """The blind region job of one patch."""
        source = self.source if self.source in GAIA_SOURCES else input_path
        return RecoverParams(stream_key=None, region=patch.region(), input_path=source,
                             n_neighbors=self.n_neighbors,
                             sigma_threshold=round(self.job_threshold, 4), out_dir=out_dir,
                             seed=self.seed, write_ecsv=False, cache=self.cache,
                             member_probability=self.member_probability,
                             orientations=self.orientations, cuts=self.query_cuts,
                             columns=None)


# ---------------------------------------------------------------- one patch (a stage)
def patch_catalogue(params: SurveyParams, patch: Patch, dest: Path) -> tuple[str | None,
                                                                            dict]:
    """Write the patch's stars as a Parquet file at ``dest`` (None for the Gaia archive,
    which the job queries itself) and say where they came from."""
    from ..data.regions import parse_region

    if params.source in GAIA_SOURCES:
        return None, {"kind": "gaia-dr3"}
    from ..data.survey_sky import passes_cuts

    region = parse_region(patch.region())
    if params.source == "synthetic":
        cols = params.sky.stars_in(region, params.query_cuts)
        pq.write_table(pa.table(cols), dest)
        return str(dest), {"kind": "synthetic", "stars": len(cols["ra"])}
    if not is_uri(params.source) and Path(params.source).is_dir():
        table, opened, total = read_hats(params.source, region)
        origin = {"kind": "hats", "partitions_opened": opened, "partitions": total}
    else:  # one Parquet file (read once for every patch): its rows inside the cone
        table = params.source_table()
        origin = {"kind": "parquet"}
    if params.columns and origin["kind"] == "hats":
        table = table.rename_columns([params.columns.get(c, c) for c in table.column_names])
    if table.num_rows:
        keep = region.contains(table["ra"].to_numpy(), table["dec"].to_numpy()) & \
            passes_cuts(table, params.query_cuts)
        table = table.filter(pa.array(keep))
    pq.write_table(table, dest)
    return str(dest), {**origin, "stars": table.num_rows}


def _too_few_stars(error: str) -> bool:
    """Whether a patch's job failed because the patch holds too few stars to search (an
    empty patch, not a failed one)."""
    return "needs at least" in error or "lies inside the region" in error


def run_patch(params: SurveyParams, patch: Patch, engine, out: Path) -> dict:
    """Search one patch (resumable: a patch with a manifest is not searched again)."""
    pdir = out / "patches" / patch.id
    if (pdir / "manifest.json").exists():
        return {"status": "done", "resumed": True}
    record = {"status": "failed", "attempts": 0}
    for attempt in range(1, params.retries + 2):
        record["attempts"] = attempt
        t0 = time.perf_counter()
        tmp = out / "patches" / ".inputs"
        tmp.mkdir(parents=True, exist_ok=True)
        dest = tmp / f"{patch.id}-{os.getpid()}-{threading.get_ident()}.parquet"
        try:
            path, origin = patch_catalogue(params, patch, dest)
            if origin.get("stars") == 0:  # nothing there to search: empty, not failed
                record.update(status="empty", data=origin, error="no star in the patch",
                              seconds=round(time.perf_counter() - t0, 3))
                return record
            summary = run_recovery(params.recover_params(patch, path, str(pdir)), engine)
            record.update(status="done", seconds=round(time.perf_counter() - t0, 3),
                          stars=summary.n_stars, candidates=summary.n_candidates,
                          data=origin, error=None)
            return record
        except CatalogueError as exc:  # the data itself: too few stars to search, say so
            record.update(status="empty" if _too_few_stars(str(exc)) else "failed",
                          error=str(exc), seconds=round(time.perf_counter() - t0, 3))
            return record
        except Exception as exc:  # retried: a transient failure may pass the next time
            record.update(error=f"{type(exc).__name__}: {exc}",
                          seconds=round(time.perf_counter() - t0, 3))
            log.warning("patch %s attempt %d failed: %s", patch.id, attempt, record["error"])
        finally:
            dest.unlink(missing_ok=True)
    return record


# ---------------------------------------------------------------- the campaign
def local_folder(params: SurveyParams) -> Path:
    """Where the survey is computed: ``--out`` itself, or for an ``s3://`` destination a
    staging folder under ``$RAY_APP_HOME/surveys/<plan digest>`` (kept, so a re-run
    resumes there; the finished survey is uploaded)."""
    if is_uri(params.out):
        from ..io.home import local_home

        return local_home() / "surveys" / params.digest()
    return Path(params.out).expanduser().resolve()


def _prepare_out(params: SurveyParams) -> tuple[Path, dict | None]:
    """The survey folder: new or empty, or a previous run of the same survey (resume)."""
    out = local_folder(params)
    state = out / "survey.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the survey")
    if out.exists() and any(out.iterdir()):
        try:
            previous = json.loads(state.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or previous.get("producer") != PRODUCER:
            raise ValueError(f"--out {out} holds files that are not a ray-app survey; "
                             "nothing was changed: give a new or empty folder")
        if previous.get("digest") != params.digest():
            raise ValueError(f"--out {out} holds a survey of other parameters (plan "
                             f"{previous.get('digest')}, this one {params.digest()}); "
                             "nothing was changed: give a new folder to start another")
        return out, previous
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def run_survey(params: SurveyParams, engine, progress=None, service=None,
               poll_s: float = 2.0) -> dict:
    """Search every patch, merge, write.

    With ``service`` (``--via queue``) each patch is a job message (``surveyId`` set) that
    the queue's drivers run like any job; otherwise ``params.concurrency`` patches at a time
    run here on ``engine`` (the shared density pool). ``progress(done, total, patch_id)`` is
    called after each patch.
    """
    from ..engine.metrics import survey_metrics

    out, previous = _prepare_out(params)
    started = time.time()
    state = {"producer": PRODUCER, "version": __version__, "digest": params.digest(),
             "status": "running", "started": started, "parameters": params.settings(),
             "plan": {"area_deg2": round(params.area_deg2, 2), "patches": len(params.patches),
                      "patch_level": params.patch_level, "overlap_deg": params.overlap_deg,
                      "job_sigma_threshold": round(params.job_threshold, 4)},
             "patches": {}}
    outputs.write_json(out / "survey.json", state)  # marks the folder as ours at once
    metrics = survey_metrics()
    lock = threading.Lock()
    done = 0

    def finished(patch_id: str, record: dict) -> None:
        """Record a patch's end: survey.json rewritten, the metric, the progress."""
        nonlocal done
        with lock:
            state["patches"][patch_id] = record
            done += 1
            outputs.write_json(out / "survey.json", state)
            if metrics:
                metrics.patches_done.inc(tags={"status": record["status"]})
            if progress:
                progress(done, len(params.patches), patch_id)

    def one(patch):
        finished(patch.id, {**patch.to_dict(), **run_patch(params, patch, engine, out)})

    t0 = time.perf_counter()
    if service is None:
        with ThreadPoolExecutor(max_workers=params.concurrency) as pool:
            list(pool.map(one, params.patches))
    else:
        state["via"] = {"mode": "queue", "service": service.mode,
                        "survey_id": survey_id(params)}
        _via_queue(params, service, out, state, finished, poll_s)
    search_s = time.perf_counter() - t0
    shutil.rmtree(out / "patches" / ".inputs", ignore_errors=True)
    candidates, members = merge_patches(params, out, state)
    failed = [p for p in params.patches if state["patches"][p.id]["status"] == "failed"]
    computed = [r for r in state["patches"].values() if r["status"] == "done"
                and not r.get("resumed")]
    stars = sum(r.get("stars", 0) for r in computed)
    state.update(
        status="completed" if not failed else "completed with failed patches",
        finished=time.time(),
        totals={"patches": len(params.patches),
                "done": sum(r["status"] == "done" for r in state["patches"].values()),
                "empty": sum(r["status"] == "empty" for r in state["patches"].values()),
                "failed": len(failed), "resumed": sum(bool(r.get("resumed"))
                                                      for r in state["patches"].values()),
                "candidates": len(candidates)},
        not_searched={"patches": [p.id for p in failed],
                      "area_deg2": round(sum(p.owned_area_deg2 for p in failed), 2)},
        throughput={"search_seconds": round(search_s, 3), "stars_searched": stars,
                    "stars_per_second": round(stars / search_s, 1) if stars else None,
                    "engine": getattr(engine, "name", str(engine))})
    _write_final(params, out, state, candidates, members)
    if is_uri(params.out):  # the finished survey, patches included, manifest.json last
        from ..io.results import upload_folder

        state["uploaded"] = {"to": params.out, "files": len(upload_folder(out, params.out))}
    return state


# ---------------------------------------------------------------- through the job queue
def survey_id(params: SurveyParams) -> str:
    """The campaign's id, from its plan: the same survey always gets the same id."""
    return f"survey-{params.digest()}"


def _via_queue(params: SurveyParams, service, out: Path, state: dict, finished,
               poll_s: float) -> None:
    """Submit one region job per unfinished patch (idempotent: a patch whose job already
    exists is not submitted again), wait for each to end, fetch its outputs;
    ``finished(patch_id, record)`` records each patch's end."""
    from ..io.status import COMPLETED, FAILED
    from ..service import submit

    sid = survey_id(params)
    waiting = {}
    for patch in params.patches:
        pdir = out / "patches" / patch.id
        if (pdir / "manifest.json").exists():
            finished(patch.id, {**patch.to_dict(), "status": "done", "resumed": True})
            continue
        job_id = f"{sid}-{patch.id}"
        if service.status.get(job_id) is None:  # not yet submitted (or a fresh store)
            src = params.source
            origin = {"kind": params.source}
            if params.source not in GAIA_SOURCES:
                tmp = out / "patches" / ".inputs"
                tmp.mkdir(parents=True, exist_ok=True)
                local, origin = patch_catalogue(params, patch, tmp / f"{patch.id}.parquet")
                if origin.get("stars") == 0:  # nothing to search: no job for it
                    finished(patch.id, {**patch.to_dict(), "status": "empty", "data": origin,
                                        "error": "no star in the patch"})
                    continue
                src = service.results.put_input(f"{sid}/{patch.id}.parquet", local)
            message = {"jobId": job_id, "region": patch.region(), "source": src,
                       "nNeighbors": params.n_neighbors,
                       "sigmaThreshold": round(params.job_threshold, 4),
                       "seed": params.seed, "surveyId": sid,
                       "memberProbability": params.member_probability}
            if params.orientations is not None:
                message["orientations"] = params.orientations
            submit(service, message)
            state["patches"][patch.id] = {**patch.to_dict(), "status": "queued",
                                          "job_id": job_id, "data": origin}
        else:
            state["patches"][patch.id] = {**patch.to_dict(), "status": "queued",
                                          "job_id": job_id}
        waiting[patch.id] = (patch, job_id, time.perf_counter())
    outputs.write_json(out / "survey.json", state)
    while waiting:
        for pid, (_patch, job_id, t0) in list(waiting.items()):
            rec = service.status.get(job_id) or {}
            if rec.get("status") not in (COMPLETED, FAILED):
                continue
            entry = dict(state["patches"][pid])
            if rec["status"] == COMPLETED:
                staging = out / "patches" / f".{pid}.download"
                shutil.rmtree(staging, ignore_errors=True)
                service.results.download(job_id, staging, prefix=rec.get("resultPrefix"))
                os.replace(staging, out / "patches" / pid)
                meta = json.loads((out / "patches" / pid / "metadata.json").read_text())
                entry.update(status="done", attempts=rec.get("attempts"),
                             seconds=round(time.perf_counter() - t0, 3),
                             stars=meta["counts"]["stars"],
                             candidates=meta["counts"]["candidates"], error=None)
            else:
                err = rec.get("error", "")
                entry.update(status="empty" if _too_few_stars(err) else "failed",
                             attempts=rec.get("attempts"), error=err)
            del waiting[pid]
            finished(pid, entry)
        if waiting:
            time.sleep(poll_s)


def tmp_dir_never() -> Path:
    """A folder name for a parameter check that never writes (RecoverParams needs one)."""
    return Path(tempfile.gettempdir()) / "ray-app-survey-check-never-made"


# ---------------------------------------------------------------- merge and outputs
def _patch_candidates(out: Path, pid: str) -> list[dict]:
    pdir = out / "patches" / pid
    cj = json.loads((pdir / "candidates.json").read_text())
    if not cj:
        return []
    npz = np.load(pdir / "candidate_members.npz")
    names = pq.read_schema(pdir / "stars.parquet").names
    cols = ["source_id", "ra", "dec", "pmra", "pmdec", "parallax"] + [
        c for c in ("stream_label",) if c in names]
    stars = pq.read_table(pdir / "stars.parquet", columns=cols)
    sid = stars["source_id"].to_numpy()
    order = np.argsort(sid)
    found = []
    for c in cj:
        m = npz[f"candidate_{c['index']}"]
        p = npz[f"probability_{c['index']}"]
        rows = order[np.searchsorted(sid[order], m)]
        pts = c.get("track") or []
        track = {k: np.array([q[k] for q in pts if k in q]) for k in ("ra", "dec", "pmra",
                                                                      "pmdec")}
        if len(track["ra"]) == 0:  # no fitted track: the members stand for it
            take = rows[:: max(1, len(rows) // 50)]
            track = {k: stars[k].to_numpy()[take] for k in ("ra", "dec", "pmra", "pmdec")}
        found.append({"patch": pid, "index": c["index"], "sigma": c["significance"],
                      "members": m, "probability": p,
                      "stars": {k: stars[k].to_numpy()[rows] for k in cols}, "track": track})
    return found


def merge_patches(params: SurveyParams, out: Path, state: dict) -> tuple[list[dict], dict]:
    """Survey candidates: the patches' candidates merged (shared members, coinciding tracks),
    significance corrected for the patches searched, cross-matched with the registry."""
    found = []
    for p in params.patches:
        if state["patches"][p.id]["status"] == "done":
            found += _patch_candidates(out, p.id)
    n_patches = max(len(params.patches), 1)
    groups = merge_groups([f["members"] for f in found], [f["track"] for f in found])
    cands, member_rows = [], {k: [] for k in ("source_id", "candidate", "probability", "ra",
                                              "dec", "pmra", "pmdec", "parallax",
                                              "truth_stream_label")}
    for gid, g in enumerate(sorted(groups, key=lambda g: -max(found[i]["sigma"] for i in g))):
        parts = [found[i] for i in g]
        sid = np.concatenate([f["members"] for f in parts])
        prob = np.concatenate([f["probability"] for f in parts])
        stars = {k: np.concatenate([f["stars"][k] for f in parts]) for k in parts[0]["stars"]}
        order = np.lexsort((-prob, sid))  # per star: its highest probability
        first = np.ones(len(sid), bool)
        first[1:] = sid[order][1:] != sid[order][:-1]
        keep = order[first]
        track = {k: np.concatenate([f["track"][k] for f in parts]) for k in parts[0]["track"]}
        match = match_track(track["ra"], track["dec"], track["pmra"], track["pmdec"])
        ra, dec = stars["ra"][keep], stars["dec"][keep]
        try:
            pole = fit_great_circle_pole(ra, dec)
        except ValueError:
            pole = (float("nan"), float("nan"))
        job_sigma = max(f["sigma"] for f in parts)
        sub = np.linspace(0, len(ra) - 1, min(len(ra), 400)).astype(int)
        cands.append({
            "id": gid, "significance": float(survey_sigma(job_sigma, n_patches)),
            "job_significance": float(job_sigma), "n_members": int(len(keep)),
            "ra_median": float(np.median(ra)), "dec_median": float(np.median(dec)),
            "pmra_median": float(np.median(stars["pmra"][keep])),
            "pmdec_median": float(np.median(stars["pmdec"][keep])),
            # the tracks span each part's members without strays beyond the stream's ends
            # (a part whose membership fit failed has none: its members' extent then)
            "length_deg": great_circle_extent(track["ra"], track["dec"])
            if len(track["ra"]) >= 2 else great_circle_extent(ra[sub], dec[sub]),
            "pole_ra": pole[0], "pole_dec": pole[1],
            "track_ra": [float(x) for x in track["ra"]],
            "track_dec": [float(x) for x in track["dec"]],
            "match_key": match["key"] if match else None,
            "match_name": match["name"] if match else None,
            "match_separation_deg": match["separation_deg"] if match else None,
            "match_also": [o["key"] for o in match["also"]] if match else [],
            "patches": sorted({f["patch"] for f in parts}),
            "patch_candidates": [f"{f['patch']}#{f['index']}" for f in parts]})
        member_rows["source_id"].append(sid[keep])
        member_rows["candidate"].append(np.full(len(keep), gid))
        member_rows["probability"].append(prob[keep])
        for k in ("ra", "dec", "pmra", "pmdec", "parallax"):
            member_rows[k].append(stars[k][keep])
        member_rows["truth_stream_label"].append(
            stars["stream_label"][keep] if "stream_label" in stars
            else np.full(len(keep), -2))
    members = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in member_rows.items()}
    if "stream_label" not in (found[0]["stars"] if found else {}):
        members.pop("truth_stream_label")
    return cands, members


def _write_final(params: SurveyParams, out: Path, state: dict, cands: list[dict],
                 members: dict) -> None:
    """candidates.parquet, members.parquet, map.png, survey.json, then manifest.json."""
    from ..io.plots import survey_map

    schema = pa.schema([("id", pa.int64()), ("significance", pa.float64()),
                        ("job_significance", pa.float64()), ("n_members", pa.int64()),
                        ("ra_median", pa.float64()), ("dec_median", pa.float64()),
                        ("pmra_median", pa.float64()), ("pmdec_median", pa.float64()),
                        ("length_deg", pa.float64()), ("pole_ra", pa.float64()),
                        ("pole_dec", pa.float64()), ("track_ra", pa.list_(pa.float64())),
                        ("track_dec", pa.list_(pa.float64())), ("match_key", pa.string()),
                        ("match_name", pa.string()),
                        ("match_separation_deg", pa.float64()),
                        ("match_also", pa.list_(pa.string())),
                        ("patches", pa.list_(pa.string())),
                        ("patch_candidates", pa.list_(pa.string()))])
    table = pa.Table.from_pylist(cands, schema=schema)
    _atomic(out / "candidates.parquet", lambda p: pq.write_table(table, p))
    _atomic(out / "members.parquet", lambda p: pq.write_table(pa.table(members), p))
    from .plan import _fine_centres

    fra, fdec = _fine_centres()
    failed = [p for p in params.patches if state["patches"][p.id]["status"] == "failed"]
    failed_px = np.array([f for p in failed for f in p.owned], dtype=np.int64)
    _atomic(out / "map.png", lambda p: survey_map(
        p, searched=(fra[params.fine], fdec[params.fine]),
        failed=(fra[failed_px], fdec[failed_px]), candidates=cands,
        threshold=params.sigma_threshold,
        title=f"ray-app survey | {params.source} | {params.area_deg2:.0f} deg^2, "
              f"{len(params.patches)} patches | sigma >= {params.sigma_threshold:g} "
              f"(corrected for the patches)"))
    state["outputs"] = ["candidates.parquet", "members.parquet", "map.png", "survey.json"]
    _atomic(out / "survey.json", lambda p: outputs.write_json(p, state))
    manifest = {"producer": outputs.PRODUCER, "kind": "survey",
                "files": [{"name": n, "size": (out / n).stat().st_size,
                           "sha256": outputs.sha256_file(out / n)} for n in state["outputs"]],
                "patches": sorted(state["patches"])}
    _atomic(out / "manifest.json", lambda p: outputs.write_json(p, manifest))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
