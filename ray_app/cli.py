"""The ``ray-app`` command.

Exit codes: 0 success; 1 the job ran and failed (``status`` of a FAILED job too); 2 bad input
(one line naming the field, the value and what is allowed; nothing is written or recorded);
3 a service is unavailable (AWS endpoint, credentials, the Gaia archive: one line saying what
failed, what was tried and what to do); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .core.errors import ConfigurationError
from .core.membership import DEFAULT_MEMBER_PROBABILITY
from .core.significance import DEFAULT_SIGMA_THRESHOLD
from .io.status import FINAL, MAX_LIST, STATUSES

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


def _number(text: str):
    """Parse an int when the text is one, else a float; keep the text otherwise.

    So ``--sigma-threshold 3`` reaches validation as 3 (accepted as 3.0) and
    ``--n-neighbors 3.5`` as a float (refused with a clear message), never silently rounded.
    """
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


class _Progress:
    """A job's progress: a tqdm bar on a terminal; one plain line per stage otherwise (no
    carriage returns in logs or pipes)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.stage = None
        self.bar = None
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def _bar(self):
        if self.bar is None and self.tty:  # made at the first stage, after Ray's start-up
            from tqdm import tqdm

            self.bar = tqdm(total=100, file=self.stream, dynamic_ncols=True, leave=True,
                            bar_format="{desc:<11}{percentage:3.0f}%|{bar}| [{elapsed}]")
        return self.bar

    def note(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, pct: int, stage: str) -> None:
        if self._bar() is not None:
            if stage != self.stage:
                self.bar.set_description_str(stage)
            self.bar.update(max(pct - self.bar.n, 0))
        elif stage != self.stage:
            self.note(f"[{pct:3d}%] {stage}")
        self.stage = stage

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _region_arg(text):
    """``--region``: JSON text or @file.json."""
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--region must be JSON (or @file.json), got {text[:80]!r}: {exc}") \
            from None


