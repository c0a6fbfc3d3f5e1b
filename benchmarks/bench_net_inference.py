"""Inference time of the phasing network per structure (docs/phasing-network.md).

In one run, on real structures of the honest set at one d_min (exact amplitudes, complete
sphere), seconds per structure of:

1. **naive**: one ``predict`` call per start and cycle and structure (what a loop over
   starts written around ``model.predict`` does);
2. **batched**: every start of every structure in one call per cycle
   (:func:`phasenet.baselines.network.recycle`, what ``net`` does), the network stages only;
3. **net, all stages**: :func:`phasenet.predict` with the default options (starts, figure of
   merit, polish with a refinement round; at d_min <= 1.3 Å cctbx charge flipping too).

The first call (compilation) is not timed. The load average is printed with the numbers.

    KERAS_BACKEND=jax python benchmarks/bench_net_inference.py --dataset real.h5 --d-min 2.0 --n 16 --json
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="a phasenet dataset of real structures")
    ap.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    ap.add_argument("--d-min", type=float, default=2.0)
    ap.add_argument("--n", type=int, default=16, help="structures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from phasenet.baselines.network import GridSymmetry, NetworkOptions, load_network, predict, recycle
    from phasenet.evaluation.evaluate import truncated
    from phasenet.evaluation.options import EvaluateOptions
    from phasenet.evaluation.problem import DatasetRows
    from phasenet.symmetry import symmetry
    from phasenet.training.inputs import network_input

    opts = NetworkOptions()
    net = load_network(args.model)
    ev = EvaluateOptions(reflections="sphere")
    with DatasetRows(args.dataset, "calc") as src:
        problems = []
        for i in range(len(src.ids)):
            p = truncated(src.problem(i), args.d_min, ev)
            if symmetry(p.symops).number in (2, 14) and len(problems) < args.n:
                problems.append(p)
    grid = np.asarray(net.hkl)
    xs = [network_input(grid, p.hkl, p.amplitude, p.cell, symmetry(p.symops)) for p in problems]
    e2 = np.stack([x.e2 for x in xs])
    mask = np.stack([x.mask for x in xs])
    gs = [GridSymmetry(grid, symmetry(p.symops)) for p in problems]
    recycle(net, e2[:1], mask[:1], starts=opts.starts, cycles=1, seed=0, grid_symmetry=gs[:1])  # compile

    t = time.perf_counter()
    for j in range(len(problems)):
        for s in range(opts.starts):
            phase = np.zeros((1, len(grid)), np.float32)
            for _ in range(opts.cycles):
                prob = net.predict_sign_probability(e2[j:j + 1], mask=mask[j:j + 1], phase=phase)
                phase = (2 * prob - 1) * mask[j:j + 1]
    naive = (time.perf_counter() - t) / len(problems)

    t = time.perf_counter()
    recycle(net, e2, mask, starts=opts.starts, cycles=opts.cycles, seed=0, grid_symmetry=gs)
    batched = (time.perf_counter() - t) / len(problems)

    t = time.perf_counter()
    predict(problems, net, opts)
    full = (time.perf_counter() - t) / len(problems)

    out = {"d_min": args.d_min, "structures": len(problems), "starts": opts.starts, "cycles": opts.cycles,
           "naive_s_per_structure": round(naive, 4), "batched_s_per_structure": round(batched, 4),
           "speedup_batched_vs_naive": round(naive / batched, 1),
           "net_all_stages_s_per_structure": round(full, 3), "load_average": os.getloadavg()[0]}
    print(json.dumps(out, indent=1) if args.json else
          "\n".join(f"{k:32s} {v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
