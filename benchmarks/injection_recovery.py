"""Injection-recovery benchmark: streams of decreasing richness injected into the realistic
synthetic sky (ray_app.data.synthetic.synthetic_sky) along registry tracks, recovered by the
full pipeline (runner + in-process engine), scored against the truth labels.

For each stream and richness, ``--trials`` skies (different seeds) are generated with
``--background`` field stars in the stream's default footprint; a trial *detects* the stream
when a candidate at sigma >= 5 has at least half of its members injected (purity >= 0.5).
Completeness = recovered injected members / injected members that passed the cuts; purity =
injected / all members of that candidate. False candidates: candidates with purity < 0.5.
A stream-free row (richness 0) measures false candidates per job on the same skies.

    python benchmarks/injection_recovery.py                       # the table in RESULTS.md
    python benchmarks/injection_recovery.py --streams gd-1 --richness 400 100 --trials 2

Prints a Markdown table and writes benchmarks/injection_recovery.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ray_app.config import RecoverParams
from ray_app.engine.engines import InProcessEngine
from ray_app.runner import run_recovery


def one(stream: str, richness: int, background: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        params = RecoverParams(stream_key=stream, n_background=background, n_stream=richness,
                               seed=seed, out_dir=str(Path(tmp) / "out"), write_ecsv=False)
        summary = run_recovery(params, InProcessEngine())
        stars = pq.read_table(Path(tmp) / "out" / "stars.parquet",
                              columns=["is_stream", "candidate"])
    truth = stars.column("is_stream").to_numpy(zero_copy_only=False)
    cand = stars.column("candidate").to_numpy()
    best, false = None, 0
    for c in summary.candidates:
        members = cand == c["index"]
        n_mem = c["n_members"]
        hit = int(np.sum(truth & members))
        purity = hit / max(n_mem, 1)
        if purity >= 0.5:
            if best is None or hit > best["hit"]:
                best = {"hit": hit, "purity": purity, "sigma": c["significance"]}
        else:
            false += 1
    return {"injected": int(truth.sum()), "detected": best is not None,
            "sigma": best["sigma"] if best else np.nan,
            "completeness": best["hit"] / max(truth.sum(), 1) if best else 0.0,
            "purity": best["purity"] if best else np.nan, "false": false}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", nargs="+", default=["gd-1", "palomar-5", "jhelum"])
    ap.add_argument("--richness", nargs="+", type=int, default=[2000, 800, 400, 200, 100, 50, 0])
    ap.add_argument("--background", type=int, default=30000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--plot", default=str(Path(__file__).with_name("injection_recovery.png")))
    args = ap.parse_args()
    rows = []
    t0 = time.perf_counter()
    print("| stream | injected (gen.) | kept after cuts | detected | median sigma | "
          "completeness | purity | false cand./job |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in args.streams:
        for r in args.richness:
            res = [one(s, r, args.background, 1000 + 17 * t) for t in range(args.trials)]
            det = [x for x in res if x["detected"]]
            row = {"stream": s, "richness": r,
                   "kept": float(np.mean([x["injected"] for x in res])),
                   "detection_rate": len(det) / len(res),
                   "sigma": float(np.median([x["sigma"] for x in det])) if det else None,
                   "completeness": float(np.mean([x["completeness"] for x in res])),
                   "purity": float(np.mean([x["purity"] for x in det])) if det else None,
                   "false_per_job": float(np.mean([x["false"] for x in res]))}
            rows.append(row)

            def fmt(v, f="{:.2f}"):
                return "-" if v is None else f.format(v)

            print(f"| {s} | {r} | {row['kept']:.0f} | {len(det)}/{len(res)} | "
                  f"{fmt(row['sigma'], '{:.1f}')} | {row['completeness']:.2f} | "
                  f"{fmt(row['purity'])} | {row['false_per_job']:.2f} |", flush=True)
    print(f"\n{len(rows) * args.trials} jobs in {time.perf_counter() - t0:.0f} s; "
          f"background {args.background} field stars per job")
    Path(args.plot).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for s in args.streams:
        rr = [r for r in rows if r["stream"] == s and r["richness"] > 0]
        x = [r["richness"] for r in rr]
        ax[0].plot(x, [r["detection_rate"] for r in rr], "o-", label=s)
        ax[1].plot(x, [r["completeness"] for r in rr], "o-", label=s)
    for a, lab in zip(ax, ("detection rate (sigma >= 5)", "member completeness"), strict=True):
        a.set_xscale("log")
        a.set_xlabel("injected members")
        a.set_ylabel(lab)
        a.set_ylim(-0.05, 1.05)
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
