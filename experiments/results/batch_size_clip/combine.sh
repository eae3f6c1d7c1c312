#!/usr/bin/env bash
# (a.4) of EXPERIMENTS.md: the fixed-threshold runs (committed results of batch_size.yaml) with the
# no-clipping and scaled-threshold runs, paired by seed; writes batch_size_all.png. Run from the
# repository root: bash experiments/results/batch_size_clip/combine.sh
python - <<'EOF'
from trimodal.experiments import results as R, analysis as A, plots
old = [r for r in R.read_csv("experiments/results/batch_size/results.csv", {"clip": "fixed", "tokens_target": 2.0**20})
       if r["rule"] == "sde"]
new = {r["name"]: r for p in ("horizons", "clip") for r in R.read_csv(f"experiments/results/batch_size_{p}/results.csv")
       if r["status"] == "ok" and r.get("clip") != "fixed"}
rows = [r for r in old + list(new.values()) if r["status"] == "ok"]
groups = R.aggregate(rows, ["rule", "clip", "tokens_target", "batch_size"], R.METRICS)
print("\n".join(A.batch_size(groups)[0]))
plots.batch_size(groups, "experiments/results/batch_size_clip/batch_size_all.png")
EOF
