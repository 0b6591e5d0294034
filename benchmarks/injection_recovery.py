"""Injection-recovery benchmark: streams of decreasing richness injected into the realistic
synthetic sky (ray_app.data.synthetic.synthetic_sky) along registry tracks, recovered by the
full pipeline (runner + in-process engine), scored against the truth labels.

For each stream and richness, ``--trials`` skies (different seeds) are generated with
``--background`` field stars in the stream's default footprint; a trial *detects* the stream
when a candidate at sigma >= 5 has at least half of its members injected (purity >= 0.5).
Completeness = recovered injected members / injected members that passed the cuts; purity =
injected / all members of that candidate (members: membership probability >= 0.5; the
"core" columns score the candidate's persistence core the same way). False candidates:
candidates with purity < 0.5.
A stream-free row (richness 0) measures false candidates per job on the same skies.
A second table checks the membership probabilities' calibration: of all stars of all jobs
at probability p (binned), the fraction that were injected.

    python benchmarks/injection_recovery.py                       # the table in RESULTS.md
    python benchmarks/injection_recovery.py --streams gd-1 --richness 400 100 --trials 2
    python benchmarks/injection_recovery.py --tilt 8 --frames registry   # frame robustness
    python benchmarks/injection_recovery.py --photometry none           # astrometry only

Prints a Markdown table and writes benchmarks/injection_recovery.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_app.data.registry import get_stream
from ray_app.data.synthetic import STREAM_GIANT_FRACTION, Injection, synthetic_sky
from ray_app.engine.engines import InProcessEngine
from ray_app.pipeline.params import DEFAULT_FRAME_TILTS, RecoverParams
from ray_app.pipeline.runner import run_recovery


def one(stream: str, richness: int, background: int, seed: int, tilt: float = 0.0,
        width: float | None = None, tilts=DEFAULT_FRAME_TILTS, photometry=None,
        giant_fraction: float = STREAM_GIANT_FRACTION) -> dict:
    """One synthetic sky with ``stream`` injected (``tilt`` deg off its registry frame,
    ``width`` deg wide), recovered by the runner searching the frames ``tilts``."""
    info = get_stream(stream)
    cols = synthetic_sky(info.footprint, background,
                         [Injection(info, richness, width_deg=width, tilt_deg=tilt,
                                    giant_fraction=giant_fraction)]
                         if richness else [], seed=seed, cuts=info.default_cuts)
    truth_ids = set(cols["source_id"][cols["is_stream"]].tolist())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "sky.parquet"
        pq.write_table(pa.table({k: v for k, v in cols.items()
                                 if k not in ("is_stream", "stream_label", "distance_kpc")}),
                       src)
        params = RecoverParams(stream_key=stream, input_path=str(src), seed=seed,
                               out_dir=str(Path(tmp) / "out"), write_ecsv=False,
                               frame_tilts=tuple(tilts), photometry=photometry)
        summary = run_recovery(params, InProcessEngine())
        stars = pq.read_table(Path(tmp) / "out" / "stars.parquet",
                              columns=["source_id", "candidate", "core_candidate",
                                       "member_probability"])
    truth = np.isin(stars.column("source_id").to_numpy(), list(truth_ids))
    prob = stars.column("member_probability").to_numpy()
    cand = stars.column("candidate").to_numpy()
    core = stars.column("core_candidate").to_numpy()
    best, false = None, 0
    for c in summary.candidates:
        members = cand == c["index"]
        n_mem = c["n_members"]
        hit = int(np.sum(truth & members))
        purity = hit / max(n_mem, 1)
        if purity >= 0.5:
            if best is None or hit > best["hit"]:
                in_core = core == c["index"]
                best = {"hit": hit, "purity": purity, "sigma": c["significance"],
                        "core_hit": int(np.sum(truth & in_core)),
                        "core_purity": np.sum(truth & in_core) / max(in_core.sum(), 1)}
        else:
            false += 1
    return {"injected": int(truth.sum()), "detected": best is not None,
            "calibration": calibration_counts(prob, truth),
            "sigma": best["sigma"] if best else np.nan,
            "completeness": best["hit"] / max(truth.sum(), 1) if best else 0.0,
            "purity": best["purity"] if best else np.nan, "false": false,
            "core_completeness": best["core_hit"] / max(truth.sum(), 1) if best else 0.0,
            "core_purity": best["core_purity"] if best else np.nan}


#: Membership-probability bins of the calibration table.
P_EDGES = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-9])


def calibration_counts(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per probability bin: stars, summed probability, injected stars."""
    b = np.clip(np.digitize(prob, P_EDGES) - 1, 0, len(P_EDGES) - 2)
    n = len(P_EDGES) - 1
    return np.stack([np.bincount(b, minlength=n), np.bincount(b, prob, minlength=n),
                     np.bincount(b, truth.astype(float), minlength=n)])