def _at_least_one(flag: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")


def cmd_recover(args) -> int:
    from .io.home import local_home
    from .io.ids import new_job_id, validate_job_id
    from .io.status import SqliteStatusStore
    from .pipeline.params import RecoverParams

    # every option is checked before a job is recorded or any work starts
    _at_least_one("--num-cpus", args.num_cpus)
    _at_least_one("--max-actors", args.max_actors)
    job_id = validate_job_id(args.job_id) if args.job_id is not None else new_job_id()
    region = _region_arg(args.region)
    if args.stream_key is None and region is None:
        args.stream_key = "gd-1"
    params = RecoverParams(stream_key=args.stream_key, n_neighbors=args.n_neighbors,
                           sigma_threshold=args.sigma_threshold, input_path=args.input,
                           region=region, cache=args.cache,
                           out_dir=args.out or f"results/{(args.stream_key or 'region').lower()}",
                           overwrite=args.overwrite,
                           seed=args.seed, write_ecsv=not args.no_ecsv,
                           n_background=args.n_background, n_stream=args.n_stream,
                           shards=args.shards, columns=args.columns,
                           member_probability=args.member_probability,
                           photometry=args.photometry, orientations=args.orientations)
    from .engine.engines import default_engine
    from .pipeline.runner import run_recovery

    printer = _Progress()
    if args.engine == "ray":  # Ray takes ~10 s to start: say so instead of a silent wait
        printer.note("starting a local Ray instance (about 10 s; --engine in-process runs "
                     "without Ray)...")
    engine = default_engine(args.engine, **({"num_cpus": args.num_cpus,
                                             "max_actors": args.max_actors,
                                             "log_to_driver": False}
                                            if args.engine == "ray" else {}))
    status = SqliteStatusStore(local_home() / "status.db")  # embedded local mode
    try:
        engine.check_k(params.n_neighbors)  # a k no shard plan serves: refused, not recorded
        status.claim(job_id, "local-cli", lease_s=365 * 86400,
                     params={"streamKey": params.stream.key, "nNeighbors": params.n_neighbors,
                             "sigmaThreshold": params.sigma_threshold, "source":
                             args.input or "synthetic"})
    except BaseException:
        engine.close()
        printer.close()
        raise

    def progress(pct: int, stage: str) -> None:
        printer(pct, stage)
        status.heartbeat(job_id, "local-cli", 365 * 86400, pct, stage)

    try:
        summary = run_recovery(params, engine, progress=progress)
    except BaseException as exc:
        from .io.status import INPUT, OPERATOR, TRANSIENT

        kind = (INPUT if isinstance(exc, ValueError) else OPERATOR
                if isinstance(exc, ConfigurationError) else TRANSIENT)
        status.fail(job_id, f"{type(exc).__name__}: {exc}", driver_id="local-cli", kind=kind)
        raise
    finally:
        printer.close()
        engine.close()
    status.complete(job_id, "local-cli", str(summary.out_dir))
    print(f"job {job_id}: {summary.n_stars} stars, {summary.n_candidates} candidate(s) at "
          f"sigma >= {params.sigma_threshold:g}; outputs in {summary.out_dir}/")
    for c in summary.candidates[:10]:
        match = c.get("match")
        named = (f"matches {match['name']} ({match['key']}, {match['separation_deg']:.2f} deg"
                 + (f", {match['pm_separation_mas_yr']:.2f} mas/yr" if
                    match.get("pm_separation_mas_yr") is not None else "") + ")"
                 + "".join(f"; also on {o['name']} ({o['key']})" for o in
                           match.get("also", [])[:3])
                 if match else "no registry match")
        print(f"  #{c['index']}: sigma={c['significance']:.2f} members={c['n_members']} "
              f"(core {c['n_core']}) length={c['length_deg']:.1f} deg "
              f"width={c['width_deg'] or 0:.2f} deg; {named}")
    if not summary.candidates:
        top = summary.metadata["significance"].get("max_sigma")
        print(f"  no candidate; the most significant structure reached sigma "
              f"{top:.2f} (threshold {params.sigma_threshold:g})")
    truth = summary.metadata.get("truth")
    if truth:
        for t in truth:
            print(f"  injected truth vs candidate #{t['index']}: precision "
                  f"{t['precision']:.2f}, recall {t['recall']:.2f} "
                  f"({t['injected']} injected stars kept)")
    return 0


def _service(args):
    from .service import service_from_env

    return service_from_env(getattr(args, "queue_url", None), getattr(args, "table", None),
                            getattr(args, "bucket", None))


#: ``submit`` flags (argparse dest) and the message fields they set, as given.
_SUBMIT_FIELDS = (("input", "source"), ("shards", "shards"), ("submitted_by", "submittedBy"),
                  ("seed", "seed"), ("priority", "priority"), ("n_background", "nBackground"),
                  ("n_stream", "nStream"), ("cache", "cache"),
                  ("orientations", "orientations"))


def cmd_submit(args) -> int:
    from .io.ids import new_job_id
    from .service import submit

    message = {"jobId": args.job_id if args.job_id is not None else new_job_id(),
               "nNeighbors": args.n_neighbors, "sigmaThreshold": args.sigma_threshold}
    region = _region_arg(args.region)
    if region is not None:
        message["region"] = region
    if args.stream_key is not None:
        message["streamKey"] = args.stream_key
    if args.columns:
        from .data.catalogue import parse_columns_map

        message["columns"] = parse_columns_map(args.columns)
    for attr, name in _SUBMIT_FIELDS:  # flags that pass through as message fields
        value = getattr(args, attr)
        if value is not None and value != "":
            message[name] = value
    if args.member_probability != DEFAULT_MEMBER_PROBABILITY:
        message["memberProbability"] = args.member_probability
    if args.photometry is not None:
        from .data.catalogue import parse_photometry

        phot = parse_photometry(args.photometry)
        message["photometry"] = "none" if phot.get("off") else phot
    spec = submit(_service(args), message)
    print(spec.job_id)
    return 0


def _bar(pct: int) -> str:
    return "#" * (int(pct) // 5)


def cmd_status(args) -> int:
    svc = _service(args)
    while True:
        rec = svc.status.get(args.job_id)
        if rec is None:
            raise ValueError(f"job {args.job_id!r} not found in the {svc.mode} status store")
        if args.json:
            print(json.dumps(rec, indent=2, default=str))
        else:
            line = (f"{rec['jobId']}: {rec['status']:<9} [{_bar(rec.get('progress', 0)):<20}] "
                    f"{rec.get('progress', 0):3d}% {rec.get('stage', '')}")
            end = "\n" if (not args.watch or rec["status"] in FINAL) else ""
            sys.stdout.write(("\r" if args.watch else "") + line + end)
            sys.stdout.flush()
            if rec["status"] in FINAL or not args.watch:
                for key in ("attempts", "driverId", "createdAt", "startedAt", "finishedAt",
                            "resultPrefix", "error"):
                    if key in rec:
                        print(f"  {key}: {rec[key]}")
        if not args.watch or rec["status"] in FINAL:
            return 0 if rec["status"] != "FAILED" else 1
        time.sleep(args.interval)


def cmd_jobs(args) -> int:
    from .io.status import validate_listing

    validate_listing(args.status, args.limit, args.submitted_by)  # before any service call
    svc = _service(args)
    rows, cursor = svc.status.list_page(status=args.status, limit=args.limit,
                                        cursor=args.cursor, submitted_by=args.submitted_by)
    if args.json:
        print(json.dumps({"jobs": rows, "cursor": cursor}, indent=2, default=str))
        return 0
    print(f"{'jobId':<24} {'status':<10} {'progress':>8}  {'stage':<14} updated")
    for r in rows:
        print(f"{r['jobId']:<24} {r['status']:<10} {r.get('progress', 0):>7}%  "
              f"{r.get('stage', ''):<14} {r.get('updatedAt', '')}")
    if cursor:
        flags = (f" --status {args.status}" if args.status else "") + (
            f" --submitted-by {args.submitted_by}" if args.submitted_by else "") + \
            f" --limit {args.limit}"
        print(f"more: ray-app jobs{flags} --cursor {cursor}")
    return 0


def cmd_cancel(args) -> int:
    from .io.status import CANCEL_DONE

    svc = _service(args)
    outcome = svc.status.cancel(args.job_id)
    if outcome is None:
        rec = svc.status.get(args.job_id)
        if rec is None:
            raise ValueError(f"job {args.job_id!r} not found in the {svc.mode} status store")
        raise ValueError(f"job {args.job_id!r} is {rec['status']}: only PENDING and RUNNING "
                         "jobs can be cancelled")
    print(f"{args.job_id}: CANCELLED" if outcome == CANCEL_DONE else
          f"{args.job_id}: cancel requested; its driver stops at the next stage boundary "
          "and publishes nothing")
    return 0


def cmd_serve(args) -> int:
    import logging

    from .api.keys import NAME_PATTERN, ApiKeys
    from .service import service_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    import socket

    with socket.socket() as probe:  # before Ray starts: Serve's proxy would only log it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise ValueError(f"--host/--port: cannot listen on {args.host}:{args.port} "
                             f"({exc.strerror}); is another server (ray-app serve?) on it? "
                             "Choose another --port") from None
    service = service_from_env()
    if service.mode == "local":
        keys = ApiKeys()
        if not keys.list():  # a first local start: the user needs a key to open the page
            user = os.environ.get("USER") or "admin"
            user = user if NAME_PATTERN.fullmatch(user) else "admin"
            key = keys.create(user, admin=True)
            print(f"no API key yet in {keys.location}: created an admin key for "
                  f"{user!r} (keep it; `ray-app apikey create NAME` makes more):\n{key}",
                  flush=True)
    from .api.deployment import serve_local

    return serve_local(args.host, args.port, driver=not args.no_driver, service=service)


def cmd_apikey(args) -> int:
    from .api.keys import ApiKeys

    keys = ApiKeys(args.keys)
    if args.action == "create":
        if not args.name:
            raise ValueError("apikey create needs a NAME (the jobs' submittedBy)")
        key = keys.create(args.name, admin=args.admin)
        print(f"API key for {args.name!r}{' (admin)' if args.admin else ''} stored (as a "
              f"SHA-256 digest) in {keys.location}; it is shown only now:")
        print(key)
    elif args.action == "revoke":
        if not args.name:
            raise ValueError("apikey revoke needs a NAME")
        n = keys.revoke(args.name)
        if not n:
            raise ValueError(f"no API key named {args.name!r} in {keys.location}")
        print(f"revoked {n} key(s) of {args.name!r} (replicas forget them within 15 s)")
    else:
        rows = keys.list()
        print(f"{'name':<24} {'admin':<5} {'hint':<10} created")
        for r in rows:
            print(f"{r['name']:<24} {'yes' if r.get('admin') else 'no':<5} "
                  f"{r.get('hint', ''):<10} {r.get('createdAt', '')}")
        print(f"{len(rows)} key(s) in {keys.location}")
    return 0


def cmd_results(args) -> int:
    from .io.outputs import atomic_output_dir, check_out_dir

    out = check_out_dir(args.out, args.overwrite)
    svc = _service(args)
    rec = svc.status.get(args.job_id)
    if rec is None:
        raise ValueError(f"job {args.job_id!r} not found in the {svc.mode} status store")
    prefix = rec.get("resultPrefix")
    if rec["status"] != "COMPLETED" or not prefix:
        raise ValueError(f"job {args.job_id!r} is {rec['status']}: it has no results yet")
    with atomic_output_dir(out, args.overwrite) as tmp:  # all files, or nothing
        files = svc.results.download(args.job_id, tmp, prefix=prefix)
    print(f"{len(files)} file(s) of job {args.job_id} in {out}/")
    return 0


def cmd_consume(args) -> int:
    import logging

    from .service import consume

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _at_least_one("--exit-after-idle-polls", args.exit_after_idle_polls)
    return consume(args.engine, args.exit_after_idle_polls, _service(args))


def cmd_dlq(args) -> int:
    from .service.jobspec import InvalidJob, parse_job

    svc = _service(args)
    if svc.queue is None:
        raise ValueError("QUEUE_URL is not set (or pass --queue-url)")
    if args.redrive:
        valid = []
        for msg, _reason in svc.queue.list_dead(args.max, polls=10):
            try:
                spec = parse_job(msg.body)
            except InvalidJob as exc:  # it would only bounce back: leave it, say why
                print(f"left {msg.message_id} in the DLQ, still invalid: {exc}")
                continue
            svc.status.requeue(spec.job_id)  # re-open a FAILED job for a new attempt
            valid.append(msg)
        moved = svc.queue.redrive(messages=valid)
        print(f"redrove {moved} message(s) to {svc.queue.url}")
        return 0
    dead = svc.queue.list_dead(args.max, polls=10)
    for msg, reason in dead:
        print(f"{msg.message_id}  {reason}\n    {msg.body[:200]}")
    print(f"{len(dead)} dead letter(s) shown")
    return 0


def _names(args):
    from .io.provision import ServiceNames

    queue = args.queue or (os.environ.get("QUEUE_URL", "").rstrip("/").split("/")[-1] or None)
    bucket = args.bucket or os.environ.get("BUCKET_NAME")
    table = args.table or os.environ.get("TABLE_NAME")
    missing = [n for n, v in (("--queue", queue), ("--bucket", bucket), ("--table", table))
               if not v]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or QUEUE_URL / BUCKET_NAME / "
                         "TABLE_NAME in the environment)")
    return ServiceNames(queue=queue, bucket=bucket, table=table,
                        visibility_s=getattr(args, "visibility", 120))


