"""results.csv read back into typed rows (to compare a committed report's runs with newer ones)."""

from __future__ import annotations

import math

from trimodal.experiments import results as R


def test_read_csv_round_trips_write_csv_and_fills_missing_point_columns(tmp_path):
    rows = [{"name": "sde-B4-s0", "status": "ok", "reason": "", "seed": 0, "rule": "sde", "batch_size": 4,
             "val_elbo": 3.0439694479175983, "steps": 2048, "lr": 0.0015},
            {"name": "sde-B4-s1", "status": "failed", "reason": "error: boom", "seed": 1, "rule": "sde", "batch_size": 4}]
    path = R.write_csv(rows, str(tmp_path / "results.csv"), ("rule", "batch_size"))
    back = R.read_csv(path, point={"clip": "fixed", "rule": "none"})
    assert back[0]["val_elbo"] == rows[0]["val_elbo"] and back[0]["lr"] == 0.0015
    assert back[0]["seed"] == 0 and isinstance(back[0]["batch_size"], int) and back[0]["steps"] == 2048
    assert back[0]["clip"] == "fixed" and back[0]["rule"] == "sde"  # a column present is not overwritten
    assert back[1]["reason"] == "error: boom" and "val_elbo" not in back[1]
    groups = R.aggregate(back, ["rule", "clip", "batch_size"], ["val_elbo"])
    assert len(groups) == 1 and groups[0]["n"] == 1 and groups[0]["val_elbo"][0] == rows[0]["val_elbo"]
    assert math.isnan(groups[0]["val_elbo"][1])
