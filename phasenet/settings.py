"""Non-standard settings to the reference setting and back (P2₁/n, P2₁/a → P2₁/c; A-1, B-1 → P-1).

Phasing methods and their tables assume a space group's reference setting; users' data
come in whatever setting they were indexed in. :func:`reference_setting` finds cctbx's
change of basis to the reference setting (``space_group_info.change_of_basis_op_to_reference_setting``)
and returns a :class:`SettingChange` that carries reflections, phases and coordinates
across in both directions, so that a method can run in the reference setting and every
result can be handed back in the user's setting.

**Conventions.** The change of basis maps fractional coordinates x (input setting) to
x' = R x + t (reference setting). With phasenet's F(h) = Σ f exp(+2πi h·x):

    h' = h R⁻¹        (rows),       h = h' R,
    φ'(h') = φ(h) + 2π h'·t,        φ(h) = φ'(h') − 2π h'·t.

P2₁/n, P2₁/a → P2₁/c and A-1, B-1 → P-1 have t = 0 (the phases do not move), but the
translation part is carried through for any other change cctbx picks. For a centred
input (A-1, B-1) the lattice reflections allowed by the centring map to integral
reference indices; the absent ones would not, and :meth:`SettingChange.hkl_to_reference`
refuses them (they carry no information; drop systematic absences first). A centred
cell holds more atoms than the primitive reference cell: F scales by
:attr:`SettingChange.amplitude_scale` (|E| is unchanged).

>>> ch = reference_setting((10, 11, 12, 90, 100, 90), "P 1 21/n 1")
>>> ch.symbol_reference, ch.is_identity
('P 1 21/c 1', False)
>>> ch.hkl_to_reference([[1, 2, 3]]).tolist()
[[1, 2, 2]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from phasenet.symmetry import symmetry

_TOL = 1e-6


@dataclass(frozen=True)
class SettingChange:
    """The change of basis from a space group's setting to its reference setting.

    ``rotation`` R (3×3) and ``translation`` t: x_reference = R x_input + t (fractional).
    Immutable; build it with :func:`reference_setting`.
    """

    symbol_in: str
    symbol_reference: str
    cell_in: tuple
    cell_reference: tuple
    rotation: np.ndarray = field(repr=False, compare=False)
    translation: np.ndarray = field(repr=False, compare=False)
    operator: str = ""  # the change of basis as cctbx writes it, e.g. "x+z,y,z"
    symops_reference: tuple = field(default=(), repr=False)  # the reference group's operators
    symops_in: tuple = field(default=(), repr=False)

    @property
    def amplitude_scale(self) -> float:
        """F_reference / F_input for the same reflection: V_reference / V_input = 1/|det R|
        (½ from A-1 or B-1 to the primitive P-1 cell, whose content is half; 1 for
        P2₁/n, P2₁/a). Normalised amplitudes |E| do not change."""
        return float(1.0 / abs(np.linalg.det(self.rotation)))

    @property
    def is_identity(self) -> bool:
        return bool(np.allclose(self.rotation, np.eye(3)) and np.allclose(self.translation % 1.0, 0.0))

    # -- reflections

    def hkl_to_reference(self, hkl) -> np.ndarray:
        """Reference-setting indices (int64 rows) of the input-setting rows ``hkl``."""
        return _integral(np.asarray(hkl, dtype=float).reshape(-1, 3) @ np.linalg.inv(self.rotation),
                         "input", self.symbol_in)

    def hkl_from_reference(self, hkl) -> np.ndarray:
        """Input-setting indices (int64 rows) of the reference-setting rows ``hkl``."""
        return _integral(np.asarray(hkl, dtype=float).reshape(-1, 3) @ self.rotation,
                         "reference", self.symbol_reference)

    def phases_to_reference(self, hkl_in, phases) -> np.ndarray:
        """Phases (radians) of the rows ``hkl_in`` (input setting) in the reference setting."""
        h_ref = self.hkl_to_reference(hkl_in)
        return np.asarray(phases, dtype=float) + 2 * np.pi * (h_ref @ self.translation)

    def phases_from_reference(self, hkl_reference, phases) -> np.ndarray:
        """Phases (radians) of the rows ``hkl_reference`` back in the input setting."""
        h_ref = np.asarray(hkl_reference, dtype=np.int64).reshape(-1, 3)
        return np.asarray(phases, dtype=float) - 2 * np.pi * (h_ref @ self.translation)

    # -- coordinates

    def xyz_to_reference(self, xyz_frac) -> np.ndarray:
        """Fractional coordinates (rows) in the reference setting."""
        return np.asarray(xyz_frac, dtype=float).reshape(-1, 3) @ self.rotation.T + self.translation

    def xyz_from_reference(self, xyz_frac) -> np.ndarray:
        """Fractional coordinates (rows) of reference-setting positions in the input setting."""
        x = np.asarray(xyz_frac, dtype=float).reshape(-1, 3) - self.translation
        return x @ np.linalg.inv(self.rotation).T


def _integral(h: np.ndarray, where: str, symbol: str) -> np.ndarray:
    r = np.round(h)
    bad = np.abs(h - r).max(axis=1) > _TOL if len(h) else np.zeros(0, bool)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} reflections (e.g. {h[bad][0].round(3).tolist()}) have no "
                         f"integral indices after the change of basis: they are systematically "
                         f"absent by the centring of the {where} setting {symbol}; drop absences first")
    return r.astype(np.int64)


def reference_setting(cell, space_group) -> SettingChange:
    """The change of basis of ``space_group`` (an H-M or Hall symbol, a number, operator
    triplets: anything :func:`phasenet.symmetry.symmetry` accepts) with unit cell
    ``cell`` (a, b, c, α, β, γ) to cctbx's reference setting of its space-group type.
    The identity for groups already in their reference setting."""
    sym = symmetry(space_group)
    cell = tuple(float(c) for c in cell)
    if len(cell) != 6:
        raise ValueError(f"cell must have 6 parameters, got {cell}")
    return _reference_setting(cell, sym.triplets)


@lru_cache(maxsize=256)
def _reference_setting(cell: tuple, triplets: tuple) -> SettingChange:
    from cctbx import crystal, sgtbx

    group = sgtbx.space_group()
    for t in triplets:
        group.expand_smx(t)
    sgi = sgtbx.space_group_info(group=group)
    cb = sgi.change_of_basis_op_to_reference_setting()
    try:
        cs = crystal.symmetry(unit_cell=cell, space_group_info=sgi)
    except RuntimeError as exc:
        raise ValueError(f"cell {cell} is incompatible with {sgi.type().lookup_symbol()}: {exc}") from None
    ref = cs.change_basis(cb)
    c = cb.c()
    rot = np.array(c.r().as_double(), dtype=float).reshape(3, 3)
    tr = np.array(c.t().as_double(), dtype=float)
    for a in (rot, tr):
        a.setflags(write=False)
    ref_group = ref.space_group()
    return SettingChange(
        symbol_in=sgi.type().lookup_symbol() if cb.is_identity_op() else _symbol(sgi),
        symbol_reference=ref.space_group_info().type().lookup_symbol(),
        cell_in=cell,
        cell_reference=tuple(float(v) for v in ref.unit_cell().parameters()),
        rotation=rot, translation=tr, operator=cb.as_xyz(),
        symops_reference=tuple(op.as_xyz() for op in ref_group.all_ops()),
        symops_in=tuple(op.as_xyz() for op in group.all_ops()))


def _symbol(sgi) -> str:
    """The input's H-M symbol in its own setting (gemmi's, which has A-1 and B-1), else cctbx's."""
    import gemmi

    ops = gemmi.GroupOps([gemmi.Op(op.as_xyz()) for op in sgi.group().all_ops()])
    sg = gemmi.find_spacegroup_by_ops(ops)
    return sg.xhm() if sg is not None else sgi.type().lookup_symbol()
