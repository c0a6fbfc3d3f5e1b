"""Write benchmarks/honest_real_set.txt: the real test structures of docs/honest-baseline.md.

Entries of ../shared/data/real/manifest.csv that are readable structures, not deliberately
damaged (``notes`` empty), centrosymmetric, organic, in P-1 or P2₁/c (any setting), one per
``dup_group``, with cell edges up to 20 Å (the spirit of benchmarks/bench_baselines.py),
and whose CIF (first block) has the inversion centre at the origin (``-x,-y,-z`` among its
operators) and at most 40 non-H sites in the asymmetric unit. ``tonto_n-alkanes.cif`` is
left out: its nine alkane blocks would be a fifth of the set. Sorted by manifest atom count.

    python benchmarks/honest_real_set.py > benchmarks/honest_real_set.txt
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

from pathlib import Path

import pandas as pd

from phasenet.io.cif import read_cif
from phasenet.structure import Structure

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared" / "data" / "real"
LEFT_OUT = {"cif/tonto_n-alkanes.cif"}
HEADER = """\
# Issue 12 honest baseline: organic P-1 / P2_1/c structures of ../shared/data/real (manifest: kind=structure,
# readable, notes empty, centrosymmetric, organic, sg 2 or 14, one per dup_group, cell edges <= 20 A,
# inversion centre at the origin (-x,-y,-z among the CIF's operators), <= 40 non-H sites in the asymmetric unit).
# tonto_n-alkanes.cif is left out (nine alkane blocks in one file would be a fifth of the set).
# Made by benchmarks/honest_real_set.py; sorted by manifest atom count. Paths relative to this file."""


def selected(max_edge: float = 20.0, max_non_h: int = 40) -> list[str]:
    m = pd.read_csv(REAL / "manifest.csv")
    m = m[(m.kind == "structure") & m.gemmi_reads.fillna(False).astype(bool) & m.notes.isna()
          & m.centrosymmetric.fillna(False).astype(bool) & m.organic.fillna(False).astype(bool)
          & m.sg_number.isin([2, 14]) & (m.n_atoms >= 4)]
    m = m[m.cell.fillna("").map(lambda c: bool(c) and max(map(float, c.split()[:3])) <= max_edge)]
    m = m.drop_duplicates("dup_group").sort_values(["n_atoms", "file"])
    out = []
    for f in m.file:
        if f in LEFT_OUT:
            continue
        items = [s for s in read_cif(REAL / f) if isinstance(s, Structure)]
        if not items:
            continue
        s = items[0]
        origin_inversion = "-x,-y,-z" in {op.replace(" ", "").lower() for op in s.symops}
        non_h = sum(1 for e in s.atoms.element if str(e).upper() not in ("H", "D"))
        if origin_inversion and non_h <= max_non_h:
            out.append(f)
    return out


if __name__ == "__main__":
    print(HEADER)
    for f in selected():
        print(f"../../shared/data/real/{f}")
