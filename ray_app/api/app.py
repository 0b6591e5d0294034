"""The HTTP API: a FastAPI application, served by Ray Serve (``deployment``) on the cluster and
by ``ray-app serve`` locally. Plain functions over the job service: the same queue, status
and result stores as ``ray-app submit``/``status``/``results``.

Every route but ``/``, ``/health``, ``/docs`` and ``/openapi.json`` needs
``Authorization: Bearer <key>`` (``ray-app apikey create NAME``); a key's name is the
``submittedBy`` of the jobs it submits, and a user reads and cancels only their own jobs
unless the key is an admin's. Each key is rate limited (a token bucket per replica).

Errors are JSON ``{"detail": "<one line naming the field, the value and what is allowed>"}``
with 401, 403, 404, 409, 422, 429 (with ``Retry-After``) or 503 (a store or the queue does not
answer: the line says which and what to check); never a 500 for bad input.
"""

import json
import math
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from ..core.errors import ConfigurationError
from ..data.registry import all_streams, get_stream
from ..io.aws import unavailable_line
from ..io.ids import new_job_id, validate_job_id
from ..io.results import MANIFEST
from ..io.status import (
    CANCEL_DONE,
    COMPLETED,
    MAX_LIST,
    PENDING,
    RUNNING,
    STATUSES,
    JobExists,
    validate_listing,
)
from ..service.jobspec import json_schema
from ..service.wiring import Service, enqueue, prepare, service_from_env
from .keys import ApiKeys, ApiUser

STATIC = Path(__file__).with_name("static")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value!r}")
    return value


