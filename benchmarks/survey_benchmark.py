"""Sky-survey benchmark: completeness and false candidates over thousands of deg^2, the
same area with no stream, and the campaign's throughput.

Prints three tables (and writes each survey's map.png):

1. *Completeness*: registry streams injected into the synthetic sky of a >= 3000 deg^2 area
   at two richnesses; a stream is found when a survey candidate at sigma >= 5 (corrected
   for every patch) is cross-matched to it; candidates whose members are mostly field stars
   are false (per 1000 deg^2).
2. *Null*: the same area and field, no stream: survey candidates at the default threshold.
3. *Throughput*: a smaller survey on a local Ray instance's density pool with 1 and 2
   actors (stars searched per second, whole campaign).

Usage: python benchmarks/survey_benchmark.py [--out DIR] [--density-scale 0.01]
       [--members 1000 200] [--skip-throughput | --throughput-only]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ray_app.engine.engines import InProcessEngine
from ray_app.survey.run import SurveyParams, run_survey

AREA = {"polygon": [[140, 0], [230, 0], [230, 60], [140, 60]]}
STREAMS = ("gd-1", "gaia-6", "m3-svol", "m68-fjorm", "ngc5466", "slidr", "spectre")


def score(out: Path, injected: tuple, area_deg2: float) -> dict:
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    members = pq.read_table(out / "members.parquet").to_pydict()
    lab = np.asarray(members.get("truth_stream_label", []))
    cid = np.asarray(members.get("candidate", []))
    found, false, rows = set(), 0, []
    for c in cands:
        mine = lab[cid == c["id"]]
        stream_share = float((mine >= 0).mean()) if len(mine) else 0.0
        if c["match_key"] in injected and c["significance"] >= 5:
            found.add(c["match_key"])
        if stream_share < 0.5:
            false += 1
        rows.append((c["id"], round(c["significance"], 2), c["n_members"],
                     round(stream_share, 2), c["match_key"], len(c["patches"])))
    return {"found": sorted(found), "missed": sorted(set(injected) - found),
            "candidates": len(cands), "false": false,
            "false_per_1000deg2": round(1000 * false / area_deg2, 3), "rows": rows}


def survey(out: Path, engine, **kw) -> tuple[dict, float]:
    params = SurveyParams(out=str(out), **kw)
    t0 = time.perf_counter()
    state = run_survey(params, engine)
    return {**state, "params": params}, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/ray-app-survey-benchmark")
    ap.add_argument("--density-scale", type=float, default=0.01)
    ap.add_argument("--members", type=int, nargs="+", default=[1000, 200])
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only table 3 (the local Ray pool's throughput)")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    engine = InProcessEngine("cpu")
    results = {}

    if args.throughput_only:
        args.members = []
    print("## completeness (in-process engine, 2 patches at a time)")
    print("| stream members | area deg^2 | patches | stars | found | missed | candidates "
          "| false | false / 1000 deg^2 | minutes |")
    print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for n in args.members:
        state, secs = survey(root / f"inject-{n}", engine, region=AREA, inject=STREAMS,
                             stream_members=n, density_scale=args.density_scale, seed=1)
        area = state["params"].area_deg2
        s = score(root / f"inject-{n}", STREAMS, area)
        results[f"inject-{n}"] = {**s, "seconds": secs, "area_deg2": area,
                                  "stars": state["throughput"]["stars_searched"]}
        print(f"| {n} | {area:.0f} | {len(state['params'].patches)} | "
              f"{state['throughput']['stars_searched']} | {', '.join(s['found'])} | "
              f"{', '.join(s['missed']) or '-'} | {s['candidates']} | {s['false']} | "
              f"{s['false_per_1000deg2']} | {secs / 60:.1f} |")
        for r in s["rows"]:
            print(f"    candidate {r[0]}: sigma {r[1]}, {r[2]} members, stream share {r[3]}, "
                  f"match {r[4]}, patches {r[5]}")

    print("\n## null: the same area and field, no stream")
    if args.throughput_only:
        print("(skipped: --throughput-only)")
    else:
        _null_table(root, engine, args, results)
    throughput(root, args, results)


def _null_table(root, engine, args, results) -> None:
    state, secs = survey(root / "null", engine, region=AREA,
                         density_scale=args.density_scale, seed=1)
    s = score(root / "null", (), state["params"].area_deg2)
    results["null"] = {**s, "seconds": secs}
    print("| area deg^2 | patches | stars | survey candidates (sigma >= 5) | minutes |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {state['params'].area_deg2:.0f} | {len(state['params'].patches)} | "
          f"{state['throughput']['stars_searched']} | {s['candidates']} | {secs / 60:.1f} |")


def throughput(root, args, results) -> None:
    if not args.skip_throughput:
        from ray_app.engine.engines import RayEngine

        print("\n## throughput on a local Ray instance (density pool), 12-patch survey")
        print("| actors | stars | seconds | stars / s |")
        print("|---:|---:|---:|---:|")
        for actors in (1, 2):
            eng = RayEngine(num_cpus=2, max_actors=actors, log_to_driver=False)
            try:
                state, secs = survey(root / f"ray-{actors}", eng,
                                     region={"cone": {"center": [185, 30], "radius": 12}},
                                     density_scale=args.density_scale, seed=2)
            finally:
                eng.close()
            st = state["throughput"]["stars_searched"]
            results[f"ray-{actors}"] = {"stars": st, "seconds": secs}
            print(f"| {actors} | {st} | {secs:.1f} | {st / secs:.0f} |")
    (root / "benchmark.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
