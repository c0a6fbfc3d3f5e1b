"""One dataset row per structure: structure factors, labels, measurements, input.

:func:`compute_record` is the whole per-structure computation of a build: unit
cell contents, F on the canonical grid, sign labels, measured intensities merged
onto the grid, and the normalised model input. A :class:`StructureRecord` is the
structure's :class:`~phasenet.reflection_data.ReflectionData` (what the dataset row
stores) plus the structure and the values of its ``structures`` table row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

import gemmi

from phasenet.physics.merging import MergedObservations, merge_onto_grid
from phasenet.physics.normalisation import NormalisationResult, normalise
from phasenet.reflection_data import ReflectionData
from phasenet.reflections import reciprocal_s2
from phasenet.structure import Structure
from phasenet.physics.structure_factors import expand_to_unit_cell, form_factors, structure_factors
from phasenet.symmetry import symmetry

#: Sign label values.
SIGN_PLUS, SIGN_MINUS, NO_SIGN = 1, 0, -1


@dataclass(frozen=True, eq=False, kw_only=True)
class StructureRecord(ReflectionData):
    """One dataset row as computed: the reflection data (float32 ``intensity_calc``
    |F|², ``phase_calc`` radians in (-π, π], ``intensity_obs`` NaN where not measured,
    ``intensity`` the normalised model input, int8 ``sign``: 1 phase 0, 0 phase π,
    -1 no label) of ``structure``, and its metadata."""

    structure: Structure
    centrosymmetric: bool
    centric_origin: bool  # an inversion centre at the origin: signs are labels
    n_atoms_cell: int
    formula: str
    norm: NormalisationResult
    merged: MergedObservations | None


def hill_formula(elements, occupancy) -> str:
    """Hill-order formula of the asymmetric unit (occupancy-weighted)."""
    counts: dict[str, float] = defaultdict(float)
    for e, o in zip(elements, occupancy):
        counts[str(e)] += float(o)
    order = (["C", "H"] if "C" in counts else []) + sorted(
        e for e in counts if not ("C" in counts and e in ("C", "H")))
    parts = []
    for e in order:
        n = round(counts[e], 2)
        parts.append(e if n == 1 else f"{e}{n:g}")
    return " ".join(parts)


def compute_record(structure: Structure, hkl: np.ndarray, normalisation: str = "linreg") -> StructureRecord:
    """Everything a dataset stores for one structure (raises ValueError on failure)."""
    ops = symmetry(structure.symops)
    contents = expand_to_unit_cell(structure)
    origin = ops.has_origin_inversion
    f = structure_factors(structure, hkl, contents, real=origin)

    absent = ops.systematic_absences(hkl)
    f[absent] = 0.0
    centro = ops.is_centrosymmetric
    amp2 = (f.real**2 + f.imag**2)
    with np.errstate(over="ignore", invalid="ignore"):
        bad = not np.isfinite(amp2).all() or amp2.max() > np.finfo(np.float32).max
    if bad:
        raise ValueError("overflow: displacement parameters far from positive definite"
                         + (f" ({'; '.join(structure.notes)})" if structure.notes else ""))
    if origin:  # F is real
        negative = f.real < 0
        phase = np.where(negative, np.pi, 0.0)
        sign = np.where(negative, SIGN_MINUS, SIGN_PLUS).astype(np.int8)
        sign[absent] = NO_SIGN
    else:
        phase = np.angle(f)
        sign = np.full(len(hkl), NO_SIGN, dtype=np.int8)

    merged = None
    i_obs = np.full(len(hkl), np.nan)
    if structure.observations is not None:
        merged = merge_onto_grid(structure.observations, ops.rotations, hkl,
                                 gemmi.UnitCell(*structure.cell))
        i_obs = merged.intensity

    kwargs = {}
    if normalisation == "wilson":
        stol2 = reciprocal_s2(hkl, structure.cell) / 4.0
        ff = form_factors(contents.types, stol2)  # (T, R)
        w_type = np.bincount(contents.type_index, weights=contents.weight, minlength=len(contents.types))
        kwargs = dict(stol2=stol2, sum_f2=(w_type[:, None] * ff**2).sum(axis=0),
                      epsilon=ops.epsilon(hkl))
    norm = normalise(normalisation, amp2, i_obs, absent=absent, **kwargs)

    atoms = structure.atoms
    return StructureRecord(
        hkl=hkl,
        cell=structure.cell,
        symops=structure.symops,
        space_group=structure.space_group,
        structure=structure,
        intensity_calc=amp2.astype(np.float32),
        phase_calc=phase.astype(np.float32),
        intensity_obs=i_obs.astype(np.float32),
        intensity=norm.intensity.astype(np.float32),
        sign=sign,
        centrosymmetric=centro,
        centric_origin=origin,
        n_atoms_cell=len(contents.frac),
        formula=hill_formula(atoms.element, atoms.occupancy),
        norm=norm,
        merged=merged,
    )
