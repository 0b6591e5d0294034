"""Real Gaia DR2 GD-1 field: GD-1 is the most significant candidate, with a usable member list."""

import json

import numpy as np

from ray_app.cli import main


def test_gd1_recovered_from_real_field(shared_data, gd1_field, tmp_path):
    out = tmp_path / "gd1"
    rc = main(["recover", "gd-1", "--input", str(shared_data / "gd1_dr2_widefield.parquet"),
               "--out", str(out), "--engine", "in-process", "--no-ecsv"])
    assert rc == 0
    cands = json.loads((out / "candidates.json").read_text())
    assert cands, "no candidate in the GD-1 field"
    top = max(cands, key=lambda c: c["significance"])
    assert top["index"] == 0
    members = np.load(out / "candidate_members.npz")["candidate_0"]
    truth = set(gd1_field[1]["source_id"].to_numpy().tolist())
    field_truth = truth & set(gd1_field[0]["source_id"].to_numpy().tolist())
    tp = len(set(members.tolist()) & field_truth)
    precision, recall = tp / len(members), tp / len(field_truth)
    print(f"\nGD-1 (real DR2 field): sigma={top['significance']:.2f}, "
          f"{len(members)} members, precision={precision:.3f}, recall={recall:.3f}")
    # the stream's track: members sit on phi2 ~ 0 with GD-1's proper motion
    assert abs(top["centroid"]["phi2"]) < 0.5
    assert recall >= 0.3 and precision >= 0.15
