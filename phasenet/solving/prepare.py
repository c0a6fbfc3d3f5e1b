"""From measured data to what a phasing method is given, with the checks on the way.

:func:`prepare` does, in order:

1. **symmetry check**: the space group must be one phasenet can write back (a SHELX
   lattice type; every tabulated group is), else ``unsupported-space-group``;
2. **merging** of symmetry equivalents and Friedel mates (the Laue group; weighted by
   1/σ² when every σ is positive, :func:`phasenet.physics.merging.merge_onto_grid`);
3. **consistency checks** of cell and data: indices that imply d < :data:`MIN_D` Å (no
   diffraction experiment reaches that: the cell is too small for the indices), and
   systematic absences that are strong (more than :data:`MAX_STRONG_ABSENT` of the
   reflections the space group makes absent measured above :data:`STRONG_ABSENT_SIGMA` σ,
   or above the mean intensity where σ is unknown: a wrong cell or space group) raise
   ``inconsistent-cell``; the absences are then dropped;
4. **I → F**: negative intensities (background noise on weak reflections) count as 0, F
   = √max(I, 0) (the simple treatment; the count is reported);
5. **truncation** at ``d_min`` if asked (the count dropped and the new d_min reported);
6. **too few reflections**: fewer than :data:`MIN_REFLECTIONS` unique reflections left
   raise ``too-few-reflections``;
7. **Wilson |E|**: :func:`phasenet.physics.wilson.normalise_amplitudes`, with the
   composition when known (a Wilson plot), else shell by shell;
8. **reindexing** to the reference setting (:func:`phasenet.settings.reference_setting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from phasenet.reflections import d_spacings, laue_asu_keys, sphere_hkl
from phasenet.settings import SettingChange, reference_setting
from phasenet.solving.errors import SolveError
from phasenet.solving.inputs import MeasuredData
from phasenet.symmetry import symmetry

#: Fewest unique reflections a phasing run is started on.
MIN_REFLECTIONS = 100
#: Indices that imply d below this (Å) mean the cell is wrong for them.
MIN_D = 0.3
#: Absent reflections count as strong above this I/σ ...
STRONG_ABSENT_SIGMA = 5.0
#: ... and more than this fraction of them strong (at least MIN_ABSENT_CHECKED measured) is an error.
MAX_STRONG_ABSENT = 0.3
MIN_ABSENT_CHECKED = 5


@dataclass(frozen=True)
class PreparedData:
    """Unique merged reflections in the input setting and in the reference setting."""

    source: str
    hkl: np.ndarray  # (R, 3) unique, input setting, no absences
    amplitude: np.ndarray  # (R,) F
    sigma: np.ndarray  # (R,) σ(F), NaN where unknown
    e: np.ndarray  # (R,) Wilson |E|
    cell: tuple
    symops: tuple
    space_group: str
    setting: SettingChange
    hkl_reference: np.ndarray  # (R, 3) the same rows in the reference setting
    composition: dict | None
    wavelength: float
    d_min: float
    d_min_data: float  # of all the measured data
    completeness: float  # unique measured / unique possible to d_min
    counts: dict = field(default_factory=dict)
    notes: tuple = ()


def _unique_keys(hkl, rotations) -> np.ndarray:
    return laue_asu_keys(np.asarray(hkl, dtype=np.int64), rotations)


def prepare(data: MeasuredData, d_min: float | None = None) -> PreparedData:
    """Merge, check, truncate, normalise and reindex ``data`` (see the module docstring)."""
    from phasenet.io.solution import shelx_symmetry
    from phasenet.physics.merging import merge_onto_grid
    from phasenet.physics.wilson import normalise_amplitudes

    src = data.source
    sym = symmetry(data.symops)
    try:
        shelx_symmetry(sym)
    except ValueError as exc:
        raise SolveError(src, "unsupported-space-group", f"space group {sym.hm or sym.triplets}: {exc}") from None
    if d_min is not None and not d_min > 0:
        raise SolveError(src, "bad-option", f"d_min must be positive, got {d_min}")
    obs = data.observations
    hkl = np.asarray(obs.hkl, dtype=np.int64)
    nonzero = ~(hkl == 0).all(axis=1)
    if not nonzero.any():
        raise SolveError(src, "too-few-reflections", f"0 reflections; at least {MIN_REFLECTIONS} are needed")
    d = d_spacings(hkl[nonzero], data.cell)
    if d.min() < MIN_D:
        raise SolveError(src, "inconsistent-cell",
                         f"indices up to {np.abs(hkl).max(axis=0).tolist()} with cell {tuple(data.cell)} "
                         f"imply d = {d.min():.3f} Å < {MIN_D} Å, which no diffraction experiment reaches: "
                         "the cell is wrong for these data")
    d_data = float(d.min())
    grid = sphere_hkl(data.cell, d_data * (1 - 1e-9))
    merged = merge_onto_grid(obs, sym.rotations, grid)
    measured = np.isfinite(merged.intensity)
    grid, i_m, s_m = grid[measured], merged.intensity[measured], merged.sigma[measured]
    # one reflection of each class of equivalents
    _, first = np.unique(_unique_keys(grid, sym.rotations), return_index=True)
    grid, i_m, s_m = grid[first], i_m[first], s_m[first]
    absent = sym.systematic_absences(grid)
    n_absent = int(absent.sum())
    counts = {"measured": int(len(obs.hkl)), "unique": int(len(grid)), "absent_measured": n_absent}
    if n_absent >= MIN_ABSENT_CHECKED:
        ia, sa = i_m[absent], s_m[absent]
        if np.isfinite(sa).all() and (sa > 0).all():
            strong = ia > STRONG_ABSENT_SIGMA * sa
        else:
            strong = ia > np.mean(i_m[~absent])
        frac = float(strong.mean())
        counts["absent_strong"] = int(strong.sum())
        if frac > MAX_STRONG_ABSENT:
            raise SolveError(src, "inconsistent-cell",
                             f"{int(strong.sum())} of the {n_absent} reflections that {sym.hm or 'the space group'} "
                             f"makes systematically absent are strong ({frac:.0%} > {MAX_STRONG_ABSENT:.0%} "
                             f"above {STRONG_ABSENT_SIGMA:g} σ): the cell or space group does not fit the data")
    grid, i_m, s_m = grid[~absent], i_m[~absent], s_m[~absent]
    notes = list(data.notes)
    n_neg = int((i_m < 0).sum())
    if obs.kind == "F2" and n_neg:
        notes.append(f"{n_neg} negative intensities counted as 0 (F = √max(I, 0))")
    amplitude = np.sqrt(np.maximum(i_m, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(amplitude > 0, s_m / (2 * amplitude), np.sqrt(np.abs(s_m)))
    counts["negative_intensities"] = n_neg
    if d_min is not None:
        keep = d_spacings(grid, data.cell) >= d_min - 1e-9
        counts["dropped_by_d_min"] = int((~keep).sum())
        grid, amplitude, sigma = grid[keep], amplitude[keep], sigma[keep]
        notes.append(f"truncated at d_min {d_min:g} Å: {counts['dropped_by_d_min']} of "
                     f"{len(keep)} unique reflections dropped (data reach {d_data:.3f} Å)")
    if len(grid) < MIN_REFLECTIONS:
        raise SolveError(src, "too-few-reflections",
                         f"{len(grid)} unique reflections"
                         + (f" with d ≥ {d_min:g} Å" if d_min is not None else "")
                         + f"; at least {MIN_REFLECTIONS} are needed")
    d_now = float(d_spacings(grid, data.cell).min())
    possible = sphere_hkl(data.cell, d_now * (1 - 1e-9))
    possible = possible[~sym.systematic_absences(possible)]
    n_possible = len(np.unique(_unique_keys(possible, sym.rotations)))
    try:
        e = normalise_amplitudes(grid, amplitude, data.cell, sym, composition=data.composition).e
    except ValueError as exc:  # e.g. a composition with an element IT92 lacks
        notes.append(f"Wilson plot failed ({exc}); |E| shell by shell")
        e = normalise_amplitudes(grid, amplitude, data.cell, sym).e
    try:
        setting = reference_setting(data.cell, sym)
    except ValueError as exc:
        raise SolveError(src, "inconsistent-cell", str(exc)) from None
    if not setting.is_identity:
        notes.append(f"reindexed {setting.symbol_in} -> {setting.symbol_reference} ({setting.operator}) "
                     "for the methods; every output is in the input's setting")
    return PreparedData(
        source=src, hkl=grid, amplitude=amplitude, sigma=sigma, e=e, cell=tuple(data.cell),
        symops=sym.triplets, space_group=data.space_group or sym.hm, setting=setting,
        hkl_reference=setting.hkl_to_reference(grid), composition=data.composition,
        wavelength=data.wavelength, d_min=d_now, d_min_data=d_data,
        completeness=float(len(grid) / max(n_possible, 1)), counts=counts, notes=tuple(notes))
