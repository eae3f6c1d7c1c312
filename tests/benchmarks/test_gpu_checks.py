"""The GPU check's pure parts, on the CPU: FLOPs from real segment lengths and masked positions
(the model size per the two-thirds rule), and the report kept on disk as it grows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"trimodal_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_flops_follow_segments_and_masked_positions():
    m = load("bench_gpu_mfu")
    a = m.parse(["--depth", "16"])
    mcfg, layout = m.model_config(a), m.layout_of(a)
    L = a.seq_len
    dense = m.step_flops(mcfg, layout, positions=L, seg_sq=L * L, masked={})
    assert abs(dense["total"] / L / 1e9 - 5.12) < 0.01  # 639.7 M non-embedding weights + dense attention
    assert abs(dense["dense"] / L / 6 / 1e6 - 639.7) < 0.1
    halves = m.step_flops(mcfg, layout, positions=L, seg_sq=2 * (L // 2) ** 2, masked={"text": 10})
    assert abs(halves["attention"] - dense["attention"] / 2) < 1e6 * dense["attention"] / 1e9
    assert halves["head"] == 6 * mcfg.dim * layout.text.predictable * 10
    seg = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    assert m.row_stats(seg, seg >= 0) == {"positions": 11, "seg_sq": 9 + 4 + 36}


def test_report_is_on_disk_after_every_part(tmp_path):
    m = load("bench_gpu_mfu")
    rep = m.Report(tmp_path / "mfu.json", status="started")
    rep.set("trainer", {"error": "timeout after 10 s", "step_s": 1.5})
    got = json.loads((tmp_path / "mfu.json").read_text())
    assert got["status"] == "started" and got["trainer"]["step_s"] == 1.5