def print_calibration(counts: np.ndarray) -> None:
    """A calibrated model's stars at probability p are a fraction p injected."""
    print("\n| membership probability | stars | mean probability | injected fraction |")
    print("|---|---:|---:|---:|")
    for i in range(1, len(P_EDGES) - 1):  # the first bin is the whole field
        n, psum, hit = counts[:, i]
        if n:
            print(f"| {P_EDGES[i]:.2f}-{min(P_EDGES[i + 1], 1):.2f} | {n:.0f} | "
                  f"{psum / n:.3f} | {hit / n:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", nargs="+", default=["gd-1", "palomar-5", "jhelum"])
    ap.add_argument("--richness", nargs="+", type=int, default=[2000, 800, 400, 200, 100, 50, 0])
    ap.add_argument("--background", type=int, default=30000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--tilt", type=float, default=0.0,
                    help="inject each stream this many degrees off its registry frame")
    ap.add_argument("--width", type=float, default=None,
                    help="injected phi2 width, deg (default: the registry's)")
    ap.add_argument("--frames", choices=("all", "registry"), default="all",
                    help="search the default tilted frames, or the registry frame only")
    ap.add_argument("--photometry", default=None,
                    help="the job's photometry option; 'none': astrometry only "
                         "(default: Gaia G and BP-RP)")
    ap.add_argument("--giant-fraction", type=float, default=STREAM_GIANT_FRACTION,
                    help="share of red giants in the injected streams' population (default: "
                         f"{STREAM_GIANT_FRACTION}, an old population's; 0.05, the halo "
                         "field's, gives the giant-heavy streams of tables before 2026-12-02)")
    ap.add_argument("--plot", default=str(Path(__file__).with_name("injection_recovery.png")))
    ap.add_argument("--replot", help="only redraw --plot from this JSON of an earlier run")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot)
        return
    rows = []
    calibration = np.zeros((3, len(P_EDGES) - 1))
    t0 = time.perf_counter()
    print("| stream | injected (gen.) | kept after cuts | detected | median sigma | "
          "completeness | purity | core completeness | core purity | false cand./job |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in args.streams:
        for r in args.richness:
            tilts = DEFAULT_FRAME_TILTS if args.frames == "all" else (0.0,)
            res = [one(s, r, args.background, 1000 + 17 * t, args.tilt, args.width, tilts,
                       args.photometry, args.giant_fraction) for t in range(args.trials)]
            calibration += sum(x["calibration"] for x in res)
            det = [x for x in res if x["detected"]]
            row = {"stream": s, "richness": r,
                   "kept": float(np.mean([x["injected"] for x in res])),
                   "detection_rate": len(det) / len(res),
                   "sigma": float(np.median([x["sigma"] for x in det])) if det else None,
                   "completeness": float(np.mean([x["completeness"] for x in res])),
                   "purity": float(np.mean([x["purity"] for x in det])) if det else None,
                   "core_completeness": float(np.mean([x["core_completeness"] for x in res])),
                   "core_purity": float(np.mean([x["core_purity"] for x in det]))
                   if det else None,
                   "false_per_job": float(np.mean([x["false"] for x in res]))}
            rows.append(row)

            def fmt(v, f="{:.2f}"):
                return "-" if v is None else f.format(v)

            print(f"| {s} | {r} | {row['kept']:.0f} | {len(det)}/{len(res)} | "
                  f"{fmt(row['sigma'], '{:.1f}')} | {row['completeness']:.2f} | "
                  f"{fmt(row['purity'])} | {row['core_completeness']:.2f} | "
                  f"{fmt(row['core_purity'])} | {row['false_per_job']:.2f} |", flush=True)
    print(f"\n{len(rows) * args.trials} jobs in {time.perf_counter() - t0:.0f} s; "
          f"background {args.background} field stars per job; injected tilt {args.tilt:g} "
          f"deg; frames searched: {args.frames}")
    print_calibration(calibration)
    Path(args.plot).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    """Detection rate and member completeness against richness, one line per stream (markers
    differ and lines are nudged apart so streams at the same value stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    streams = list(dict.fromkeys(r["stream"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, s in enumerate(streams):
        rr = [r for r in rows if r["stream"] == s and r["richness"] > 0]
        x = [r["richness"] * (1 + 0.03 * (i - len(streams) / 2)) for r in rr]
        style = {"marker": "osD^v<>"[i % 7], "label": s, "alpha": 0.85}
        ax[0].plot(x, [r["detection_rate"] for r in rr], "-", **style)
        ax[1].plot(x, [r["completeness"] for r in rr], "-", **style)
    ticks = sorted({r["richness"] for r in rows if r["richness"] > 0})
    for a, lab in zip(ax, ("detection rate (sigma >= 5)", "member completeness"), strict=True):
        a.set_xscale("log")
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_xlabel("injected members")
        a.set_ylabel(lab)
        a.set_ylim(-0.05, 1.05)
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
