"""Which figure of merit picks the right polished start at low resolution (docs/phasing-network.md,
docs/baselines.md): real structures of a dataset (e.g. the honest set, benchmarks/honest_baseline.sh
builds it), the complete sphere of exact amplitudes to d_min, 8 space-group charge-flipping runs each
(the first from all phases 0, the others random), every figure of
:func:`phasenet.physics.figures_of_merit.figures_of_merit` per run; printed: how many structures
have a solved run (map CC >= 0.7 at the best origin) and how many each figure picks a solved one in.

    python benchmarks/polish_figures_of_merit.py real.h5 --d-min 2.0 --n 20
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import argparse
import json

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--d-min", type=float, default=2.0)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--starts", type=int, default=8)
    args = ap.parse_args(argv)

    from phasenet.baselines.polish import P1Expansion, charge_flip_polish
    from phasenet.evaluation.evaluate import truncated
    from phasenet.evaluation.metrics import score_phases
    from phasenet.evaluation.options import EvaluateOptions
    from phasenet.evaluation.problem import DatasetRows
    from phasenet.physics.figures_of_merit import figures_of_merit
    from phasenet.physics.wilson import normalise_amplitudes
    from phasenet.symmetry import symmetry

    ev = EvaluateOptions(reflections="sphere")
    runs = {}
    with DatasetRows(args.dataset, "calc") as src:
        for i in range(min(args.n, len(src.ids))):
            p = truncated(src.problem(i), args.d_min, ev)
            sym = symmetry(p.symops)
            e = np.sqrt(normalise_amplitudes(p.hkl, p.amplitude, p.cell, sym).e2)
            x = P1Expansion(p.hkl, p.cell, sym)
            rng = np.random.default_rng(i)
            runs[i] = []
            for k in range(args.starts):
                start = np.pi * rng.integers(0, 2, len(p)) if k else np.zeros(len(p))
                ph, _ = charge_flip_polish(p.hkl, e, start, p.cell, sym, cycles=200, expansion=x)
                cc = score_phases(p.hkl, p.amplitude, p.phase_true, ph, p.symops)[0].map_cc
                runs[i].append({"map_cc": float(cc), **figures_of_merit(p.hkl, e, ph, p.cell, sym)})
    solved = {i: [r["map_cc"] >= 0.7 for r in v] for i, v in runs.items()}
    out = {"d_min": args.d_min, "structures": len(runs),
           "with_a_solved_run": sum(any(v) for v in solved.values()), "picked_by": {}}
    for key in ("triplet_consistency", "skewness", "sharpness", "negativity"):
        sign = -1 if key == "negativity" else 1
        out["picked_by"][key] = sum(max(v, key=lambda r: sign * r[key])["map_cc"] >= 0.7 for v in runs.values())
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
