"""The shipped phasing network's scores on a small sample of real structures, stage by stage:
the numbers tests/baselines/test_shipped_network.py checks the shipped model against
(docs/phasing-network.md, "A check on every install").

Each structure is read from its CIF, its complete sphere of exact amplitudes to d_min is
computed (as ``phasenet evaluate --reflections sphere`` does) and phased by
:func:`phasenet.predict` with the default options; the map CC at the best origin of each
stage is written to JSON.

    KERAS_BACKEND=jax python benchmarks/phasing_net_sample.py > docs/phasing_net_sample.json
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

HERE = Path(__file__).resolve().parent
#: the sample: files of benchmarks/honest_real_set.txt (P-1, P2₁/c, P2₁/n, P2₁/a)
SAMPLE = ("PyXtal_naphthalene.cif", "cod-tools_1100711.cif", "PyXtal_aspirin.cif",
          "FinalCif_Esser_JW367_0m.cif", "cod-tools_4023987.cif", "StructureFinder_4060317.cif")
D_MINS = (2.0, 1.5)


def sample_problems(real_dir: Path, d_min: float):
    """(file, problem) for each sample file that reads and computes."""
    from phasenet.evaluation.problem import problem_from_structure
    from phasenet.io.cif import read_cif
    from phasenet.structure import Structure

    out = []
    for name in SAMPLE:
        items = [s for s in read_cif(real_dir / name) if isinstance(s, Structure)]
        try:
            out.append((name, problem_from_structure(items[0], d_min).truncate(None)))
        except (IndexError, ValueError):
            continue
    return out


def sample_scores(real_dir: Path, model=None) -> dict:
    from phasenet.baselines.network import NetworkOptions, predict
    from phasenet.evaluation.metrics import score_phases_counting_unphased

    options = NetworkOptions()
    rows = []
    for d in D_MINS:
        named = sample_problems(real_dir, d)
        results = predict([p for _, p in named], model, options)
        for (name, p), res in zip(named, results):
            cc = {}
            for stage, ph in res.stages.items():
                s, _ = score_phases_counting_unphased(p.hkl, p.amplitude, p.phase_true, ph, p.symops)
                cc[stage] = round(float(s.map_cc), 4)
            rows.append({"file": name, "d_min": d, "reflections": len(p), "map_cc": cc})
    return {"options": options.__dict__, "rows": rows}


if __name__ == "__main__":
    real = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data" / "real" / "cif"
    print(json.dumps(sample_scores(real), indent=1))
