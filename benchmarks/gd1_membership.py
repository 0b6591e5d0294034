"""GD-1 members on real Gaia DR2 data against the photometric member list, and what the list
lets an astrometry-only method reach.

The truth list (tests/data/gd1_dr2_members.parquet, Price-Whelan & Bonaca 2018 selection) was
drawn with a proper-motion box *and* a Pan-STARRS colour-magnitude polygon, so it can only hold
stars that have Pan-STARRS photometry in the field file. Prints three tables:

1. *Member lists*: the job's members (membership probability >= 0.5) and persistence core,
   astrometry only and with Pan-STARRS g, g-i, scored against the list over all stars and
   within the list's photometric coverage (the stars that have g and i).
2. *Where GD-1 is*: stars within 0.5 deg of the fitted track and 1 mas/yr of its proper
   motion, against the same count expected from the field 1-4 deg off the track, for stars
   with and without photometry: the stream's excess in each half.
3. *Supervised ceilings*: a kNN classifier trained on the truth list itself (5-fold cross
   validation; the best of a small grid of feature scales and k, and the best threshold, all
   chosen on the list: an upper bound, not a method) on astrometric features.

Usage: python benchmarks/gd1_membership.py [--data tests/data]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from ray_app.engine.engines import InProcessEngine
from ray_app.pipeline.params import RecoverParams
from ray_app.pipeline.runner import run_recovery

PHOTOMETRY = {"astrometry only": "none",
              "Pan-STARRS g, g-i": "g_mean_psf_mag,g_mean_psf_mag-i_mean_psf_mag"}


def in_coverage(cols: dict) -> np.ndarray:
    """The stars the list could hold: those with Pan-STARRS g and i."""
    return np.isfinite(cols["g_mean_psf_mag"]) & np.isfinite(cols["i_mean_psf_mag"])


def scores(sel: np.ndarray, truth: np.ndarray) -> tuple[int, float, float, float]:
    tp = int(np.sum(sel & truth))
    n, t = int(sel.sum()), int(truth.sum())
    return n, tp / max(n, 1), tp / t, 2 * tp / (n + t)


def run_job(path: Path, photometry: str, out: Path) -> tuple[dict, dict]:
    run_recovery(RecoverParams(stream_key="gd-1", input_path=str(path), out_dir=str(out),
                               write_ecsv=False, photometry=photometry), InProcessEngine())
    t = pq.read_table(out / "stars.parquet")
    stars = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    cands = json.loads((out / "candidates.json").read_text())
    return stars, cands[0]


def member_table(path: Path, truth_ids: np.ndarray, tmp: Path) -> tuple[dict, dict]:
    print("| member list | stars | precision | recall | F1 | within coverage: stars | "
          "precision | recall | F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = None
    for name, spec in PHOTOMETRY.items():
        stars, cand = run_job(path, spec, tmp / spec.replace(",", "_"))
        first = first or (stars, cand)
        truth = np.isin(stars["source_id"], truth_ids)
        covered = in_coverage(stars)
        rows = [(f"members, {name}", stars["candidate"] == 0)]
        if spec == "none":
            rows.insert(0, ("persistence core", stars["core_candidate"] == 0))
        for label, sel in rows:
            a, b = scores(sel, truth), scores(sel & covered, truth)
            print(f"| {label} | {a[0]} | {a[1]:.3f} | {a[2]:.3f} | {a[3]:.3f} | {b[0]} | "
                  f"{b[1]:.3f} | {b[2]:.3f} | {b[3]:.3f} |")
    return first


def excess_table(stars: dict, cand: dict, truth_ids: np.ndarray) -> None:
    nodes = cand["track"]
    phi1 = [n["phi1"] for n in nodes]

    def resid(name):
        return stars[name] - np.interp(stars["phi1"], phi1, [n[name] for n in nodes])

    d2 = resid("phi2")
    pm_ok = np.hypot(resid("pm_phi1_cosphi2"), resid("pm_phi2")) < 1.0
    on, off = (np.abs(d2) < 0.5) & pm_ok, (np.abs(d2) > 1) & (np.abs(d2) < 4) & pm_ok
    covered = in_coverage(stars)
    truth = np.isin(stars["source_id"], truth_ids)
    print("\n| stars | in the field | on the track (1 deg band, stream's motion) | "
          "expected from the field | excess | listed members on the track |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, half in (("with Pan-STARRS g and i", covered), ("without", ~covered)):
        n_on, n_off = int(np.sum(on & half)), int(np.sum(off & half))
        expected = n_off / 6.0  # the off band is 6 deg wide, the on band 1 deg
        print(f"| {label} | {int(half.sum())} | {n_on} | {expected:.0f} | "
              f"{n_on - expected:.0f} +- {np.sqrt(n_on + n_off / 36.0):.0f} | "
              f"{int(np.sum(on & half & truth))} |")


def knn_ceiling(X: np.ndarray, y: np.ndarray, n_truth: int, rng) -> float:
    """Best cross-validated F1 of a kNN vote trained on the labels (grid and threshold
    chosen on the labels too)."""
    best = 0.0
    fold = rng.integers(0, 5, len(X))
    for phi1_s, phi2_s, pm_s in ((5, 0.2, 0.4), (5, 0.4, 0.8), (10, 0.4, 0.8), (5, 0.2, 0.8),
                                 (10, 0.2, 0.4)):
        scale = np.array([phi1_s, phi2_s, pm_s, pm_s, 0.5, 0.5][:X.shape[1]])
        Z = X / scale
        for k in (15, 40):
            vote = np.zeros(len(Z))
            for f in range(5):
                train, test = fold != f, fold == f
                _, idx = cKDTree(Z[train]).query(Z[test], k=k)
                vote[test] = y[train][idx].mean(axis=1)
            for th in np.unique(vote)[1:]:
                sel = vote >= th
                best = max(best, 2 * np.sum(sel & y) / (sel.sum() + n_truth))
    return best


def ceiling_table(field: dict, truth_ids: np.ndarray) -> None:
    truth = np.isin(field["source_id"], truth_ids)
    covered = in_coverage(field)
    base = ["phi1", "phi2", "pm_phi1", "pm_phi2", "parallax"]
    print("\n| supervised kNN on the truth list (5-fold CV, best of 10 settings) | all stars | "
          "within coverage |")
    print("|---|---:|---:|")
    for label, names in (("phi1, phi2, both proper motions, parallax", base),
                         ("the same + parallax_error (a brightness proxy)",
                          base + ["parallax_error"])):
        X = np.column_stack([field[n] for n in names]).astype(np.float64)
        f_all = knn_ceiling(X, truth, int(truth.sum()), np.random.default_rng(0))
        f_cov = knn_ceiling(X[covered], truth[covered], int(truth.sum()),
                            np.random.default_rng(0))
        print(f"| {label} | {f_all:.3f} | {f_cov:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "tests" /
                                          "data"))
    args = ap.parse_args()
    path = Path(args.data) / "gd1_dr2_widefield.parquet"
    t = pq.read_table(path)
    field = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    truth_ids = pq.read_table(Path(args.data) / "gd1_dr2_members.parquet")[
        "source_id"].to_numpy()
    print(f"GD-1 DR2 field: {len(field['source_id'])} stars, "
          f"{int(np.isin(field['source_id'], truth_ids).sum())} listed members, "
          f"{int(np.sum(np.isfinite(field['g_mean_psf_mag'])))} with Pan-STARRS g\n")
    with tempfile.TemporaryDirectory() as tmp:
        stars, cand = member_table(path, truth_ids, Path(tmp))
    excess_table(stars, cand, truth_ids)
    ceiling_table(field, truth_ids)


if __name__ == "__main__":
    main()
