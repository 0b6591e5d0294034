"""The ``ray-app`` command.

Exit codes: 0 success; 2 bad input (the message names the field, the value and what is
allowed; nothing is written); 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .core.significance import DEFAULT_SIGMA_THRESHOLD

EXIT_BAD_INPUT = 2


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


def _progress_printer(stream=sys.stderr):
    def show(pct: int, stage: str) -> None:
        bar = "#" * (pct // 5)
        stream.write(f"\r[{bar:<20}] {pct:3d}% {stage:<12}")
        if pct >= 100:
            stream.write("\n")
        stream.flush()

    return show


def cmd_recover(args) -> int:
    from .config import RecoverParams

    params = RecoverParams(stream_key=args.stream_key, n_neighbors=args.n_neighbors,
                           sigma_threshold=args.sigma_threshold, input_path=args.input,
                           out_dir=args.out or f"results/{args.stream_key.lower()}",
                           seed=args.seed, write_ecsv=not args.no_ecsv,
                           n_background=args.n_background, n_stream=args.n_stream,
                           shards=args.shards)
    from .engine.engines import default_engine
    from .runner import run_recovery

    engine = default_engine(args.engine, **({"num_cpus": args.num_cpus,
                                             "max_actors": args.max_actors}
                                            if args.engine == "ray" else {}))
    try:
        summary = run_recovery(params, engine, progress=_progress_printer())
    finally:
        engine.close()
    print(f"{summary.n_stars} stars, {summary.n_candidates} candidate(s) at "
          f"sigma >= {params.sigma_threshold:g}; outputs in {summary.out_dir}/")
    for c in summary.candidates[:10]:
        cen = c["centroid"]
        print(f"  #{c['index']}: sigma={c['significance']:.2f} members={c['n_members']} "
              f"phi1~{cen['phi1']:.1f} phi2~{cen['phi2']:.2f} "
              f"pm~({cen['pm_phi1_cosphi2']:.2f}, {cen['pm_phi2']:.2f})")
    return 0


def cmd_catalog(args) -> int:
    from .data.registry import all_streams

    rows = [s.to_dict() for s in all_streams()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'key':<18} {'name':<18} {'length[deg]':>11} {'dist[kpc]':>9}  reference")
    for r in rows:
        print(f"{r['key']:<18} {r['name']:<18} {r['length_deg']:>11.1f} "
              f"{r['distance_kpc']:>9.1f}  {r['reference']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-app",
        description="Recover stellar streams from Gaia catalogues: exact kNN density, H0 "
                    "persistence, calibrated significance, member lists. Runs on a local Ray "
                    "instance with a local results folder; no AWS account or GPU needed.",
        epilog="Exit codes: 0 success, 2 bad input (nothing written), 1 other failure.")
    p.add_argument("--version", action="version", version=f"ray-app {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("recover", help="recover a stream locally (local Ray, local folder)",
                       description="Run one stream recovery and write its outputs to --out.")
    r.add_argument("stream_key", help="registry key or alias, e.g. gd-1 (see `ray-app catalog`)")
    r.add_argument("--input", help="Parquet catalogue (columns source_id, ra, dec, pmra, pmdec, "
                                   "parallax); default: seeded synthetic catalogue")
    r.add_argument("--out", help="output directory (default results/<stream_key>)")
    r.add_argument("--n-neighbors", type=_number, default=32, help="k of the kNN, 1..1024")
    r.add_argument("--sigma-threshold", type=_number, default=DEFAULT_SIGMA_THRESHOLD,
                   help=f"candidate threshold in per-job sigma (default "
                        f"{DEFAULT_SIGMA_THRESHOLD:g})")
    r.add_argument("--seed", type=int, default=42,
                   help="seed of the synthetic catalogue and of the null calibration")
    r.add_argument("--no-ecsv", action="store_true", help="skip gaia_table.ecsv (large tables)")
    r.add_argument("--n-background", type=int, default=30000,
                   help="synthetic background stars (without --input)")
    r.add_argument("--n-stream", type=int, default=500,
                   help="synthetic stream stars (without --input)")
    r.add_argument("--engine", choices=("ray", "in-process"), default="ray",
                   help="run shards on a local Ray instance (default) or in this process")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance")
    r.add_argument("--shards", type=_number, default=None,
                   help="phi1 slabs to split the job into (default: from star count and "
                        "actor memory, RAY_APP_MEMORY_PER_ACTOR); results do not depend on it")
    r.add_argument("--max-actors", type=int, default=None,
                   help="density actors in the pool (default: one per GPU, else 1)")
    r.set_defaults(func=cmd_recover)

    c = sub.add_parser("catalog", help="list known stream keys")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_catalog)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: one clear line, non-zero exit, nothing written
        print(f"ray-app: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
