"""Plain data objects for one crystal structure, as phasenet reads it.

Nothing here computes; :mod:`phasenet.io.cif` fills these in and
:mod:`phasenet.physics.structure_factors` consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AtomicModel:
    """The asymmetric unit as the CIF gives it (coordinates untouched).

    ``u_aniso`` holds U11 U22 U33 U12 U13 U23 (CIF convention, Å²) and is NaN for
    atoms refined isotropically; ``u_iso`` is always set (U_eq for anisotropic atoms,
    the default for atoms without displacement parameters, see ``u_defaulted``).
    """

    label: np.ndarray  # (n,) str
    element: np.ndarray  # (n,) str, e.g. "O"
    charge: np.ndarray  # (n,) int8, from type symbols such as "O2-"
    frac: np.ndarray  # (n, 3) float64
    occupancy: np.ndarray  # (n,) float64
    u_iso: np.ndarray  # (n,) float64
    u_aniso: np.ndarray  # (n, 6) float64, NaN if isotropic
    u_defaulted: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class Observations:
    """Measured reflections as read (unmerged, in the file's own indexing)."""

    hkl: np.ndarray  # (m, 3) int
    value: np.ndarray  # (m,) F² or F
    sigma: np.ndarray  # (m,) NaN where absent
    kind: str  # "F2" or "F"
    origin: str  # where they came from, e.g. "_shelx_hkl_file", "paired .hkl"

    def intensities(self) -> tuple[np.ndarray, np.ndarray]:
        """(I, sigma_I) whatever the stored kind."""
        if self.kind == "F2":
            return self.value, self.sigma
        return self.value**2, 2.0 * np.abs(self.value) * self.sigma


@dataclass(frozen=True)
class Structure:
    """One data block of a CIF file that holds atoms."""

    source: str  # input path
    block: str  # CIF data block name
    cell: tuple[float, float, float, float, float, float]
    symops: tuple[str, ...]  # full list of symmetry operators (xyz triplets)
    space_group: str  # H-M symbol as best known ("" if only operators)
    sg_number: int  # 0 when the operators match no tabulated setting
    atoms: AtomicModel
    observations: Observations | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return f"{self.source}#{self.block}"
