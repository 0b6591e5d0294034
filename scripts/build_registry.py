"""Build ray_app/data/galstreams_registry.json from the galstreams package's track files.

galstreams (C. Mateu, BSD-3-Clause) ships one summary ECSV per stream track and a master log
naming each stream's default track ("On" = 1). Its Python loader fails on astropy 8/pandas 3,
so this script reads the files directly (plain CSV under the ECSV header) and keeps, per
stream, what the registry needs: pole, midpoint, end points, distance, proper motion, width,
reference. Run it when galstreams is updated:

    pip download --no-deps galstreams && tar xzf galstreams-*.tar.gz
    python scripts/build_registry.py galstreams-*/galstreams > ray_app/data/galstreams_registry.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def read_summary(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    header, row = next(csv.reader(lines[:1])), next(csv.reader(lines[1:2]))
    return dict(zip(header, row, strict=True))


def main(root: str) -> None:
    root = Path(root)
    rows = []
    for line in (root / "lib" / "master_log.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        imp, on, track, name, ref = f[0], f[1], f[2], f[3], f[4]
        if on != "1":
            continue
        summary = root / "tracks" / f"track.{imp}.{name}.{ref}.summary.ecsv"
        if not summary.exists():
            continue
        s = read_summary(summary)

        def pair(prefix, a="ra", b="dec", s=s):
            return [round(float(s[f"{prefix}.{a}"]), 5), round(float(s[f"{prefix}.{b}"]), 5)]

        width = float(s.get("width_phi2") or 0)
        rows.append({
            "name": name, "track": track, "type": {"st": "stream", "po": "photometric overdensity",
                                                    "ep": "stream (endpoints only)"}.get(imp, imp),
            "reference": ref, "pole": pair("pole"), "mid": pair("mid"),
            "end_o": pair("end_o"), "end_f": pair("end_f"),
            "distance_kpc": round(float(s["mid.distance"]), 3),
            "pm_mid": pair("mid", "pm_ra_cosdec", "pm_dec"),
            "width_deg": round(width, 4) if width > 0 else None,
        })
    rows.sort(key=lambda r: r["name"].lower())
    out = {"source": "galstreams 1.2.1 (C. Mateu et al.), BSD-3-Clause; default tracks "
                     "(master_log On=1), summary files", "streams": rows}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
