"""Throughput of phasenet synth: stages on one core, then whole runs with 1 and 2 workers.

    python benchmarks/bench_synth.py -n 200 [--workers 1 2] [--packing dense|fast] [--json]

Stages (one process, ms per structure, wall and CPU time): generation
(``generate_structure``: molecule grown in the cell, then squeezed, with retries;
CPU time also split into growth and compression), structure factors
(``compute_record``), HDF5 writing (``dataset.write_part`` of the records). Whole
runs: ``synth_dataset`` end to end (generation, structure factors, parts, merge).
``--packing``: the ``phasenet.synth.options.PACKINGS`` preset (``phasenet synth --packing``):
dense (the default: grow and squeeze) or fast (growth only).
Also reports the realised volume per non-H atom, non-H atom counts and space
groups, and the load average (the machine is shared: compare CPU times).
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main(argv=None):
    import gemmi

    from phasenet.io import hdf5 as dataset
    from phasenet.pipeline.records import compute_record
    from phasenet.reflections import canonical_hkl
    from phasenet.synth.generate import SynthOptions, generate_structure, synth_dataset
    from phasenet.synth.options import PACKINGS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200, help="structures (default %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--atoms", default="8-50", help="MIN-MAX non-H atoms (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--packing", choices=sorted(PACKINGS), default="dense",
                   help="packing preset (default %(default)s)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    lo, hi = (int(x) for x in a.atoms.split("-"))
    extra = PACKINGS[a.packing]
    o = SynthOptions(seed=a.seed, atoms=(lo, hi), chunk_size=32, **extra)
    load0 = os.getloadavg()

    import phasenet.synth.generate as synth_module
    import phasenet.synth.packing as packing_module
    synth_module.warm_up()
    split = {"grow_in_cell": 0.0, "compress_packing": 0.0}
    modules = {"grow_in_cell": synth_module, "compress_packing": packing_module}

    def timed(name):
        f = getattr(modules[name], name)

        def g(*args, **kw):
            t = time.process_time()
            try:
                return f(*args, **kw)
            finally:
                split[name] += time.process_time() - t
        return f, g

    originals = {}
    for name in split:
        originals[name], g = timed(name)
        setattr(modules[name], name, g)
    try:
        w, c = time.perf_counter(), time.process_time()
        structures = [generate_structure(i, o) for i in range(a.n)]
        gen = ((time.perf_counter() - w) / a.n, (time.process_time() - c) / a.n)
    finally:
        for name, f in originals.items():
            setattr(modules[name], name, f)
    hkl = canonical_hkl()
    w, c = time.perf_counter(), time.process_time()
    records = [compute_record(s, hkl) for s in structures]
    sf = ((time.perf_counter() - w) / a.n, (time.process_time() - c) / a.n)
    with tempfile.TemporaryDirectory() as d:
        w, c = time.perf_counter(), time.process_time()
        for k in range(0, a.n, o.chunk_size):
            part = records[k:k + o.chunk_size]
            dataset.write_part(Path(d) / f"part-{k:06d}.h5", hkl, part, [], len(part), o.compression)
        wr = ((time.perf_counter() - w) / a.n, (time.process_time() - c) / a.n)

    vpa = np.array([gemmi.UnitCell(*s.cell).volume / (len(s.symops) * int((s.atoms.element != "H").sum()))
                    for s in structures])
    heavy = np.array([int((s.atoms.element != "H").sum()) for s in structures])
    cpu = 1000 * (gen[1] + sf[1] + wr[1])
    res = {"n": a.n, "atoms": a.atoms, "packing": a.packing, "cpu_count": os.cpu_count(),
           "generate_ms": 1000 * gen[0], "generate_cpu_ms": 1000 * gen[1],
           "grow_cpu_ms": 1000 * (split["grow_in_cell"] - split["compress_packing"]) / a.n,
           "compress_cpu_ms": 1000 * split["compress_packing"] / a.n,
           "structure_factors_ms": 1000 * sf[0], "structure_factors_cpu_ms": 1000 * sf[1],
           "write_ms": 1000 * wr[0], "write_cpu_ms": 1000 * wr[1],
           "cpu_ms_per_structure": cpu, "estimate_2_workers_structures_per_s": 2 * 1000 / cpu,
           "volume_per_atom_mean": float(vpa.mean()),
           "volume_per_atom_p5_p50_p95": [round(float(x), 2) for x in np.percentile(vpa, [5, 50, 95])],
           "non_h_atoms_mean": float(heavy.mean()),
           "non_h_atoms_p5_p50_p95": [float(x) for x in np.percentile(heavy, [5, 50, 95])],
           "space_groups": dict(Counter(s.space_group for s in structures))}
    for nw in a.workers:
        with tempfile.TemporaryDirectory() as d:
            s = synth_dataset(a.n, Path(d) / "b.h5", SynthOptions(seed=a.seed, atoms=(lo, hi),
                                                                  chunk_size=32, workers=nw, **extra),
                              progress=False)
        res[f"whole_run_{nw}_workers_structures_per_s"] = s.n_structures / s.seconds
    res["loadavg_before"] = [round(x, 2) for x in load0]
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=2) if a.json else
          "\n".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