class Settings:
    """The API's knobs (environment): RAY_APP_API_RATE (requests per second per key, 5),
    RAY_APP_API_BURST (20), RAY_APP_MAX_QUEUED_PER_USER (PENDING jobs per submitter at a
    POST, 5; 0: no limit), RAY_APP_API_LINK_S (presigned link lifetime, 3600)."""

    def __init__(self, rate: float | None = None, burst: float | None = None,
                 max_queued: int | None = None, link_s: int | None = None):
        self.rate = _env_number("RAY_APP_API_RATE", 5) if rate is None else rate
        self.burst = _env_number("RAY_APP_API_BURST", 20) if burst is None else burst
        self.max_queued = int(_env_number("RAY_APP_MAX_QUEUED_PER_USER", 5)
                              if max_queued is None else max_queued)
        self.link_s = int(_env_number("RAY_APP_API_LINK_S", 3600) if link_s is None else link_s)


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers or {}


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, max(burst, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when the request may go ahead, else seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate


def job_view(rec: dict) -> dict:
    """A status record as the API shows it."""
    out = {k: v for k, v in rec.items() if k not in ("leaseExpires", "ttl")}
    out["url"] = f"/jobs/{rec['jobId']}"
    if rec.get("status") == COMPLETED:
        out["resultsUrl"] = f"/jobs/{rec['jobId']}/results"
    return out


def catalog_entry(key: str) -> dict:
    """A registry stream with its track nodes and footprint edges (RA/Dec, degrees)."""
    import numpy as np

    from ..core.frames import frame_to_icrs

    s = get_stream(key)
    t = s.track_frame

    def clean(a):
        return [None if not np.isfinite(v) else round(float(v), 5) for v in a]

    ra, dec = frame_to_icrs(s.frame, t["phi1"], t["phi2"])[:2]
    hw = s.phi2_half_width
    edges = {}
    for side, sign in (("upper", 1), ("lower", -1)):
        era, edec = frame_to_icrs(s.frame, t["phi1"], t["phi2"] + sign * hw)[:2]
        edges[side] = [[round(float(a), 5), round(float(b), 5)] for a, b in zip(era, edec,
                                                                               strict=True)]
    return {**s.to_dict(),
            "track": {"ra": clean(ra), "dec": clean(dec), "phi1": clean(t["phi1"]),
                      "phi2": clean(t["phi2"]), "distance_kpc": clean(t["distance_kpc"]),
                      "pm_phi1_cosphi2": clean(t["pm_phi1_cosphi2"]),
                      "pm_phi2": clean(t["pm_phi2"])},
            "footprint": {"half_width_deg": hw, "area_deg2": round(s.footprint.area_deg2, 2),
                          "edges": edges}}


def create_app(service: Service | None = None, keys: ApiKeys | None = None,
               settings: Settings | None = None) -> FastAPI:
    """The API over ``service`` (default: :func:`service_from_env`, built at the first
    request so that a Serve replica reads its own environment)."""
    app = FastAPI(title="ray-app stream search API", version="1",
                  description="Submit and follow stellar-stream searches; see the README's "
                              "'HTTP API' section. Authenticate with `Authorization: Bearer "
                              "<key>` (`ray-app apikey create NAME`).")
    state: dict[str, Any] = {"service": service, "keys": keys, "settings": settings}
    lock = threading.RLock()

    def lazy(name: str, make):
        """``state[name]``, made by ``make()`` at first use (a Serve replica builds its
        stores from its own environment, at its first request)."""
        def get():
            with lock:
                if state.get(name) is None:
                    state[name] = make()
                return state[name]
        return get

    svc = lazy("service", service_from_env)
    conf = lazy("settings", Settings)
    key_store = lazy("keys", ApiKeys)
    limiter = lazy("limiter", lambda: RateLimiter(conf().rate, conf().burst))

    @app.exception_handler(ApiError)
    def _api_error(_request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    def _validation(_request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"detail": "the body is not valid JSON: "
                                 f"{first.get('ctx', {}).get('error', 'decode error')}"},
                                status_code=422)
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        value = first.get("input")
        line = f"{where}: {first.get('msg', 'invalid')}"
        if value is not None and not isinstance(value, dict):
            line += f", got {str(value)[:80]!r}"
        return JSONResponse({"detail": line}, status_code=422)

    def _unavailable(_request: Request, exc: Exception):
        line = unavailable_line(exc) or f"a service is unavailable: {type(exc).__name__}: {exc}"
        return JSONResponse({"detail": line}, status_code=503, headers={"Retry-After": "30"})

    import sqlite3

    from botocore.exceptions import BotoCoreError, ClientError

    for kind in (sqlite3.Error, BotoCoreError, ClientError):  # the stores, not the request
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(Exception)
    def _bug(_request: Request, exc: Exception):  # a defect of ours: JSON too, and logged
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): please "
                                       "report it; the server log has the traceback"},
                            status_code=500)

    @app.exception_handler(ConfigurationError)
    def _operator(_request: Request, exc: ConfigurationError):
        return JSONResponse({"detail": f"server configuration: {exc}"}, status_code=503)

    def user(request: Request) -> ApiUser:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' (an "
                                "operator creates one with `ray-app apikey create NAME`)",
                           {"WWW-Authenticate": "Bearer"})
        who = key_store().lookup(token.strip())
        if who is None:
            raise ApiError(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
        wait = limiter().take(who.name)
        if wait > 0:
            raise ApiError(429, f"rate limit: at most {conf().rate:g} requests a second per "
                                f"key (burst {conf().burst:g}); retry in {wait:.1f} s",
                           {"Retry-After": str(math.ceil(wait))})
        return who

    User = Annotated[ApiUser, Depends(user)]

    def own_job(job_id: str, who: ApiUser) -> dict:
        try:
            validate_job_id(job_id)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        rec = svc().status.get(job_id)
        if rec is None:
            raise ApiError(404, f"job {job_id!r} not found")
        owner = (rec.get("params") or {}).get("submittedBy")
        if not who.admin and owner != who.name:
            raise ApiError(403, f"job {job_id!r} belongs to another user")
        return rec

    def completed_manifest(job_id: str, who: ApiUser) -> dict:
        """The manifest of one of the caller's COMPLETED jobs (409 before, 404 if gone)."""
        rec = own_job(job_id, who)
        if rec["status"] != COMPLETED:
            raise ApiError(409, f"job {job_id!r} is {rec['status']}: no results yet")
        manifest = svc().results.manifest(job_id)
        if manifest is None:
            raise ApiError(404, f"job {job_id!r} is COMPLETED but its manifest is missing "
                                "from the result store")
        return manifest

    # ------------------------------------------------------------------ jobs
    @app.post("/jobs", status_code=202, tags=["jobs"],
              summary="Submit a job (the job message; jobId optional)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": json_schema(job_id_required=False)}}}},
              responses={200: {"description": "the same job was already submitted"},
                         409: {"description": "the jobId exists with another body"},
                         422: {"description": "invalid body"},
                         429: {"description": "too many queued jobs or requests"}})
    def post_job(who: User, body: Annotated[Any, Body()] = None):
        if isinstance(body, bytes | str):  # sent without Content-Type: application/json
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(422, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(422, f"the body must be a JSON object (the job message), got "
                                f"{type(body).__name__}")
        message = dict(body)
        message.setdefault("jobId", new_job_id())
        given = message.get("submittedBy")
        if given is None:
            message["submittedBy"] = who.name
        elif given != who.name and not who.admin:
            raise ApiError(403, f"submittedBy {given!r} is not this key's user {who.name!r} "
                                "(only an admin's key submits for others)")
        service = svc()
        try:
            spec = prepare(service, message)
        except ValueError as exc:  # InvalidJob included: field, value and what is allowed
            raise ApiError(422, str(exc)) from None

        def existing():
            rec = service.status.get(spec.job_id)
            if rec is None:
                return None
            if rec.get("params") == spec.to_message():
                return JSONResponse(job_view(rec), status_code=200)
            raise ApiError(409, f"jobId {spec.job_id!r} exists with a different body; "
                                "choose another jobId (or omit it)")

        done = existing()
        if done is not None:
            return done
        limit = conf().max_queued
        if limit:
            queued, _ = service.status.list_page(status=PENDING, limit=min(limit, MAX_LIST),
                                                 submitted_by=spec.submitted_by)
            if len(queued) >= limit:
                raise ApiError(429, f"{spec.submitted_by!r} already has {len(queued)} queued "
                                    f"jobs (at most {limit}); wait for one to start",
                               {"Retry-After": "30"})
        try:
            enqueue(service, spec)
        except JobExists:  # an identical POST won the race: same answer as a retry
            done = existing()
            if done is not None:
                return done
            raise
        url = f"/jobs/{spec.job_id}"
        return JSONResponse({"jobId": spec.job_id, "status": PENDING, "url": url},
                            status_code=202, headers={"Location": url})

    @app.get("/jobs", tags=["jobs"], summary="Jobs, newest first, a page at a time")
    def list_jobs(who: User,
                  status: Annotated[str | None, Query(
                      description=f"one of {', '.join(STATUSES)}")] = None,
                  submittedBy: Annotated[str | None, Query(  # named as the message field
                      description="only this user's jobs (default: yours; any for an admin)"
                  )] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
                  cursor: Annotated[str | None, Query(
                      description="the cursor of the previous page")] = None):
        if not who.admin:
            if submittedBy not in (None, who.name):
                raise ApiError(403, f"submittedBy {submittedBy!r}: a user lists only their "
                                    "own jobs")
            submittedBy = who.name
        try:
            validate_listing(status, limit, submittedBy)
            rows, nxt = svc().status.list_page(status=status, limit=limit, cursor=cursor,
                                               submitted_by=submittedBy)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return {"jobs": [job_view(r) for r in rows], "cursor": nxt}

    @app.get("/jobs/{job_id}", tags=["jobs"],
             summary="One job: status, progress, stage, timings, error")
    def get_job(who: User, job_id: str):
        return job_view(own_job(job_id, who))

    @app.delete("/jobs/{job_id}", tags=["jobs"],
                summary="Cancel: PENDING -> CANCELLED; RUNNING -> stopped at the next stage",
                responses={202: {"description": "cancel requested of a RUNNING job"},
                           409: {"description": "the job is already final"}})
    def cancel_job(who: User, job_id: str):
        rec = own_job(job_id, who)
        outcome = svc().status.cancel(job_id)
        if outcome is None:
            rec = svc().status.get(job_id) or rec
            raise ApiError(409, f"job {job_id!r} is {rec['status']}: only PENDING and "
                                "RUNNING jobs can be cancelled")
        rec = svc().status.get(job_id) or rec
        return JSONResponse(job_view(rec), status_code=200 if outcome == CANCEL_DONE else 202)

    @app.get("/jobs/{job_id}/results", tags=["jobs"],
             summary="A COMPLETED job's manifest with a link to each file")
    def results(who: User, job_id: str):
        manifest = completed_manifest(job_id, who)
        service = svc()
        names = [f["name"] for f in manifest.get("files", [])] + [MANIFEST]
        sizes = {f["name"]: f.get("size") for f in manifest.get("files", [])}
        if hasattr(service.results, "presign"):
            links = {n: service.results.presign(job_id, n, conf().link_s) for n in names}
        else:
            links = {n: f"/jobs/{job_id}/files/{n}" for n in names}
        return {"jobId": job_id, "manifest": manifest,
                "files": [{"name": n, "bytes": sizes.get(n), "url": links[n]} for n in names]}

    @app.get("/jobs/{job_id}/files/{name}", tags=["jobs"],
             summary="One result file (local mode; AWS mode links to S3 instead)")
    def result_file(who: User, job_id: str, name: str):
        manifest = completed_manifest(job_id, who)
        service = svc()
        if hasattr(service.results, "presign"):
            raise ApiError(404, "files are served from S3: use the links of "
                                f"/jobs/{job_id}/results")
        allowed = {f["name"] for f in manifest.get("files", [])} | {MANIFEST}
        if name not in allowed:  # only the manifest's files: no path escapes the job folder
            raise ApiError(404, f"job {job_id!r} has no file {name!r}")
        return FileResponse(Path(service.results.prefix(job_id)) / name)

    # ------------------------------------------------------------------ catalogue, queue
    @app.get("/catalog", tags=["catalogue"], summary="Known streams (the registry)")
    def catalog(who: User):
        return {"streams": [s.to_dict() for s in all_streams()]}

    @app.get("/catalog/{key}", tags=["catalogue"], summary="One stream: track and footprint")
    def catalog_key(who: User, key: str):
        try:
            return catalog_entry(key)
        except ValueError as exc:
            raise ApiError(404, str(exc)) from None

    @app.get("/queue", tags=["service"],
             summary="Queued, in flight and dead-lettered messages; jobs per user")
    def queue(who: User):
        service = svc()
        out = {"queue": service.queue.depth(), "maxQueuedPerUser": conf().max_queued,
               "truncated": False}
        for st in (PENDING, RUNNING):
            rows, more = service.status.list_page(status=st, limit=MAX_LIST)
            counts = Counter((r.get("params") or {}).get("submittedBy") or "-" for r in rows)
            out[f"{st.lower()}Jobs"] = len(rows)
            # other users' names are an admin's to see; a user sees their own count
            out[f"{st.lower()}PerUser"] = dict(counts) if who.admin else {
                who.name: counts.get(who.name, 0)}
            out["truncated"] = out["truncated"] or more is not None
        return out

    @app.get("/health", tags=["service"], summary="Whether the stores answer (no key needed)")
    def health():
        checks, ok = {}, True
        try:
            service = svc()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "checks": {
                "service": unavailable_line(exc) or f"{type(exc).__name__}: {exc}"}},
                status_code=503)
        for name, probe in (("status", lambda: service.status.list_page(limit=1)),
                            ("queue", service.queue.depth)):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:
                ok = False
                checks[name] = unavailable_line(exc) or f"{type(exc).__name__}: {exc}"[:300]
        return JSONResponse({"status": "ok" if ok else "unavailable", "mode": service.mode,
                             "checks": checks}, status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    return app

