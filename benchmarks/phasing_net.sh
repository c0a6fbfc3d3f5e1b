#!/usr/bin/env bash
# Issue 13: train the phasing network on this machine and measure it (docs/phasing-network.md):
# real organic P-1 / P2₁/c structures with exact amplitudes on the complete sphere, the real
# structures whose measured data match their model, and held-apart synthetic structures;
# random, charge flipping, the polish alone (sg-flipping) and the network's stages side by side.
# Run from the repository root; everything goes to $OUT. About 2.5 hours on 2 cores.
set -euo pipefail
OUT=${OUT:-/tmp/phasing_net}
PN=${PN:-"python -m phasenet.cli"}
PY=${PY:-python}
export KERAS_BACKEND=jax
mkdir -p "$OUT/eval"
HERE=$(pwd)

# 1. training (about 2 hours; resumable: rerun the same line after an interruption)
$PN train training/phasing_net_cpu.toml --out "$OUT/run" --backend jax --epochs ${EPOCHS:-16} --quiet \
    || $PN train training/phasing_net_cpu.toml --out "$OUT/run" --backend jax --epochs ${EPOCHS:-16} --resume --quiet

# 2. the data: the honest real set, the measured-data set, held-apart synthetic structures
$PN build benchmarks/honest_real_set.txt -o "$OUT/real.h5" --normalisation wilson --workers 1 --quiet || true
$PN build benchmarks/phasing_net_measured_set.txt -o "$OUT/measured.h5" --normalisation wilson --workers 1 --quiet
$PN synth -n 100 --seed 7 --atoms 6-40 --max-edge 20 --workers 1 -o "$OUT/synth_test.h5" --quiet

# 3. the evaluation (run from $OUT so that the run is named net:run)
cd "$OUT"
D="--d-min 1.0 --d-min 1.5 --d-min 2.0 --workers 1 --no-atom-recovery --quiet"
$PN evaluate real.h5 -o eval/real_classical --reflections sphere $D --method random --method charge-flipping --method sg-flipping
$PN evaluate real.h5 -o eval/real_net --reflections sphere $D --method net:run
$PN evaluate measured.h5 -o eval/measured --amplitudes obs $D --method random --method charge-flipping --method sg-flipping --method net:run
$PN evaluate synth_test.h5 -o eval/synth --reflections sphere $D --method random --method sg-flipping --method net:run --limit 50
cd "$HERE"
$PY benchmarks/honest_baseline_tables.py "$OUT/eval/real_merged" "$OUT/eval/real_classical" "$OUT/eval/real_net"
$PY benchmarks/bench_net_inference.py --dataset "$OUT/real.h5" --model "$OUT/run" --d-min 2.0 --n 16 --json
uptime
