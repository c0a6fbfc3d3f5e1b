"""One structure's reflections: indices, cell, symmetry and the values on them.

:class:`ReflectionData` is what a dataset row holds (:meth:`phasenet.io.hdf5.DatasetReader.reflections`),
what a build computes for a structure (:class:`phasenet.pipeline.records.StructureRecord`
extends it with the structure and the build's metadata), and what a phasing problem
is posed on (:class:`phasenet.evaluation.problem.PhasingProblem` holds one).

The object is immutable: a frozen dataclass whose arrays are read-only views, and
whose methods (:meth:`~ReflectionData.select`, :meth:`~ReflectionData.truncate`)
return new objects. The methods are thin wrappers over the pure array functions of
this module (``d_spacing``, ``resolution_mask``, ``amplitudes``, ...), which take
plain arrays and can be used and tested alone.

The per-reflection arrays are named as the dataset stores them (schema v1, see
:mod:`phasenet.io.hdf5`); any of them may be None where a source lacks it:

========================  ======================================================
``intensity_calc``        \\|F_calc\\|², 0 for systematic absences
``phase_calc``            phase of F_calc (radians): the true phase
``intensity_obs``         merged measured intensities, NaN = not measured
``intensity``             the normalised model input
``sign``                  int8: 1 phase 0, 0 phase π, -1 no sign label
========================  ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np

from phasenet.reflections import d_spacings, resolution_mask
from phasenet.symmetry import symmetry

#: The values of :meth:`ReflectionData.amplitude`'s ``source``.
AMPLITUDE_SOURCES = ("calc", "obs")


# ---- pure functions (d-spacings, resolution cuts and symmetry come from their own modules) ----
def amplitudes(intensity_calc: np.ndarray, intensity_obs: np.ndarray | None = None,
               source: str = "calc") -> np.ndarray:
    """|F| (float64) from intensities. ``calc``: √I_calc. ``obs``: √max(I_obs, 0) where
    measured and not systematically absent (I_calc > 0), 0 elsewhere: a phasing method
    sees 0 for every reflection it has no amplitude for.

    >>> amplitudes(np.array([4.0, 1.0, 0.0]), np.array([9.0, np.nan, 2.0]), "obs").tolist()
    [3.0, 0.0, 0.0]
    """
    i_calc = np.asarray(intensity_calc, dtype=np.float64)
    if source == "calc":
        return np.sqrt(np.maximum(i_calc, 0.0))
    if source == "obs":
        if intensity_obs is None:
            raise ValueError("amplitudes from 'obs' need measured intensities (intensity_obs)")
        i_obs = np.asarray(intensity_obs, dtype=np.float64)
        i_obs = np.where(np.isfinite(i_obs) & (i_calc > 0), np.maximum(i_obs, 0.0), 0.0)
        return np.sqrt(i_obs)
    raise ValueError(f"amplitude source must be one of {AMPLITUDE_SOURCES}, got {source!r}")


def _frozen(a):
    """A read-only view of ``a`` (the caller's array keeps its own flags)."""
    if a is None:
        return None
    v = np.asarray(a).view()
    v.flags.writeable = False
    return v


# ---- the object ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReflectionData:
    """Reflections ``hkl`` of one structure with cell, symmetry and per-reflection values.

    Compare two objects with :meth:`equals` (``==`` is identity: the fields are arrays).
    """

    hkl: np.ndarray  # (R, 3) int
    cell: tuple  # a b c (Å) alpha beta gamma (°)
    symops: tuple  # symmetry operators as xyz triplets, e.g. ("x,y,z", "-x,-y,-z")
    space_group: str = ""  # H-M symbol, for reports
    intensity_calc: np.ndarray | None = None  # (R,)
    phase_calc: np.ndarray | None = None  # (R,)
    intensity_obs: np.ndarray | None = None  # (R,)
    intensity: np.ndarray | None = None  # (R,)
    sign: np.ndarray | None = None  # (R,) int8

    #: the per-reflection arrays (the dataset's per-row arrays, same names and order)
    ARRAYS: ClassVar[tuple[str, ...]] = ("intensity_calc", "phase_calc", "intensity_obs",
                                         "intensity", "sign")

    def __post_init__(self):
        hkl = np.asarray(self.hkl)
        if hkl.ndim != 2 or hkl.shape[1] != 3:
            raise ValueError(f"hkl must have shape (R, 3), got {hkl.shape}")
        set_ = object.__setattr__
        set_(self, "hkl", _frozen(hkl))
        set_(self, "cell", tuple(float(x) for x in self.cell))
        set_(self, "symops", tuple(str(s) for s in self.symops))
        if len(self.cell) != 6:
            raise ValueError(f"cell must hold 6 numbers (a b c alpha beta gamma), got {self.cell}")
        for name in self.ARRAYS:
            a = getattr(self, name)
            if a is not None:
                a = _frozen(a)
                if a.shape[:1] != (len(hkl),):
                    raise ValueError(f"{name} has {a.shape[0] if a.ndim else 0} values for "
                                     f"{len(hkl)} reflections")
                set_(self, name, a)

    def __len__(self) -> int:
        return len(self.hkl)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-reflection arrays that are present, by name."""
        return {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}

    # -- derived values ------------------------------------------------------------------
    @property
    def d_spacing(self) -> np.ndarray:
        """(R,) d (Å) of each reflection."""
        return d_spacings(self.hkl, self.cell)

    @property
    def d_min(self) -> float:
        """The highest resolution present (Å); NaN without reflections."""
        return float(self.d_spacing.min()) if len(self) else float("nan")

    def amplitude(self, source: str = "calc") -> np.ndarray:
        """|F| from ``intensity_calc`` ('calc') or the measurements ('obs'), see :func:`amplitudes`."""
        if self.intensity_calc is None:
            raise ValueError("no intensity_calc: amplitudes need the calculated intensities")
        return amplitudes(self.intensity_calc, self.intensity_obs, source)

    @property
    def observed(self) -> np.ndarray:
        """(R,) bool: reflections with a measured intensity."""
        if self.intensity_obs is None:
            return np.zeros(len(self), dtype=bool)
        return np.isfinite(self.intensity_obs)

    @property
    def absent(self) -> np.ndarray:
        """(R,) bool: systematic absences of the space group."""
        return symmetry(self.symops).systematic_absences(self.hkl)

    @property
    def centric(self) -> np.ndarray:
        """(R,) bool: centric reflections of the space group."""
        return symmetry(self.symops).is_centric(self.hkl)

    # -- new objects -----------------------------------------------------------------------
    def select(self, which) -> "ReflectionData":
        """A new object with the reflections ``which`` (a boolean mask or indices)."""
        which = np.asarray(which)
        if which.dtype == bool and which.shape != (len(self),):
            raise ValueError(f"mask of {which.shape} for {len(self)} reflections")
        changes = {k: v[which] for k, v in self.arrays().items()}
        return replace(self, hkl=self.hkl[which], **changes)

    def truncate(self, d_min: float | None) -> "ReflectionData":
        """A new object with only the reflections with d ≥ ``d_min`` (all if None)."""
        return self.select(resolution_mask(self.hkl, self.cell, d_min))

    def equals(self, other: "ReflectionData") -> bool:
        """Same reflections, cell, symmetry and arrays (NaN equal to NaN); fields that a
        subclass adds are not compared."""
        for f in fields(ReflectionData):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.shape != b.shape:
                    return False
                if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True
