"""Build ray_app/data/galstreams_registry.json from the galstreams package's track files.

galstreams (C. Mateu, BSD-3-Clause) ships, per stream track, a 6-D track ECSV (~10 000 points:
ra, dec, distance, pm_ra_cosdec, pm_dec, radial_velocity), a summary ECSV (end points, pole,
widths) and a master log naming each stream's default track ("On" = 1). Its Python loader fails
on astropy 8/pandas 3, so this script reads the files directly (plain CSV under the ECSV
header) and keeps, per stream: the track resampled to about one point per 1.5 degrees (at
most 80), widths, pole, end points and reference. The five legacy keys' tracks (which are not
all galstreams defaults) are written under "legacy". Run it when galstreams is updated:

    pip download --no-deps galstreams && tar xzf galstreams-*.tar.gz
    python scripts/build_registry.py galstreams-*/galstreams > ray_app/data/galstreams_registry.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

#: registry key -> galstreams tracks (name.reference) joined into its track
LEGACY_TRACKS = {
    "gd-1": ["GD-1.pricewhelan2018"],
    "palomar-5": ["Pal5.pricewhelan2019"],
    "jhelum": ["Jhelum-a.bonaca2019"],
    "orphan-chenab": ["Orphan-Chenab.koposov2019"],
    "atlas-aliqa-uma": ["AAU-ATLAS.li2021", "AAU-AliqaUma.li2021"],
}
STEP_DEG = 1.5
MAX_POINTS = 80


def read_csv_ecsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    rows = list(csv.reader(lines))
    return rows[0], rows[1:]


def read_summary(path: Path) -> dict:
    header, rows = read_csv_ecsv(path)
    return dict(zip(header, rows[0], strict=True))


def resample_track(path: Path) -> dict:
    """The track at about STEP_DEG spacing along its arc length (end points kept)."""
    header, rows = read_csv_ecsv(path)
    t = np.array(rows, dtype=float)
    col = {h: t[:, i] for i, h in enumerate(header)}
    ra, dec = np.radians(col["ra"]), np.radians(col["dec"])
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)
    step = np.degrees(np.arccos(np.clip(np.sum(v[1:] * v[:-1], axis=1), -1, 1)))
    s = np.concatenate([[0.0], np.cumsum(step)])
    n = int(np.clip(np.ceil(s[-1] / STEP_DEG) + 1, 3, MAX_POINTS))
    idx = np.unique(np.searchsorted(s, np.linspace(0, s[-1], n)).clip(0, len(s) - 1))
    out = {"length_deg": round(float(s[-1]), 3)}
    for name, key, nd in (("ra", "ra", 4), ("dec", "dec", 4), ("distance", "distance_kpc", 3),
                          ("pm_ra_cosdec", "pmra", 3), ("pm_dec", "pmdec", 3),
                          ("radial_velocity", "rv", 1)):
        vals = col[name][idx]
        out[key] = [round(float(x), nd) if np.isfinite(x) else None for x in vals]
    return out


def _width(value) -> float | None:
    try:
        w = float(value)
    except (TypeError, ValueError):
        return None
    return round(w, 4) if w > 0 else None


def entry(root: Path, imp: str, track: str, name: str, ref: str, log_widths: list[str]) -> dict:
    stem = root / "tracks" / f"track.{imp}.{name}.{ref}"
    s = read_summary(Path(f"{stem}.summary.ecsv"))

    def pair(prefix, a="ra", b="dec", s=s):
        return [round(float(s[f"{prefix}.{a}"]), 5), round(float(s[f"{prefix}.{b}"]), 5)]

    widths = [_width(s.get(k)) or _width(lw) for k, lw in
              zip(("width_phi2", "width_pm_phi1_cosphi2", "width_pm_phi2"), log_widths,
                  strict=True)]
    return {
        "name": name, "track": track, "reference": ref,
        "type": {"st": "stream", "po": "photometric overdensity",
                 "ep": "stream (endpoints only)"}.get(imp, imp),
        # galstreams' InfoFlags: which of (track, distance, pm, rv) are measured
        "info_flags": s.get("InfoFlags", ""),
        "pole": pair("pole"), "mid": pair("mid"), "end_o": pair("end_o"),
        "end_f": pair("end_f"), "distance_kpc": round(float(s["mid.distance"]), 3),
        "pm_mid": pair("mid", "pm_ra_cosdec", "pm_dec"),
        "width_deg": widths[0], "width_pm_mas_yr": widths[1:],
        "points": resample_track(Path(f"{stem}.ecsv")),
    }


def main(root: str) -> None:
    root = Path(root)
    defaults, by_name_ref = [], {}
    for line in (root / "lib" / "master_log.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        imp, on, track, name, ref = f[0], f[1], f[2], f[3], f[4]
        log_widths = [f[8], f[10], f[12]]
        if not Path(root / "tracks" / f"track.{imp}.{name}.{ref}.summary.ecsv").exists():
            continue
        e = entry(root, imp, track, name, ref, log_widths)
        by_name_ref[f"{name}.{ref}"] = e
        if on == "1" and all(d["name"] != name for d in defaults):
            defaults.append(e)
    defaults.sort(key=lambda r: r["name"].lower())
    legacy = {key: [by_name_ref[t] for t in tracks] for key, tracks in LEGACY_TRACKS.items()}
    out = {"source": "galstreams 1.2.1 (C. Mateu et al.), BSD-3-Clause; default tracks "
                     "(master_log On=1) resampled to ~1.5 deg, and the legacy keys' tracks",
           "streams": defaults, "legacy": legacy}
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