def cmd_provision(args) -> int:
    from .io.provision import provision

    out = provision(_names(args))
    for what, change in out["report"].items():
        print(f"{what}: {change}")
    print(f"QUEUE_URL={out['queue_url']}\nBUCKET_NAME={out['bucket']}\n"
          f"TABLE_NAME={out['table']}")
    return 0


def cmd_teardown(args) -> int:
    from .io.provision import teardown

    if not args.yes:
        raise ValueError("teardown deletes the queue, the DLQ, the bucket and its results, and "
                         "the table: pass --yes to confirm")
    for what, change in teardown(_names(args)).items():
        print(f"{what}: {change}")
    return 0


def cmd_catalog(args) -> int:
    from .data.registry import all_streams

    rows = [s.to_dict() for s in all_streams()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'key':<22} {'name':<22} {'length[deg]':>11} {'dist[kpc]':>9} "
          f"{'footprint[deg2]':>15}  reference")
    for r in rows:
        print(f"{r['key']:<22} {r['name']:<22} {r['length_deg']:>11.1f} "
              f"{r['distance_kpc']:>9.1f} {r['footprint_deg2']:>15.0f}  {r['reference']}")
    print(f"{len(rows)} streams")
    return 0


def cmd_survey(args) -> int:
    from .data.catalogue import parse_columns_map
    from .survey.run import SurveyParams, local_folder, run_survey

    _at_least_one("--num-cpus", args.num_cpus)
    _at_least_one("--max-actors", args.max_actors)
    inject = tuple(k.strip() for k in (args.inject or "").split(",") if k.strip())
    params = SurveyParams(
        out=args.out, region=_region_arg(args.region), healpix=args.healpix,
        min_abs_b=args.min_abs_b, all_sky=args.all_sky, source=args.source, inject=inject,
        density_scale=args.density_scale, stream_members=args.stream_members,
        patch_level=args.patch_level, overlap_deg=args.overlap, n_neighbors=args.n_neighbors,
        sigma_threshold=args.sigma_threshold, member_probability=args.member_probability,
        orientations=args.orientations, seed=args.seed, retries=args.retries,
        concurrency=args.concurrency, cache=args.cache,
        columns=parse_columns_map(args.columns) if args.columns else None,
        cuts={k: v for k, v in (("parallax_max", args.parallax_max), ("g_max", args.g_max),
                                ("bp_rp_min", args.bp_rp_min), ("bp_rp_max", args.bp_rp_max))
              if v is not None})
    from .engine.engines import default_engine

    printer = _Progress()
    printer.note(f"survey: {params.area_deg2:.0f} deg^2 in {len(params.patches)} patches "
                 f"(level {params.patch_level}, overlap {params.overlap_deg:g} deg); each "
                 f"patch's job at sigma >= {params.job_threshold:.2f} = survey sigma >= "
                 f"{params.sigma_threshold:g}")
    engine = default_engine("in-process" if args.via == "queue" else args.engine,
                            **({"num_cpus": args.num_cpus, "max_actors": args.max_actors,
                                "log_to_driver": False}
                               if args.engine == "ray" and args.via == "pool" else {}))
    service = None
    if args.via == "queue":  # the queue's drivers run the patches: no engine here
        from .service import service_from_env

        service = service_from_env(args.queue_url, args.table, args.bucket)
        engine.close()
        engine = None
        printer.note(f"submitting the patches to the {service.mode} job queue; waiting for "
                     "its drivers (`ray-app consume`, jobs/consume.py) to run them")
    try:
        state = run_survey(params, engine, service=service,
                           progress=lambda done, total, pid: printer(
                               int(100 * done / total), f"patches {done}/{total}"))
    finally:
        printer.close()
        if engine is not None:
            engine.close()
    t = state["totals"]
    print(f"survey {params.out}: {t['done']} patches searched ({t['resumed']} from an earlier "
          f"run), {t['empty']} empty, {t['failed']} failed; {t['candidates']} survey "
          f"candidate(s); {state['throughput']['stars_per_second']} stars/s")
    if state["not_searched"]["patches"]:
        print(f"  NOT searched: {state['not_searched']['area_deg2']} deg^2 in patches "
              f"{', '.join(state['not_searched']['patches'])} (see survey.json)")
    import pyarrow.parquet as pq

    for row in pq.read_table(local_folder(params) / "candidates.parquet").to_pylist()[:20]:
        known = f"matches {row['match_name']} ({row['match_key']})" if row["match_key"] \
            else "no registry match (new?)"
        print(f"  #{row['id']}: sigma={row['significance']:.2f} members={row['n_members']} "
              f"length={row['length_deg']:.1f} deg at ({row['ra_median']:.1f}, "
              f"{row['dec_median']:.1f}); {known}; patches {len(row['patches'])}")
    return 0 if not state["not_searched"]["patches"] else 1


