"""The result of ``phasenet solve``: phases in the input's setting, the map, the peaks,
and the files they are written to.

:meth:`Solution.write` writes OUT_DIR as a whole: every file goes into a temporary
folder beside it (``.OUT_DIR.partial-*``), which is renamed to OUT_DIR only when all
are written. An OUT_DIR that exists is therefore always complete; ``summary.json`` is
written last inside it, too. An existing OUT_DIR is replaced only with
``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from phasenet.solving.errors import SolveError

#: The files of OUT_DIR, in the order they are written (summary.json last).
FILES = ("solution.mtz", "map.ccp4", "peaks.csv", "solution.res", "summary.txt", "summary.json")


@dataclass(eq=False)
class Solution:
    """Phased reflections (unique, input setting) and what was done to get them."""

    hkl: np.ndarray  # (R, 3) input setting, unique, no absences
    amplitude: np.ndarray  # (R,) F
    e: np.ndarray  # (R,) |E|
    phases: np.ndarray  # (R,) radians, input setting
    fom: np.ndarray | None  # (R,) per-reflection figure of merit, where the method gives one
    cell: tuple
    symops: tuple
    space_group: str
    composition: dict | None
    wavelength: float
    method: str
    runs: list  # every MethodRun as a dict
    summary: dict = field(default_factory=dict)

    # -- derived

    @cached_property
    def sphere(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hkl, F, φ) on the whole sphere, one of each Friedel pair (for maps)."""
        from phasenet.physics.figures_of_merit import expand_phased
        from phasenet.reflections import is_representative

        full, amp, phi = expand_phased(self.hkl, self.amplitude, self.phases, self.symops)
        rep = is_representative(full)
        return full[rep], amp[rep], phi[rep]

    def density(self) -> np.ndarray:
        """ρ(x) over the unit cell (e/Å³, F000 left out) on map.ccp4's grid (steps of at
        most d_min/4)."""
        import gemmi

        from phasenet.evaluation.maps import density_map, grid_size
        from phasenet.reflections import d_spacings

        hkl, amp, phi = self.sphere
        grid = grid_size(self.cell, np.abs(hkl).max(axis=0), float(d_spacings(hkl, self.cell).min()))
        volume = gemmi.UnitCell(*self.cell).volume
        return density_map(hkl, amp, phi, self.cell, grid=grid) * (np.prod(grid) / volume)

    @cached_property
    def peaks(self):
        """The peak table (:func:`phasenet.io.solution.peak_table`): as many peaks as the
        composition has non-H atoms in the asymmetric unit, else those above 3 σ."""
        from phasenet.io.solution import peak_table
        from phasenet.symmetry import symmetry

        hkl, amp, phi = self.sphere
        comp = None
        if self.composition:
            n_ops = len(symmetry(self.symops).rotations)
            comp = {el: n / n_ops for el, n in self.composition.items()}
        return peak_table(hkl, amp, phi, self.cell, self.symops, composition=comp)

    # -- writing

    def write(self, out_dir, overwrite: bool = False) -> dict[str, str]:
        """Write :data:`FILES` into ``out_dir`` (see the module docstring); {name: path}."""
        from phasenet.io.solution import write_ccp4_map, write_mtz, write_peaks_csv, write_res

        out = Path(out_dir)
        if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise SolveError(out, "bad-option", "output folder exists and is not empty (overwrite=True / "
                             "--overwrite replaces it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            hkl, amp, phi = self.sphere
            write_mtz(tmp / "solution.mtz", self.hkl, self.cell, self.symops, self.amplitude,
                      np.degrees(np.mod(self.phases, 2 * np.pi)), fom=self.fom, e=self.e)
            write_ccp4_map(tmp / "map.ccp4", hkl, amp, phi, self.cell, self.symops)
            write_peaks_csv(tmp / "peaks.csv", self.peaks)
            write_res(tmp / "solution.res", self.peaks, self.cell, self.symops,
                      title=f"phasenet solve {Path(self.summary.get('input', '')).name} {self.method}",
                      wavelength=self.wavelength)
            (tmp / "summary.txt").write_text(summary_text(self.summary))
            summary = dict(self.summary, files=list(FILES), n_peaks=int(len(self.peaks)))
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {name: str(out / name) for name in FILES}


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def summary_text(s: dict) -> str:
    """The short text summary (summary.txt and the command's output)."""
    lines = [f"input        {s.get('input', '')}",
             f"space group  {s.get('space_group', '')}  cell {' '.join(f'{c:g}' for c in s.get('cell', ()))}",
             f"reflections  {s.get('n_reflections')} unique (of {s.get('counts', {}).get('measured')} measured), "
             f"d_min {s.get('d_min', float('nan')):.3f} A, completeness {s.get('completeness', float('nan')):.1%}",
             f"methods      {', '.join(s.get('methods', []))}  ({s.get('methods_why', '')})",
             f"best         {s.get('method')}  fom {s.get('fom', float('nan')):.3f} ({s.get('fom_rule', '')})"]
    for r in s.get("runs", []):
        fom, skew = r.get("fom"), r.get("skewness")
        fom_text = "-" if fom is None else f"{fom:.3f}"
        skew_text = "-" if skew is None else f"{skew:.2f}"
        lines.append(f"  {r['method']:<16s} {r['status']:<15s} starts {r['starts']}  fom {fom_text}  "
                     f"skewness {skew_text}  {r['seconds']:.1f} s  {r['note']}")
    for note in s.get("notes", []):
        lines.append(f"note         {note}")
    lines.append(f"time         {s.get('seconds', 0):.1f} s")
    return "\n".join(lines) + "\n"
