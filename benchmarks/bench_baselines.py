"""Baselines on real structures: charge flipping and the heavy-atom method against d_min,
and the throughput of the scoring.

Amplitudes are exact (computed from each CIF's atoms by phasenet's structure-factor
code) on the complete sphere of reflections to d_min (one of each Friedel pair),
not on a dataset's [-10, 10] box. Structures: organic P-1 / P2₁/c (``--any-group``: any
centrosymmetric group), readable, undamaged entries of ../shared/data/real/manifest.csv
with at most ``--max-atoms`` sites and cell edges up to ``--max-edge`` Å, the first
``--n`` by atom count (charge flipping: ``--n`` without a heavy atom plus ``--n``/2
with one; heavy-atom method: ``--n`` with one).

    .venv/bin/python benchmarks/bench_baselines.py --n 12 --json

``--compare-recycling`` runs only the heavy-atom method, three ways on the same cases:
``before`` (the method before issue 12: plain symmetry minimum function, asymmetric-unit
rows, no recycling), ``special`` (special positions handled, no recycling) and ``after``
(the default: special positions and E-Fourier recycling), on ``--n`` structures with a
heavy atom plus ``--special`` files whose heavy atom sits on a special position, and
prints a Markdown table (docs/baselines.md):

    .venv/bin/python benchmarks/bench_baselines.py --compare-recycling --n 8 --d-min 1.0 --d-min 1.2 --d-min 1.5 --d-min 2.0
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def pick_structures(n: int, max_atoms: int, max_edge: float, heavy: bool, any_group: bool = False):
    import pandas as pd

    from phasenet.io.cif import read_cif
    from phasenet.baselines.patterson import heavy_atom_plan
    from phasenet.structure import Structure

    m = pd.read_csv(REAL / "manifest.csv")
    m = m[(m.kind == "structure") & m.gemmi_reads.fillna(False).astype(bool) & m.notes.isna()
          & m.centrosymmetric.fillna(False).astype(bool) & (m.n_atoms <= max_atoms) & (m.n_atoms >= 4)]
    if not any_group:  # the study's setting: organic P-1 and P2₁/c (all settings)
        m = m[m.organic.fillna(False).astype(bool) & m.sg_number.isin([2, 14])]
    m = m[m.cell.fillna("").map(lambda c: bool(c) and max(map(float, c.split()[:3])) <= max_edge)]
    m = m.drop_duplicates("dup_group").sort_values(["n_atoms", "file"])
    out = []
    for f in m.file:
        items = [s for s in read_cif(REAL / f) if isinstance(s, Structure)]
        if not items:
            continue
        s = items[0]
        if heavy != heavy_atom_plan(s.atoms, symops=s.symops, cell=s.cell).applicable:
            continue
        out.append(s)
        if len(out) >= n:
            break
    return out


def _cf_case(structure, d_min, seed, time_limit):
    from phasenet.baselines.charge_flipping import ChargeFlippingOptions, charge_flip
    from phasenet.evaluation.metrics import score_phases
    from phasenet.evaluation.problem import problem_from_structure

    p = problem_from_structure(structure, d_min).truncate(None)
    t0 = time.perf_counter()
    r = charge_flip(p.hkl, p.amplitude, p.cell, p.symops, ChargeFlippingOptions(time_limit=time_limit), seed=seed)
    sec = time.perf_counter() - t0
    s, _ = score_phases(p.hkl, p.amplitude, p.phase_true, np.where(np.isfinite(r.phases), r.phases, 0), p.symops)
    return dict(n_refl=len(p), phase_error=s.phase_error, map_cc=s.map_cc, solved=s.solved, seconds=sec)


#: heavy atom on a special position (C2/c Zn on a 2-fold axis; Co, Pt on inversion centres)
SPECIAL = ("cod-tools_1100974.cif", "cod-tools_2204271.cif", "cod-tools_1100711.cif", "NoSpherA2_mohrs_salt_IAM.cif")


def heavy_atom_variants():
    """The three ways ``--compare-recycling`` runs the heavy-atom method."""
    from phasenet.baselines.patterson import HeavyAtomOptions
    from phasenet.baselines.recycling import RecyclingOptions

    return {"before": HeavyAtomOptions(special_positions=False, recycling=RecyclingOptions(cycles=0)),
            "special": HeavyAtomOptions(recycling=RecyclingOptions(cycles=0)),
            "after": HeavyAtomOptions()}


def _ha_case(structure, d_min, options=None):
    from phasenet.evaluation.metrics import score_phases
    from phasenet.baselines.patterson import heavy_atom_phases, heavy_atoms_found
    from phasenet.evaluation.problem import problem_from_structure

    p = problem_from_structure(structure, d_min).truncate(None)
    t0 = time.perf_counter()
    phases, sol = heavy_atom_phases(p.hkl, p.amplitude, p.cell, p.symops, structure.atoms, options)
    sec = time.perf_counter() - t0
    import gemmi

    el = np.array([gemmi.Element(e).name for e in structure.atoms.element])
    found = heavy_atoms_found(sol.frac, structure.atoms.frac[el == sol.element], p.cell, p.symops)
    s, _ = score_phases(p.hkl, p.amplitude, p.phase_true, phases, p.symops)
    return dict(n_refl=len(p), phase_error=s.phase_error, map_cc=s.map_cc, solved=s.solved, seconds=sec,
                found=found, element=sol.element)


def run_cases(kind, structures, d_mins, args):
    from tqdm import tqdm

    from phasenet.util.workers import TimeoutExpired, run_with_timeout

    rows = []
    with tqdm(total=len(structures) * len(d_mins), desc=kind, disable=args.json) as bar:
        for s in structures:
            for d in d_mins:
                base = dict(structure=Path(s.source).name, space_group=s.space_group, n_atoms=len(s.atoms), d_min=d)
                try:
                    if kind == "charge-flipping":
                        r = run_with_timeout(_cf_case, s, d, args.seed, args.time_limit, timeout=args.timeout)
                    elif kind.startswith("heavy-atom:"):
                        r = run_with_timeout(_ha_case, s, d, heavy_atom_variants()[kind.split(":")[1]],
                                             timeout=args.timeout)
                    else:
                        r = run_with_timeout(_ha_case, s, d, timeout=args.timeout)
                    base.update(r, status="ok")
                except TimeoutExpired:
                    base.update(status="timeout", solved=False)
                except RuntimeError as exc:
                    base.update(status=f"failed: {exc}", solved=False)
                rows.append(base)
                bar.update(1)
                if args.log:
                    with open(args.log, "a") as fh:
                        fh.write(json.dumps(dict(base, kind=kind), default=float) + "\n")
    return rows


def aggregate(rows, d_mins):
    out = []
    for d in d_mins:
        g = [r for r in rows if r["d_min"] == d]
        ok = [r for r in g if r["status"] == "ok"]
        out.append(dict(d_min=d, n=len(g), solved=sum(bool(r.get("solved")) for r in g),
                        phase_error_median=float(np.median([r["phase_error"] for r in ok])) if ok else None,
                        map_cc_median=float(np.median([r["map_cc"] for r in ok])) if ok else None,
                        seconds_median=float(np.median([r["seconds"] for r in ok])) if ok else None,
                        found=float(np.mean([r["found"] for r in ok])) if ok and "found" in ok[0] else None))
    return out


def compare_recycling(args, d_mins) -> dict:
    """The heavy-atom method before / with special positions / with recycling, same cases."""
    from phasenet.io.cif import read_cif
    from phasenet.structure import Structure

    structures = pick_structures(args.n, args.max_atoms, args.max_edge, heavy=True, any_group=args.any_group)
    names = {Path(s.source).name for s in structures}
    for f in args.special or SPECIAL:
        if f not in names:
            structures += [x for x in read_cif(REAL / "cif" / f) if isinstance(x, Structure)][:1]
    out = {"structures": [Path(s.source).name for s in structures]}
    for variant in heavy_atom_variants():
        rows = run_cases(f"heavy-atom:{variant}", structures, d_mins, args)
        out[variant] = {"rows": rows, "summary": aggregate(rows, d_mins)}
    return out


def comparison_table(result: dict, d_mins) -> str:
    """Markdown: per d_min, solved (map CC ≥ 0.7) and heavy atoms found (every site of the
    heavy element within 0.5 Å) of each variant, and the median map CC (failed cases: 0)."""
    n = len(result["structures"])
    head = ["d_min (Å)"] + [f"solved {v}" for v in ("before", "special", "after")] + \
        [f"heavy found {v}" for v in ("before", "after")] + [f"median map CC {v}" for v in ("before", "after")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in d_mins:
        rows = {v: [r for r in result[v]["rows"] if r["d_min"] == d] for v in ("before", "special", "after")}
        solved = [sum(bool(r.get("solved")) for r in rows[v]) for v in ("before", "special", "after")]
        found = [sum(r.get("found", 0.0) >= 0.999 for r in rows[v]) for v in ("before", "after")]
        cc = [float(np.median([r.get("map_cc", 0.0) for r in rows[v]])) for v in ("before", "after")]
        lines.append(f"| {d:g} | " + " | ".join(f"{x}/{n}" for x in solved + found)
                     + " | " + " | ".join(f"{x:.2f}" for x in cc) + " |")
    return "\n".join(lines)


def scoring_throughput(n_repeat: int = 20):
    from phasenet.evaluation.maps import atom_recovery
    from phasenet.evaluation.metrics import score_phases
    from phasenet.evaluation.problem import problem_from_structure
    from phasenet.io.cif import read_cif

    s = [x for x in read_cif(REAL / "cif" / "StructureFinder_P-1.cif") if hasattr(x, "atoms")][0]
    p = problem_from_structure(s, 1.0).truncate(None)
    rnd = np.pi * np.random.default_rng(0).integers(0, 2, len(p))
    t0 = time.perf_counter()
    for _ in range(n_repeat):
        score_phases(p.hkl, p.amplitude, p.phase_true, rnd, p.symops)
    t_score = (time.perf_counter() - t0) / n_repeat
    atoms = p.non_h_cell_positions()
    t0 = time.perf_counter()
    for _ in range(max(1, n_repeat // 4)):
        atom_recovery(p.hkl, p.amplitude, p.phase_true, p.cell, atoms)
    t_atoms = (time.perf_counter() - t0) / max(1, n_repeat // 4)
    return dict(structure="StructureFinder_P-1.cif", n_refl=len(p), score_ms=1000 * t_score,
                atom_recovery_ms=1000 * t_atoms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="structures per baseline (default %(default)s)")
    ap.add_argument("--d-min", type=float, action="append", help="resolutions (default 0.8 1.0 1.2 1.5 2.0)")
    ap.add_argument("--max-atoms", type=int, default=30, help="at most this many sites (default %(default)s)")
    ap.add_argument("--max-edge", type=float, default=16.0, help="cell edges up to this (Å, default %(default)s)")
    ap.add_argument("--any-group", action="store_true",
                    help="any centrosymmetric group, inorganic too (default: organic P-1 and P2₁/c only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=60.0, help="charge flipping time limit (s)")
    ap.add_argument("--timeout", type=float, default=120.0, help="hard limit per case (s)")
    ap.add_argument("--skip", choices=["charge-flipping", "heavy-atom"], action="append", default=[])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--log", help="append each case as a JSON line to this file as it finishes")
    ap.add_argument("--compare-recycling", action="store_true",
                    help="only the heavy-atom method: before issue 12 / special positions / + recycling")
    ap.add_argument("--special", action="append",
                    help="with --compare-recycling: CIF names (in cif/) added to the --n structures "
                         "(default: the special-position cases %s)" % ", ".join(SPECIAL))
    args = ap.parse_args(argv)
    d_mins = args.d_min or [0.8, 1.0, 1.2, 1.5, 2.0]
    if not (REAL / "manifest.csv").is_file():
        print(f"bench_baselines: error: {REAL / 'manifest.csv'} not found", file=sys.stderr)
        return 2
    result = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "d_min": d_mins}
    if args.compare_recycling:
        t0 = time.perf_counter()
        result["compare_recycling"] = compare_recycling(args, d_mins)
        result["seconds"] = time.perf_counter() - t0
        result["load_average_end"] = os.getloadavg()
        if args.json:
            print(json.dumps(result, indent=1, default=float))
        else:
            print(comparison_table(result["compare_recycling"], d_mins))
            print(f"\n{len(result['compare_recycling']['structures'])} structures: "
                  + ", ".join(result["compare_recycling"]["structures"]))
            print(f"{result['seconds']:.0f} s; load average start/end:", result["load_average"],
                  result["load_average_end"])
        return 0
    if "charge-flipping" not in args.skip:
        light = pick_structures(args.n, args.max_atoms, args.max_edge, heavy=False, any_group=args.any_group)
        heavy_cf = pick_structures(args.n // 2, args.max_atoms, args.max_edge, heavy=True, any_group=args.any_group)
        rows = run_cases("charge-flipping", light + heavy_cf, d_mins, args)
        result["charge_flipping"] = {"rows": rows, "summary": aggregate(rows, d_mins)}
    if "heavy-atom" not in args.skip:
        heavy = pick_structures(args.n, args.max_atoms, args.max_edge, heavy=True, any_group=args.any_group)
        rows = run_cases("heavy-atom", heavy, d_mins, args)
        result["heavy_atom"] = {"rows": rows, "summary": aggregate(rows, d_mins)}
    result["scoring"] = scoring_throughput()
    result["load_average_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        for key in ("charge_flipping", "heavy_atom"):
            if key in result:
                print(f"\n{key}:")
                for r in result[key]["summary"]:
                    print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.items()))
        print("\nscoring:", result["scoring"])
        print("load average start/end:", result["load_average"], result["load_average_end"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
