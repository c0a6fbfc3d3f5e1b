#!/usr/bin/env bash
# Issue 12, last part: the study's models and the on-the-fly MLP re-measured with the honest
# evaluation (docs/honest-baseline.md). Runs from the repository root; everything goes to $OUT
# (default /tmp/honest_baseline). About 45 minutes on 2 shared CPU cores.
set -euo pipefail
OUT=${OUT:-/tmp/honest_baseline}
PN=${PN:-"python -m phasenet.cli"}
export KERAS_BACKEND=jax
mkdir -p "$OUT"

# 1. the real test set (benchmarks/honest_real_set.txt) on the study's 709 grid
$PN build benchmarks/honest_real_set.txt -o "$OUT/real.h5" --r2-max 50 --normalisation wilson --quiet

# 2. stored synthetic training data (the study's max normalisation; Wilson |E|² for model b),
#    and held-apart synthetic test structures (another seed)
$PN synth -n 20000 --r2-max 50 --normalisation max --seed 0 -o "$OUT/synth_max20k.h5" --quiet
$PN synth -n 20000 --r2-max 50 --normalisation wilson --seed 0 -o "$OUT/synth_wilson20k.h5" --quiet
$PN synth -n 512 --r2-max 50 --normalisation wilson --seed 7 -o "$OUT/synth_test.h5" --quiet

# 3. the three models (709 -> 1024 -> 1024 -> 709)
#  a. the study's MLP: fixed origin, intensity-weighted BCE, stored max-normalised data
$PN train training/study_depth_709.toml --member 0 --data "$OUT/synth_max20k.h5" --out "$OUT/runs/a_study" \
    --backend jax --epochs 20 --set "model.widths=[1024, 1024]" --quiet
#  b. origin-invariant MLP on stored Wilson |E|²
$PN train training/missed_wilson.toml --data "$OUT/synth_wilson20k.h5" --out "$OUT/runs/b_wilson" \
    --backend jax --epochs 20 --set "model.widths=[1024, 1024]" --quiet
#  c. origin-invariant MLP on on-the-fly data (network_input features)
$PN train training/onthefly_mlp709.toml --out "$OUT/runs/c_onthefly" --backend jax --epochs 15 --quiet

# 4. the honest evaluation: real structures, then model c on held-apart synthetic ones
$PN evaluate "$OUT/real.h5" -o "$OUT/eval_real" --reflections sphere \
    --d-min 1.0 --d-min 1.5 --d-min 2.0 --method true --method random --method patterson \
    --method charge-flipping --method "model:$OUT/runs/a_study" --method "model:$OUT/runs/b_wilson" \
    --method "model:$OUT/runs/c_onthefly" --workers 2 --cf-time-limit 30 --timeout 120 --quiet
$PN evaluate "$OUT/synth_test.h5" -o "$OUT/eval_synth" --reflections sphere \
    --d-min 1.0 --d-min 1.5 --d-min 2.0 --method true --method random \
    --method "model:$OUT/runs/c_onthefly" --workers 2 --quiet
uptime
