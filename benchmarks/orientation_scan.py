"""What the orientation scan of a blind region costs and buys, on the real GD-1 field.

For blind cones over the real Gaia DR2 GD-1 field (tests/data) with no frame given, runs the
job with 1 (isotropic), 4, 8 (default) and 16 scan orientations and prints the most
significant structure's sigma, whether it is named GD-1, the frames searched and the
wall time (in-process engine).

Usage: python benchmarks/orientation_scan.py [--data tests/data]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ray_app.engine.engines import InProcessEngine
from ray_app.pipeline.params import RecoverParams
from ray_app.pipeline.runner import run_recovery


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "tests" /
                                          "data"))
    args = ap.parse_args()
    field = str(Path(args.data) / "gd1_dr2_widefield.parquet")
    engine = InProcessEngine("cpu")
    print("| cone radius (deg) | stars | orientations | frames searched | top sigma | "
          "named | seconds |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for radius in (25, 10):
        for n in (1, 4, 8, 16):
            out = Path(tempfile.mkdtemp()) / "o"
            params = RecoverParams(stream_key=None, input_path=field, out_dir=str(out),
                                   region={"cone": {"center": [146.4, 33.2],
                                                    "radius": radius}},
                                   orientations=n, write_ecsv=False)
            t0 = time.perf_counter()
            s = run_recovery(params, engine)
            secs = time.perf_counter() - t0
            sig = s.metadata["significance"]
            named = s.candidates[0]["match"]["key"] if s.candidates and \
                s.candidates[0]["match"] else "-"
            print(f"| {radius} | {s.n_stars} | {n} | {sig['frames_searched']} | "
                  f"{sig['max_sigma']:.2f} | {named} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
