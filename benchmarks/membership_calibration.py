"""Membership calibration benchmark: are stars at probability p stream stars a fraction p of
the time?

Each sky is a synthetic field (``--background`` stars) with one registry stream injected
(``--members``, an old population), searched by the membership model alone: the seed core
is the stream's middle fifth in phi1 plus field stars beside it (a fifth as many), as a
persistence core is, so the table measures the membership model without the detection.
``--stream-cmd oracle`` learns the stream's colour-magnitude density from the injected
stars instead of the model's weights (what the colour-magnitude term could do with a
perfect locus). ``--width-ends A B`` injects a stream whose phi2 width runs from A to B
times the registry width along phi1 (a widening tail). ``--phi1-range A B`` injects the
stream over that share of its registry track only (0 0.6: a stream that ends inside its
footprint). ``--pm-box M`` keeps only the stars inside a box in (pmra, pmdec) around the
injected stream (its 1st-99th percentiles, widened by M mas/yr on each side), as a catalogue
pre-selected by proper motion is (``--parallax-min P``: only the stars with parallax > P);
the model finds the box's edges in the data
(:func:`ray_app.core.cuts.motion_cuts`), or with ``--ignore-cuts`` does not look for them.
Prints purity and completeness per sky, the field stars called members more than 1 deg
beyond the injected stream's ends, the motion cuts found, and the calibration table: per
probability bin, the mean probability against the injected fraction.

    python benchmarks/membership_calibration.py
    python benchmarks/membership_calibration.py --photometry none
    python benchmarks/membership_calibration.py --width-ends 0.5 2
    python benchmarks/membership_calibration.py --phi1-range 0 0.6
    python benchmarks/membership_calibration.py --pm-box 0.5 [--ignore-cuts]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ray_app.core.membership as membership
from ray_app.core.cuts import motion_cuts
from ray_app.core.features import stream_features
from ray_app.data.registry import get_stream
from ray_app.data.synthetic import STREAM_GIANT_FRACTION, Injection, synthetic_sky
from ray_app.pipeline.runner import feature_errors

BINS = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-9])


def seed_core(raw: dict, truth: np.ndarray, rng) -> np.ndarray:
    """The stream's middle fifth in phi1 plus a fifth as many field stars beside it."""
    lo, hi = np.quantile(raw["phi1"][truth], [0.4, 0.6])
    inside = (raw["phi1"] > lo) & (raw["phi1"] < hi)
    lump = np.flatnonzero(truth & inside)
    beside = np.flatnonzero(~truth & inside
                            & (np.abs(raw["phi2"] - np.median(raw["phi2"][lump])) < 0.5))
    extra = rng.choice(beside, size=min(len(beside), len(lump) // 5), replace=False)
    return np.union1d(lump, extra)


def one_sky(key: str, members: int, background: int, seed: int, photometry: bool,
            oracle: bool, width_ends=(1.0, 1.0), phi1_range=(0.0, 1.0),
            pm_box: float | None = None, find_cuts: bool = True,
            parallax_min: float | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Membership probabilities, truth, how far beyond the injected stream's phi1 ends
    each star is (deg; 0 within them) and the motion cuts found, on one sky."""
    info = get_stream(key)
    start, end = (f * info.width_deg for f in width_ends)
    lo, hi = info.phi1_range
    injected = (lo + phi1_range[0] * (hi - lo), lo + phi1_range[1] * (hi - lo))
    cols = synthetic_sky(info.footprint, background,
                         [Injection(info, members, width_deg=start, width_end_deg=end,
                                    giant_fraction=STREAM_GIANT_FRACTION,
                                    phi1_range_deg=injected)],
                         seed=seed, cuts=info.default_cuts)
    # a catalogue pre-selected by parallax and/or by a proper-motion box around the stream
    keep = np.ones(len(cols["ra"]), bool)
    if parallax_min is not None:
        keep &= np.asarray(cols["parallax"], dtype=np.float64) > parallax_min
    if pm_box is not None:
        stream = np.asarray(cols["is_stream"], dtype=bool) & keep
        for name in ("pmra", "pmdec"):
            v = np.asarray(cols[name], dtype=np.float64)
            lo_v, hi_v = np.percentile(v[stream], [1, 99])
            keep &= (v > lo_v - pm_box) & (v < hi_v + pm_box)
    cols = {name: np.asarray(v)[keep] for name, v in cols.items()}
    raw, _ = stream_features(info.frame, cols["ra"], cols["dec"], cols["pmra"],
                             cols["pmdec"], cols["parallax"])
    truth = np.asarray(cols["is_stream"], dtype=bool)
    core = seed_core(raw, truth, np.random.default_rng(seed))
    phot = (cols["phot_g_mean_mag"], cols["bp_rp"]) if photometry else None
    model_cmd = membership._log_cmd
    if oracle:
        membership._log_cmd = lambda cmd, w, control, w_off=None, shift=None: model_cmd(
            cmd, truth.astype(float), control, None, shift)
    cuts = (motion_cuts(info.frame, cols["ra"], cols["dec"], cols["pmra"], cols["pmdec"], raw)
            if find_cuts else [])
    try:
        m = membership.membership_probabilities(raw, core, feature_errors(cols), phot,
                                                base_track=info.detection_track, cuts=cuts)
    finally:
        membership._log_cmd = model_cmd
    beyond = np.maximum(np.maximum(injected[0] - raw["phi1"], raw["phi1"] - injected[1]), 0.0)
    return m.probability, truth, beyond, cuts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", nargs="+",
                    default=["palomar-5", "atlas-aliqa-uma", "orphan-chenab"])
    ap.add_argument("--members", type=int, default=800)
    ap.add_argument("--background", type=int, default=30000)
    ap.add_argument("--skies", type=int, default=5, help="skies per stream (seeds 100...)")
    ap.add_argument("--photometry", choices=["gaia", "none"], default="gaia",
                    help="Gaia G and BP-RP, or astrometry only")
    ap.add_argument("--stream-cmd", choices=["model", "oracle"], default="model",
                    help="the stream's colour-magnitude density from the model's weights, "
                         "or from the injected stars")
    ap.add_argument("--width-ends", nargs=2, type=float, default=[1.0, 1.0],
                    metavar=("A", "B"), help="the injected phi2 width runs from A to B times "
                    "the registry width along phi1 (default 1 1: constant)")
    ap.add_argument("--phi1-range", nargs=2, type=float, default=[0.0, 1.0],
                    metavar=("A", "B"), help="inject the stream over this share of its "
                    "registry track, 0 <= A < B <= 1 (default 0 1: all of it)")
    ap.add_argument("--pm-box", type=float, default=None, metavar="M",
                    help="keep only the stars in a (pmra, pmdec) box around the stream, "
                         "widened by M mas/yr (default: no box)")
    ap.add_argument("--parallax-min", type=float, default=None, metavar="P",
                    help="keep only the stars with parallax > P mas (default: no such cut)")
    ap.add_argument("--ignore-cuts", action="store_true",
                    help="do not look for the catalogue's motion cuts (the model before "
                         "it knew of them)")
    args = ap.parse_args()
    if not 0 <= args.phi1_range[0] < args.phi1_range[1] <= 1:
        ap.error(f"--phi1-range must satisfy 0 <= A < B <= 1, got {args.phi1_range}")
    t0 = time.perf_counter()
    probs, truths = [], []
    print("| stream | sky | members | purity | completeness | field members > 1 deg beyond "
          "the ends | motion cuts found |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for key in args.streams:
        for i in range(args.skies):
            p, truth, beyond, cuts = one_sky(key, args.members, args.background, 100 + i,
                                             args.photometry == "gaia",
                                             args.stream_cmd == "oracle", args.width_ends,
                                             args.phi1_range, args.pm_box,
                                             not args.ignore_cuts, args.parallax_min)
            sel = p >= 0.5
            print(f"| {key} | {i} | {int(sel.sum())} | "
                  f"{np.sum(sel & truth) / max(sel.sum(), 1):.3f} | "
                  f"{np.sum(sel & truth) / max(truth.sum(), 1):.3f} | "
                  f"{int(np.sum(sel & ~truth & (beyond > 1.0)))} | "
                  f"{' '.join(c.column + ('<' if c.side == 'max' else '>') for c in cuts)} |")
            probs.append(p)
            truths.append(truth)
    p, truth = np.concatenate(probs), np.concatenate(truths)
    print(f"\n{len(probs)} skies in {time.perf_counter() - t0:.0f} s; photometry "
          f"{args.photometry}; stream colour-magnitude density: {args.stream_cmd}; "
          f"phi2 width {args.width_ends[0]:g} to {args.width_ends[1]:g} x the registry's; "
          f"injected over {args.phi1_range[0]:g}-{args.phi1_range[1]:g} of the track; "
          f"proper-motion box: {'none' if args.pm_box is None else f'{args.pm_box:g} mas/yr'}; "
          f"parallax > {'-' if args.parallax_min is None else f'{args.parallax_min:g} mas'}"
          f"{', cuts ignored' if args.ignore_cuts else ''}\n")
    print("| membership probability | stars | mean probability | injected fraction |")
    print("|---|---:|---:|---:|")
    which = np.digitize(p, BINS) - 1
    for b in range(len(BINS) - 1):
        sel = which == b
        if sel.any():
            print(f"| {BINS[b]:.2f}-{min(BINS[b + 1], 1.0):.2f} | {int(sel.sum())} | "
                  f"{p[sel].mean():.3f} | {truth[sel].mean():.3f} |")


if __name__ == "__main__":
    main()
