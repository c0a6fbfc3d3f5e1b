"""A phasing problem: reflections, their amplitudes, the true phases and the structure.

This is what every phasing method gets (amplitudes, cell, symmetry, composition)
and what the evaluation scores against (true phases, atom positions). It comes
from a dataset row (:func:`problem_from_dataset`, the dataset's reflections) or
from a :class:`~phasenet.structure.Structure` (:func:`problem_from_structure`,
exact amplitudes on a complete sphere of reflections to d_min, one reflection of
each Friedel pair).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

import gemmi

from phasenet.reflections import d_spacings, resolution_mask, sphere_hkl
from phasenet.structure import AtomicModel, Structure
from phasenet.physics.structure_factors import expand_to_unit_cell, structure_factors
from phasenet.symmetry import symmetry


@dataclass(frozen=True)
class PhasingProblem:
    id: str
    hkl: np.ndarray  # (R, 3) int, one of each Friedel pair
    amplitude: np.ndarray  # (R,) |F| (what a method may use)
    phase_true: np.ndarray  # (R,) radians
    cell: tuple  # a b c alpha beta gamma
    symops: tuple[str, ...]
    space_group: str
    atoms: AtomicModel | None  # the true model (composition for methods, positions for scoring)
    intensity: np.ndarray | None = None  # (R,) the dataset's normalised model input, if any

    def __len__(self) -> int:
        return len(self.hkl)

    @property
    def centric_origin(self) -> bool:
        return symmetry(self.symops).has_origin_inversion

    @property
    def d_min(self) -> float:
        return float(d_spacings(self.hkl, self.cell).min()) if len(self.hkl) else float("nan")

    def truncate(self, d_min: float | None) -> "PhasingProblem":
        """Only reflections with d ≥ d_min and non-zero amplitude (absences dropped)."""
        self.check()
        keep = self.amplitude > 0
        if d_min is not None:
            keep &= resolution_mask(self.hkl, self.cell, d_min)
        return replace(self, hkl=self.hkl[keep], amplitude=self.amplitude[keep],
                       phase_true=self.phase_true[keep],
                       intensity=None if self.intensity is None else self.intensity[keep])

    def check(self) -> None:
        """Raise ValueError naming the structure if the cell or arrays are unusable."""
        a, b, c, al, be, ga = (float(x) for x in self.cell)
        vol = gemmi.UnitCell(a, b, c, al, be, ga).volume if min(a, b, c) > 0 else 0.0
        if not (min(a, b, c) > 0 and 0 < min(al, be, ga) and max(al, be, ga) < 180 and vol > 0):
            raise ValueError(f"{self.id}: invalid cell {tuple(self.cell)}")
        if not (len(self.hkl) == len(self.amplitude) == len(self.phase_true)):
            raise ValueError(f"{self.id}: hkl, amplitude and phase_true differ in length")

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
    return PhasingProblem(id=structure.id, hkl=hkl, amplitude=np.abs(f), phase_true=phase,
                          cell=tuple(structure.cell), symops=tuple(structure.symops),
                          space_group=structure.space_group, atoms=structure.atoms)


def atoms_from_table(df) -> AtomicModel:
    """The DataFrame of :func:`phasenet.io.hdf5.read_atoms` as an AtomicModel."""
    u = df[["u11", "u22", "u33", "u12", "u13", "u23"]].to_numpy(dtype=float)
    return AtomicModel(
        label=df["label"].to_numpy(dtype=str), element=df["element"].to_numpy(dtype=str),
        charge=df["charge"].to_numpy(dtype=np.int8), frac=df[["x", "y", "z"]].to_numpy(dtype=float),
        occupancy=df["occupancy"].to_numpy(dtype=float), u_iso=df["u_iso"].to_numpy(dtype=float),
        u_aniso=u, u_defaulted=df["u_defaulted"].to_numpy(dtype=bool))


class DatasetRows:
    """Random access to dataset rows as PhasingProblems (keeps the file open)."""

    def __init__(self, path, amplitudes: str = "calc"):
        from phasenet.io.hdf5 import open_dataset

        if amplitudes not in ("calc", "obs"):
            raise ValueError(f"amplitudes must be 'calc' or 'obs', got {amplitudes!r}")
        self.path = str(path)
        self.amplitudes = amplitudes
        self.h5 = open_dataset(path)
        for key in ("hkl", "intensity_calc", "phase_calc", "structures/cell", "structures/symops", "atoms/offset"):
            if key not in self.h5:
                self.h5.close()
                from phasenet.io.hdf5 import DatasetError
                raise DatasetError(f"{path}: missing '{key}' (not a phasenet schema-1 dataset?)")
        self.hkl = self.h5["hkl"][:].astype(np.int64)
        g = self.h5["structures"]
        self.ids = [x.decode() if isinstance(x, bytes) else str(x) for x in g["id"][:]]
        self.symops = [x.decode() if isinstance(x, bytes) else str(x) for x in g["symops"][:]]
        self.space_groups = [x.decode() if isinstance(x, bytes) else str(x) for x in g["space_group"][:]]
        self.cells = g["cell"][:]
        self.offsets = self.h5["atoms/offset"][:]

    def __len__(self) -> int:
        return len(self.ids)

    def close(self):
        self.h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def atoms(self, i: int) -> AtomicModel:
        a = self.h5["atoms"]
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])

        def col(name):
            v = a[name][lo:hi]
            return np.array([x.decode() if isinstance(x, bytes) else x for x in v], dtype=str) \
                if v.dtype == object else v

        return AtomicModel(label=col("label"), element=col("element"), charge=col("charge").astype(np.int8),
                           frac=col("frac").astype(float), occupancy=col("occupancy").astype(float),
                           u_iso=col("u_iso").astype(float), u_aniso=col("u_aniso").astype(float),
                           u_defaulted=col("u_defaulted").astype(bool))

    def problem(self, i: int) -> PhasingProblem:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: structure {i} out of range (0..{len(self) - 1})")
        i_calc = self.h5["intensity_calc"][i].astype(float)
        if self.amplitudes == "obs":
            i_amp = self.h5["intensity_obs"][i].astype(float)
            i_amp = np.where(np.isfinite(i_amp) & (i_calc > 0), np.maximum(i_amp, 0.0), 0.0)
        else:
            i_amp = i_calc
        return PhasingProblem(
            id=self.ids[i], hkl=self.hkl, amplitude=np.sqrt(np.maximum(i_amp, 0.0)),
            phase_true=self.h5["phase_calc"][i].astype(float), cell=tuple(float(x) for x in self.cells[i]),
            symops=tuple(s for s in self.symops[i].split(";") if s.strip()),
            space_group=self.space_groups[i], atoms=self.atoms(i),
            intensity=self.h5["intensity"][i].astype(np.float32))


def problem_from_dataset(path, index: int, amplitudes: str = "calc") -> PhasingProblem:
    """Structure ``index`` of a dataset (its reflections; 'obs': measured amplitudes, 0 where unmeasured)."""
    with DatasetRows(path, amplitudes) as rows:
        return rows.problem(index)
