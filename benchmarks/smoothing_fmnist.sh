#!/usr/bin/env bash
# Randomized smoothing on Fashion-MNIST (issue: probabilistic certification).
# Trains the base classifiers (Gaussian noise at sigma 0.12, 0.25, 0.5; MACER at 0.25
# fine-tuned from the Gaussian-0.25 model), certifies each on every 50th test image
# (200 inputs) with n0 = 100, n = 10,000, alpha = 0.001, then Cohen's full n = 100,000 on
# 100 inputs (every 100th) for Gaussian-0.25. Every step resumes where it stopped.
# Budget knobs (env): EPOCHS (default 4), MACER_SUBSET (default 20000), MACER_EPOCHS (1),
# N_INPUTS (default 200) and SKIP (default 50) for the n = 10,000 certifications.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/bastion
E=${EPOCHS:-4}
OUT=${OUT:-runs/smoothing}
mkdir -p "$OUT"
for s in 0.12 0.25 0.50; do
  /usr/bin/time -f "train gaussian-$s: %e s" $B train configs/gaussian-$s.yaml \
    --out "$OUT/gaussian-$s" --set epochs=$E
done
# MACER fine-tunes the Gaussian-0.25 model (configs/macer-0.25.yaml says why at lr 0.001).
# The control runs the same fine-tune with lam = 0 (the soft smoothed CE alone, same k = 16
# draws, same cost), so the comparison isolates the radius term from the extra training.
for lam in 12.0 0.0; do
  name=macer-0.25; [ "$lam" = "0.0" ] && name=macer-0.25-lam0
  /usr/bin/time -f "train $name: %e s" $B train configs/macer-0.25.yaml --out "$OUT/$name" \
    --set init_from="$OUT/gaussian-0.25" --set epochs=${MACER_EPOCHS:-1} \
    --set train_subset=${MACER_SUBSET:-20000} \
    --set method_options.lam=$lam
done
for run in gaussian-0.12:0.12 gaussian-0.25:0.25 gaussian-0.50:0.50 macer-0.25:0.25 \
    macer-0.25-lam0:0.25; do
  name=${run%%:*}; sigma=${run##*:}
  /usr/bin/time -f "certify $name n=10000: %e s" $B certify "$OUT/$name" --sigma "$sigma" \
    --n0 100 --n 10000 --alpha 0.001 --n-inputs ${N_INPUTS:-200} --skip ${SKIP:-50} \
    --out "$OUT/$name-n10000.jsonl"
done
# the sequential fixed-radius test on the same inputs (same seed, n as the most draws)
for r in 0.25 0.5; do
  .venv/bin/python benchmarks/sequential_vs_fixed.py "$OUT/gaussian-0.25" \
    "$OUT/gaussian-0.25-n10000.jsonl" --sigma 0.25 --radius $r > "$OUT/sequential-r$r.json"
done
/usr/bin/time -f "certify gaussian-0.25 n=100000: %e s" $B certify "$OUT/gaussian-0.25" \
  --sigma 0.25 --n0 100 --n 100000 --alpha 0.001 --n-inputs 100 --skip 100 \
  --out "$OUT/gaussian-0.25-n100000.jsonl" \
  --compare "$OUT/gaussian-0.12-n10000.jsonl" "$OUT/gaussian-0.25-n10000.jsonl" \
  "$OUT/gaussian-0.50-n10000.jsonl" "$OUT/macer-0.25-n10000.jsonl" \
  "$OUT/macer-0.25-lam0-n10000.jsonl"
# the sequential test against the full n = 100,000 certificates
.venv/bin/python benchmarks/sequential_vs_fixed.py "$OUT/gaussian-0.25" \
  "$OUT/gaussian-0.25-n100000.jsonl" --sigma 0.25 --radius 0.25 > "$OUT/sequential-n100000-r0.25.json"