def _member_flags(p) -> None:
    p.add_argument("--member-probability", type=_number,
                   default=DEFAULT_MEMBER_PROBABILITY,
                   help="members are the stars at least this likely to belong to the "
                        "candidate's stream, (0, 1] (message field memberProbability)")
    p.add_argument("--photometry", default=None,
                   help="MAG,COLOUR columns for the photometric filter (COLOUR a column "
                        "or A-B, e.g. g_mean_psf_mag,g_mean_psf_mag-i_mean_psf_mag), or "
                        "'none'; default phot_g_mean_mag,bp_rp when the table has them")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless its help already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) \
                or action.option_strings == []:
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--sigma 4`` is refused, not taken for ``--sigma-threshold``), and
    defaults shown in every help; subcommands inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One style for every refusal: ``ray-app: error: ...`` (with the usage), exit 2."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"ray-app: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ray-app",
        description="Recover stellar streams from Gaia catalogues: exact kNN density, H0 "
                    "persistence, calibrated significance, member lists. Runs on a local Ray "
                    "instance with a local results folder; no AWS account or GPU needed.",
        epilog="Exit codes: 0 success, 1 the job failed, 2 bad input (nothing written or "
               "recorded), 3 a service unavailable (AWS, the Gaia archive), 130 interrupted.")
    p.add_argument("--version", action="version", version=f"ray-app {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("recover", help="recover a stream locally (local Ray, local folder)",
                       description="Run one stream recovery and write its outputs to --out.")
    r.add_argument("stream_key", nargs="?", default=None,
                   help="registry key or alias, e.g. gd-1 (see `ray-app catalog`); default "
                        "gd-1 unless --region is given")
    r.add_argument("--region", help="blind search instead of a stream: JSON (or @file.json), "
                                    "e.g. '{\"cone\": {\"center\": [150, 30], \"radius\": 5}}'")
    r.add_argument("--cache", help="Gaia chunk cache: folder or s3://bucket/prefix (default "
                                   "$RAY_APP_HOME/cache/gaia)")
    r.add_argument("--input", help="'gaia-dr3' (the Gaia archive, $RAY_APP_GAIA_URL), or a "
                                   "Parquet catalogue, local path or s3:// URI (columns "
                                   "source_id, ra, dec, pmra, pmdec, parallax); default: "
                                   "seeded synthetic catalogue")
    r.add_argument("--columns", help="rename the input's columns to ours: "
                                     "FILE_NAME=our_name[,...], e.g. RA_ICRS=ra,DE_ICRS=dec")
    r.add_argument("--out", help="output directory (default results/<stream_key>); it must "
                                 "not exist, be empty, or hold a previous ray-app output "
                                 "(with --overwrite): other files are never replaced")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a previous ray-app output in --out (only a folder whose "
                        "manifest.json lists all its files)")
    r.add_argument("--n-neighbors", type=_number, default=32, help="k of the kNN, 1..1024")
    r.add_argument("--sigma-threshold", type=_number, default=DEFAULT_SIGMA_THRESHOLD,
                   help="candidate threshold in per-job, look-elsewhere-corrected sigma, > 0")
    r.add_argument("--seed", type=int, default=42,
                   help="seed of the synthetic catalogue and of the null calibration")
    r.add_argument("--no-ecsv", action="store_true", help="skip gaia_table.ecsv (large tables)")
    r.add_argument("--n-background", type=int, default=30000,
                   help="synthetic background stars (without --input)")
    r.add_argument("--n-stream", type=int, default=500,
                   help="synthetic stream stars (without --input)")
    r.add_argument("--engine", choices=("ray", "in-process"), default="ray",
                   help="run shards on a local Ray instance or in this process")
    r.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs for the local Ray instance, >= 1 (default: all)")
    r.add_argument("--shards", type=_number, default=None,
                   help="phi1 slabs to split the job into (default: from star count and "
                        "actor memory, RAY_APP_MEMORY_PER_ACTOR); results do not depend on it")
    r.add_argument("--max-actors", type=int, default=None,
                   help="density actors in the pool (default: one per GPU, else 1)")
    r.add_argument("--job-id", help="jobId to record in the local status store "
                                    "(default: random)")
    r.add_argument("--orientations", type=_number, default=None,
                   help="a --region without a frame is searched in this many great-circle "
                        "frames through its centre, 180/n deg apart, then refined along its "
                        "best structures; 1: one isotropic frame (default 8)")
    _member_flags(r)
    r.set_defaults(func=cmd_recover)

    sv = sub.add_parser(
        "survey", help="blind search of a large sky area, patch by patch (resumable)",
        description="Plan HEALPix patches over an area, search each with a blind region job "
                    "(orientation scan), merge the patches' candidates into survey "
                    "candidates (significance corrected for every patch searched), "
                    "cross-match them with the registry and write candidates.parquet, "
                    "members.parquet, map.png, survey.json and manifest.json to --out. "
                    "Running it again with the same --out resumes: finished patches are "
                    "not searched again.")
    area = sv.add_argument_group("area (one of --region, --healpix, --all-sky; --min-abs-b "
                                 "alone means the whole sky at |b| above it)")
    area.add_argument("--region", help="JSON region (or @file.json), e.g. '{\"polygon\": "
                                       "[[120, 0], [240, 0], [240, 60], [120, 60]]}'")
    area.add_argument("--healpix", help="LEVEL:PIX,PIX,... nested HEALPix pixels, e.g. 1:4,5")
    area.add_argument("--min-abs-b", type=_number, default=None,
                      help="only where the Galactic latitude |b| exceeds this (deg)")
    area.add_argument("--all-sky", action="store_true", help="the whole sky")
    sv.add_argument("--out", required=True,
                    help="survey folder: new or empty, or an earlier run of the same survey "
                         "(resumed); anything else is refused")
    sv.add_argument("--source", default="synthetic",
                    help="'synthetic' (seeded synthetic sky), 'gaia-dr3' (the archive, "
                         "cached), a Parquet file, or a HATS folder "
                         "(Norder=K/Dir=D/Npix=N partitions: only those a patch needs are "
                         "read)")
    sv.add_argument("--inject", help="registry streams to inject into the synthetic sky, "
                                     "KEY,KEY,... (see `ray-app catalog`)")
    sv.add_argument("--density-scale", type=_number, default=0.02,
                    help="fraction of the synthetic field's stars kept, (0, 1] (thins the "
                         "field so that thousands of deg^2 run on a laptop; streams are not "
                         "thinned)")
    sv.add_argument("--stream-members", type=int, default=1000,
                    help="stars per injected stream (G < 20.5, before the cuts)")
    sv.add_argument("--patch-level", type=int, default=3,
                    help="HEALPix level of the patches, 1-6 (3: 53.7 deg^2 each)")
    sv.add_argument("--overlap", type=_number, default=2.0,
                    help="deg searched beyond each patch's own area, 0-10")
    sv.add_argument("--n-neighbors", type=_number, default=32, help="k of the kNN, 1..1024")
    sv.add_argument("--sigma-threshold", type=_number, default=DEFAULT_SIGMA_THRESHOLD,
                    help="survey candidate threshold, in sigma corrected for every patch "
                         "searched")
    sv.add_argument("--orientations", type=_number, default=None,
                    help="frames of each patch's orientation scan (default 8)")
    sv.add_argument("--member-probability", type=_number,
                    default=DEFAULT_MEMBER_PROBABILITY,
                    help="members: membership probability at least this, (0, 1]")
    sv.add_argument("--seed", type=int, default=0, help="seed of the synthetic sky and nulls")
    sv.add_argument("--retries", type=int, default=1,
                    help="extra attempts of a failing patch before it is reported failed")
    sv.add_argument("--concurrency", type=int, default=2,
                    help="patches searched at once on the shared density pool")
    cuts = sv.add_argument_group("cuts (the Gaia query's; applied to every source)")
    cuts.add_argument("--parallax-max", type=_number, default=None,
                      help="keep parallax below this, mas (default 1)")
    cuts.add_argument("--g-max", type=_number, default=None,
                      help="keep phot_g_mean_mag below this (default 20.5)")
    cuts.add_argument("--bp-rp-min", type=_number, default=None,
                      help="keep bp_rp above this (default -0.5)")
    cuts.add_argument("--bp-rp-max", type=_number, default=None,
                      help="keep bp_rp below this (default 2.5)")
    sv.add_argument("--cache", help="Gaia chunk cache (--source gaia-dr3)")
    sv.add_argument("--columns", help="rename a Parquet source's columns: FILE=ours,...")
    sv.add_argument("--engine", choices=("ray", "in-process"), default="ray",
                    help="a local Ray instance's density pool, or this process")
    sv.add_argument("--num-cpus", type=int, default=None,
                    help="CPUs for the local Ray instance, >= 1 (default: all)")
    sv.add_argument("--max-actors", type=int, default=None,
                    help="density actors in the pool (default: one per GPU, else 1)")

    def aws_flags(p):
        p.add_argument("--queue-url", help="SQS queue URL (default $QUEUE_URL)")
        p.add_argument("--table", help="DynamoDB table (default $TABLE_NAME; unset: local "
                                       "SQLite store under $RAY_APP_HOME)")
        p.add_argument("--bucket", help="S3 bucket (default $BUCKET_NAME)")

    sv.add_argument("--via", choices=("pool", "queue"), default="pool",
                    help="pool: search the patches here on the shared density pool; queue: "
                         "submit each patch as a job (surveyId set) for the queue's drivers, "
                         "wait, and merge their outputs")
    aws_flags(sv)
    sv.set_defaults(func=cmd_survey)

    sb = sub.add_parser("submit", help="queue a job (status PENDING + SQS message); prints "
                                       "its jobId")
    sb.add_argument("stream_key", nargs="?", default=None,
                    help="registry key (streamKey), e.g. gd-1; or give --region")
    sb.add_argument("--region", help="blind region JSON (or @file.json) instead of a stream "
                                     "(message field region)")
    sb.add_argument("--job-id", help="jobId: 1-128 characters of [A-Za-z0-9_-] (default: "
                                     "random)")
    sb.add_argument("--n-neighbors", type=_number, default=32,
                    help="nNeighbors: k of the kNN, 1..1024")
    sb.add_argument("--sigma-threshold", type=_number, default=DEFAULT_SIGMA_THRESHOLD,
                    help="sigmaThreshold: candidate threshold in per-job sigma, > 0")
    sb.add_argument("--input", help="source: 'gaia-dr3', or a Parquet s3://bucket/key (a "
                                    "local path only in the local mode; default: synthetic)")
    sb.add_argument("--columns", help="columns: FILE_NAME=our_name[,...] renames of the "
                                      "input's columns")
    sb.add_argument("--shards", type=_number, default=None,
                    help="shards: phi1 slabs, 1..4096 (default: from the star count)")
    sb.add_argument("--cache", help="cache: where Gaia chunks are cached, s3://bucket/prefix "
                                    "(default: cache/gaia beside the service's results)")
    sb.add_argument("--seed", type=_number, default=None,
                    help="seed of the synthetic catalogue and of the null (default: 42)")
    sb.add_argument("--priority", type=_number, default=None,
                    help="priority: 0 (default) .. 9")
    sb.add_argument("--n-background", type=_number, default=None,
                    help="nBackground: synthetic field stars (default: 30000)")
    sb.add_argument("--n-stream", type=_number, default=None,
                    help="nStream: synthetic stream stars (default: 500)")
    sb.add_argument("--submitted-by", default=os.environ.get("USER"),
                    help="submittedBy: who asks (default: $USER)")
    sb.add_argument("--orientations", type=_number, default=None,
                    help="orientations: frames of a blind --region's scan (default 8)")
    _member_flags(sb)
    aws_flags(sb)
    sb.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="one job's status",
                        description="A job's status, progress, stage, timings and error.")
    st.add_argument("job_id", help="the jobId")
    st.add_argument("--json", action="store_true", help="the whole record as JSON")
    st.add_argument("--watch", action="store_true", help="refresh until the job finishes")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    aws_flags(st)
    st.set_defaults(func=cmd_status)

    jb = sub.add_parser("jobs", help="recent jobs",
                        description="Recent jobs, newest first (by last update), a page at a "
                                    "time: the last line gives the command for the next page.")
    jb.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    jb.add_argument("--limit", type=int, default=50,
                    help=f"at most this many per page (1-{MAX_LIST})")
    jb.add_argument("--cursor", help="continue after the page that printed this cursor")
    jb.add_argument("--submitted-by", help="only jobs of this submittedBy")
    jb.add_argument("--json", action="store_true",
                    help="machine-readable output: {\"jobs\": [...], \"cursor\": next or null}")
    aws_flags(jb)
    jb.set_defaults(func=cmd_jobs)

    cn = sub.add_parser("cancel", help="cancel a PENDING or RUNNING job",
                        description="Cancel a job: PENDING becomes CANCELLED at once; a "
                                    "RUNNING job's driver stops at its next stage boundary, "
                                    "records CANCELLED and publishes no outputs.")
    cn.add_argument("job_id", help="the jobId")
    aws_flags(cn)
    cn.set_defaults(func=cmd_cancel)

    se = sub.add_parser(
        "serve", help="run the HTTP API and web page on Ray Serve (local mode: with a driver)",
        description="The HTTP API (OpenAPI at /docs) and the web page (/) as a Ray Serve "
                    "application on a local Ray instance. In local mode (no TABLE_NAME/"
                    "BUCKET_NAME) it also runs the queue driver, so a POSTed job runs to "
                    "COMPLETED with no AWS; the first start creates an admin API key. Stop "
                    "with Ctrl-C. On a cluster use `serve deploy cluster/serve.yaml`.")
    se.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    se.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    se.add_argument("--no-driver", action="store_true",
                    help="API only: jobs wait for a separate `ray-app consume`")
    se.set_defaults(func=cmd_serve)

    ak = sub.add_parser(
        "apikey", help="create, list or revoke API keys",
        description="API keys for the HTTP API, stored as SHA-256 digests in RAY_APP_API_KEYS "
                    "(default: $RAY_APP_HOME/apikeys.json locally, s3://$BUCKET_NAME/config/"
                    "apikeys.json in AWS mode). `create NAME` prints the new key on its last "
                    "line; NAME becomes the submittedBy of that key's jobs.")
    ak.add_argument("action", choices=("create", "list", "revoke"),
                    help="create a key for NAME, list the keys, or revoke NAME's keys")
    ak.add_argument("name", nargs="?", help="the key holder's name (create, revoke)")
    ak.add_argument("--admin", action="store_true",
                    help="create: the key may read and cancel every user's jobs")
    ak.add_argument("--keys", default=None, help="the key file (path or s3:// URI)")
    ak.set_defaults(func=cmd_apikey)

    rs = sub.add_parser("results", help="download a job's outputs",
                        description="Copy a COMPLETED job's files (from S3, the local results "
                                    "folder, or a `recover --out`) into --out.")
    rs.add_argument("job_id", help="the jobId")
    rs.add_argument("--out", "--to", dest="out", required=True,
                    help="local directory for the files (the same rules as recover --out: "
                         "new, empty, or a previous output with --overwrite)")
    rs.add_argument("--overwrite", action="store_true",
                    help="replace a previous ray-app output in --out")
    aws_flags(rs)
    rs.set_defaults(func=cmd_results)

    co = sub.add_parser("consume", help="run the queue driver here (local mode: the SQLite "
                                         "queue under $RAY_APP_HOME; the same code as "
                                         "jobs/consume.py)",
                        description="Pull jobs from the queue and run them until SIGTERM/"
                                    "Ctrl-C (or --exit-after-idle-polls empty polls). "
                                    "Driver settings come from the environment (RAY_APP_*; "
                                    "see jobs/consume.py).")
    co.add_argument("--engine", choices=("ray", "in-process"), default="ray",
                    help="run shards on a local Ray instance or in this process")
    co.add_argument("--exit-after-idle-polls", type=int, default=None,
                    help="stop after this many empty polls (default: run until stopped)")
    aws_flags(co)
    co.set_defaults(func=cmd_consume)

    dq = sub.add_parser("dlq", help="list dead letters, or --redrive them to the queue")
    dq.add_argument("--redrive", action="store_true",
                    help="move valid dead letters back and re-open their FAILED jobs "
                         "(invalid ones stay, with the reason printed)")
    dq.add_argument("--max", type=int, default=10, help="at most this many dead letters")
    aws_flags(dq)
    dq.set_defaults(func=cmd_dlq)

    for name, func, helptext in (("provision", cmd_provision,
                                  "create the queue+DLQ, bucket and table (idempotent)"),
                                 ("teardown", cmd_teardown, "delete them")):
        pv = sub.add_parser(name, help=helptext)
        pv.add_argument("--queue", help="queue name (default: from $QUEUE_URL)")
        pv.add_argument("--bucket", help="bucket name (default $BUCKET_NAME)")
        pv.add_argument("--table", help="table name (default $TABLE_NAME)")
        if name == "provision":
            pv.add_argument("--visibility", type=int, default=120,
                            help="queue visibility timeout, s (> the driver's heartbeat)")
        else:
            pv.add_argument("--yes", action="store_true", help="confirm deletion")
        pv.set_defaults(func=func)

    c = sub.add_parser("catalog", help="list known stream keys")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_catalog)
    for choice in sub._choices_actions:  # a subcommand's --help starts with what it does
        parser = sub.choices[choice.dest]
        parser.description = parser.description or choice.help[:1].upper() + choice.help[1:]
    return p


def unavailable(exc: BaseException) -> str | None:
    """One line for an operational failure (a service we could not use), or None."""
    from .io.aws import unavailable_line

    return unavailable_line(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, exit 2
        print(f"ray-app: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigurationError as exc:  # a bad RAY_APP_* setting: the same, named as such
        print(f"ray-app: error: configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ray-app: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        line = unavailable(exc)
        if line is None:
            raise
        print(f"ray-app: error: {line}", file=sys.stderr)
        return EXIT_UNAVAILABLE
