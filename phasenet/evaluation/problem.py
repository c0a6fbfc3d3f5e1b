"""A phasing problem: reflection data, which amplitudes a method gets, and the structure.

This is what every phasing method gets (amplitudes, cell, symmetry, composition)
and what the evaluation scores against (true phases, atom positions): a
:class:`~phasenet.reflection_data.ReflectionData` plus the id and the atomic model.
It comes from a dataset row (:func:`problem_from_dataset`, the dataset's reflections) or
from a :class:`~phasenet.structure.Structure` (:func:`problem_from_structure`,
exact amplitudes on a complete sphere of reflections to d_min, one reflection of
each Friedel pair).

**What a method is given** (:attr:`PhasingProblem.given`): every reflection that is not a
systematic absence of the space group and has an amplitude from the chosen source —
'calc': every one (exact amplitudes); 'obs': every *measured* one, weak ones included
(I_obs ≤ 0 is given as amplitude 0, a measurement of "weak"; unmeasured reflections are
not given). :meth:`PhasingProblem.truncate` keeps exactly the given reflections with
d ≥ d_min, and the amplitudes of 'obs' are computed from the measurements alone (never
from ``intensity_calc``), so a method may be handed a problem without ``intensity_calc``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

import gemmi

from phasenet.io.hdf5 import DatasetError, DatasetReader
from phasenet.reflection_data import AMPLITUDE_SOURCES, ReflectionData
from phasenet.reflections import is_representative, resolution_mask, sphere_hkl
from phasenet.structure import AtomicModel, Structure
from phasenet.physics.structure_factors import expand_to_unit_cell, structure_factors
from phasenet.symmetry import symmetry


@dataclass(frozen=True, eq=False)
class PhasingProblem:
    """Reflection data, which amplitudes a method gets (``amplitude_source`` 'calc' or 'obs'),
    and the true model.

    ``hkl``, ``cell``, ``symops``, ``space_group``, ``amplitude`` (|F|, what a method may
    use), ``phase_true`` (radians) and ``intensity`` (the normalised model input, None
    where there is none) are read from ``reflections``. Methods return new problems.
    """

    id: str
    reflections: ReflectionData  # one of each Friedel pair; intensity_calc and phase_calc set
    atoms: AtomicModel | None  # the true model (composition for methods, positions for scoring)
    amplitude_source: str = "calc"  # |F| from intensity_calc, or 'obs': measured (0 where unmeasured)

    def __post_init__(self):
        if self.amplitude_source not in AMPLITUDE_SOURCES:
            raise ValueError(f"amplitude_source must be 'calc' or 'obs', got {self.amplitude_source!r}")

    def __len__(self) -> int:
        return len(self.reflections)

    @property
    def hkl(self) -> np.ndarray:
        return self.reflections.hkl

    @property
    def cell(self) -> tuple:
        return self.reflections.cell

    @property
    def symops(self) -> tuple[str, ...]:
        return self.reflections.symops

    @property
    def space_group(self) -> str:
        return self.reflections.space_group

    @cached_property
    def given(self) -> np.ndarray:
        """(R,) bool: reflections whose amplitude a method is given: not systematically
        absent, and (amplitudes 'calc') computed or ('obs') measured, weak ones included."""
        r = self.reflections
        values = r.intensity_obs if self.amplitude_source == "obs" else r.intensity_calc
        if values is None:
            raise ValueError(f"{self.id}: no intensity_{self.amplitude_source}: amplitudes "
                             f"{self.amplitude_source!r} are not available")
        given = np.isfinite(np.asarray(values, dtype=np.float64)) & ~r.absent
        return _frozen_copy(given)

    @cached_property
    def amplitude(self) -> np.ndarray:
        """(R,) float64 |F| a phasing method may use: √max(I, 0) of the amplitude source
        where :attr:`given`, 0 elsewhere ('obs' never reads ``intensity_calc``)."""
        r = self.reflections
        values = r.intensity_obs if self.amplitude_source == "obs" else r.intensity_calc
        given = self.given
        i = np.where(given, np.asarray(values, dtype=np.float64), 0.0)
        return _frozen_copy(np.sqrt(np.maximum(np.nan_to_num(i), 0.0)))

    @cached_property
    def phase_true(self) -> np.ndarray:
        """(R,) float64 radians."""
        return _frozen_copy(self.reflections.phase_calc, np.float64)

    @property
    def intensity(self) -> np.ndarray | None:
        return self.reflections.intensity

    @property
    def centric_origin(self) -> bool:
        return symmetry(self.symops).has_origin_inversion

    @property
    def d_min(self) -> float:
        return self.reflections.d_min

    def select(self, which) -> "PhasingProblem":
        """The problem on the reflections ``which`` (a boolean mask or indices)."""
        return replace(self, reflections=self.reflections.select(which))

    def truncate(self, d_min: float | None) -> "PhasingProblem":
        """Only the :attr:`given` reflections with d ≥ d_min: systematic absences and
        (amplitudes 'obs') unmeasured reflections dropped, measured weak ones kept."""
        self.check()
        return replace(self, reflections=self.reflections.select(self.given).truncate(d_min))

    def check(self) -> None:
        """Raise ValueError naming the structure if the cell is unusable."""
        a, b, c, al, be, ga = self.cell
        vol = gemmi.UnitCell(a, b, c, al, be, ga).volume if min(a, b, c) > 0 else 0.0
        if not (min(a, b, c) > 0 and 0 < min(al, be, ga) and max(al, be, ga) < 180 and vol > 0):
            raise ValueError(f"{self.id}: invalid cell {tuple(self.cell)}")

    def structure(self) -> Structure:
        if self.atoms is None:
            raise ValueError(f"{self.id}: no atomic model")
        return Structure(source=self.id, block="", cell=tuple(self.cell), symops=tuple(self.symops),
                         space_group=self.space_group, sg_number=0, atoms=self.atoms)

    def non_h_cell_positions(self) -> np.ndarray:
        """Fractional coordinates of all non-H atoms of the unit cell."""
        s = self.structure()
        heavy = ~np.isin(s.atoms.element, ["H", "D"])
        if not heavy.any():
            return np.zeros((0, 3))
        sub = replace(s, atoms=select_atoms(s.atoms, heavy))
        return expand_to_unit_cell(sub).frac


def _frozen_copy(a, dtype=None) -> np.ndarray:
    out = np.array(a, dtype=dtype)
    out.setflags(write=False)
    return out


def select_atoms(atoms: AtomicModel, mask) -> AtomicModel:
    mask = np.asarray(mask)
    return AtomicModel(*(getattr(atoms, f)[mask] for f in AtomicModel.__dataclass_fields__))


def problem_from_structure(structure: Structure, d_min: float) -> PhasingProblem:
    """Exact amplitudes and phases of ``structure`` on the complete sphere to ``d_min``."""
    hkl = sphere_hkl(structure.cell, d_min)
    ops = symmetry(structure.symops)
    f = structure_factors(structure, hkl, real=ops.has_origin_inversion, dtype=np.float64)
    absent = ops.systematic_absences(hkl)
    f[absent] = 0
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(f).all() or np.abs(f).max() > np.finfo(np.float32).max ** 0.5:
            raise ValueError(f"{structure.id}: structure factors overflow (displacement parameters far "
                             f"from positive definite{': ' + '; '.join(structure.notes) if structure.notes else ''})")
    phase = np.where(f.real < 0, np.pi, 0.0) if ops.has_origin_inversion else np.angle(f)
    reflections = ReflectionData(hkl=hkl, cell=structure.cell, symops=structure.symops,
                                 space_group=structure.space_group,
                                 intensity_calc=f.real**2 + f.imag**2, phase_calc=phase)
    return PhasingProblem(id=structure.id, reflections=reflections, atoms=structure.atoms)


class DatasetRows:
    """Random access to a dataset's rows as PhasingProblems (keeps the file open).

    ``dataset`` is the open :class:`~phasenet.io.hdf5.DatasetReader`.
    """

    def __init__(self, path, amplitudes: str = "calc"):
        if amplitudes not in AMPLITUDE_SOURCES:
            raise ValueError(f"amplitudes must be 'calc' or 'obs', got {amplitudes!r}")
        self.amplitudes = amplitudes
        self.dataset = DatasetReader(path)
        try:
            self.dataset.require("hkl", "intensity_calc", "phase_calc", "structures/cell",
                                 "structures/symops", "atoms/offset")
        except DatasetError:
            self.dataset.close()
            raise
        self.path = str(self.dataset.path)
        self.hkl = self.dataset.hkl.astype(np.int64)  # (R, 3), shared by the problems
        self.hkl.setflags(write=False)

    @property
    def ids(self) -> np.ndarray:
        return self.dataset.ids

    @property
    def space_groups(self) -> np.ndarray:
        return self.dataset.column("space_group")

    def __len__(self) -> int:
        return len(self.dataset)

    def close(self):
        self.dataset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def problem(self, i: int) -> PhasingProblem:
        r = self.dataset.reflections(i)
        return PhasingProblem(id=str(self.ids[i]), reflections=replace(r, hkl=self.hkl),
                              atoms=self.dataset.atoms(i), amplitude_source=self.amplitudes)


def problem_from_dataset(path, index: int, amplitudes: str = "calc") -> PhasingProblem:
    """Structure ``index`` of a dataset (its reflections; 'obs': measured amplitudes, 0 where unmeasured)."""
    with DatasetRows(path, amplitudes) as rows:
        return rows.problem(index)
