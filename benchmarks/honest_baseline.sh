#!/usr/bin/env bash
# Issue 12, last part: the study's MLPs and the on-the-fly MLP re-measured with the honest
# evaluation, next to charge flipping, the heavy-atom method and random phases
# (docs/honest-baseline.md). Run from the repository root; everything goes to $OUT.
# About 35 minutes on the 2-core machine shared with other jobs (load 2-10).
set -euo pipefail
OUT=${OUT:-/tmp/honest_baseline}
PN=${PN:-"python -m phasenet.cli"}
PY=${PY:-python}
export KERAS_BACKEND=jax
mkdir -p "$OUT/models"
HERE=$(pwd)

# 1. the real test set (the list is committed; this regenerates it) on the study's 709 grid
$PY benchmarks/honest_real_set.py | diff - benchmarks/honest_real_set.txt
$PN build benchmarks/honest_real_set.txt -o "$OUT/real.h5" --r2-max 50 --normalisation wilson --workers 1 --quiet

# 2. stored synthetic training data (the study's max normalisation; Wilson |E|² for model b)
#    and held-apart synthetic test structures (another seed)
$PN synth -n 20000 --r2-max 50 --normalisation max --seed 0 --workers 2 -o "$OUT/synth_max20k.h5" --quiet
$PN synth -n 20000 --r2-max 50 --normalisation wilson --seed 0 --workers 2 -o "$OUT/synth_wilson20k.h5" --quiet
$PN synth -n 512 --r2-max 50 --normalisation wilson --seed 7 --workers 2 -o "$OUT/synth_test_wilson.h5" --quiet

# 3. the three models, all 709 -> 1024 -> 1024 -> 709
#  a. the study's MLP: fixed origin, intensity-weighted BCE, stored max-normalised intensities
#     (stopped after 8 of 20 epochs: its test loss rises from epoch 3)
$PN train training/study_depth_709.toml --member 0 --data "$OUT/synth_max20k.h5" --out "$OUT/runs/a_study" \
    --backend jax --epochs 8 --set "model.widths=[1024, 1024]" --quiet
#  b. origin-invariant loss, stored Wilson |E|² (log1p), dropout 0.2
$PN train training/missed_wilson.toml --data "$OUT/synth_wilson20k.h5" --out "$OUT/runs/b_wilson" \
    --backend jax --epochs 8 --set "model.widths=[1024, 1024]" --quiet
#  c. origin-invariant loss, on-the-fly synthetic structures, network_input features
$PN train training/onthefly_mlp709.toml --out "$OUT/runs/c_onthefly" --backend jax --epochs 15 --quiet
ln -sfn "$OUT/runs/a_study/00-depth=1" "$OUT/models/a_study_fixed"
ln -sfn "$OUT/runs/b_wilson" "$OUT/models/b_stored_wilson"
ln -sfn "$OUT/runs/c_onthefly" "$OUT/models/c_onthefly"

# 4. the honest evaluation (run from $OUT so that the methods are named model:models/...):
#    classical methods, then the models (seconds), merged into one report
cd "$OUT"
M="--method model:models/a_study_fixed --method model:models/b_stored_wilson --method model:models/c_onthefly"
D="--reflections sphere --d-min 1.0 --d-min 1.5 --d-min 2.0 --workers 2 --no-atom-recovery --quiet"
$PN evaluate real.h5 -o eval_real_classical $D --method true --method random --method patterson \
    --method charge-flipping
$PN evaluate real.h5 -o eval_real_models $D $M
$PN evaluate synth_test_wilson.h5 -o eval_synth $D --method true --method random $M --limit 256
cd "$HERE"
$PY benchmarks/honest_baseline_tables.py "$OUT/eval_real_merged" "$OUT/eval_real_classical" "$OUT/eval_real_models"
$PY benchmarks/honest_baseline_tables.py "$OUT/eval_synth_merged" "$OUT/eval_synth"
uptime
