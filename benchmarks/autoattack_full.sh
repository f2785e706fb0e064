#!/usr/bin/env bash
# Full-recipe PGD-AT and TRADES, then AutoAttack vs PGD on the first 1000 test images (issue 17).
# Resumable: training resumes from its checkpoints, each attack's record is kept when complete.
# The run folders are the full suite's (benchmarks/suites/full.yaml), so `bastion bench` reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/full}
for recipe in ${RECIPES:-pgd-at trades}; do
  .venv/bin/python -m bastion.cli train "configs/$recipe.yaml" --out "$OUT/$recipe"
  .venv/bin/python benchmarks/autoattack_full.py "$OUT/$recipe" "benchmarks/out/autoattack-full/$recipe" 1000
done
