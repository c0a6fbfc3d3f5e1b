"""Normalised structure factors |E| without the answer: the one normalisation that
training, evaluation and solving use on amplitudes they are given.

A phasing method may see amplitudes, cell, symmetry and (when it is known) the
composition of the cell, never the atomic positions. From those alone:

**Definition.** For a structure of N atoms in the unit cell with scattering factors
f_j(s), Wilson statistics give the expected intensity of a reflection h

    ⟨|F(h)|²⟩ = ε(h) Σ_j f_j(s)² · k · exp(−2 B s²),      s² = sin²θ/λ² = 1/(4 d²),

where ε(h) is the number of symmetry operators (centring vectors included) that
leave h unchanged (gemmi's epsilon factor; 1 for a general reflection of a primitive
group, 2 for 0k0 in P2₁/c, n for every allowed reflection of an n-fold centred cell),
k an overall scale and B an overall displacement parameter. The normalised structure
factor is

    |E(h)|² = |F(h)|² / ⟨|F(h)|²⟩,      so that ⟨|E|²⟩ = 1,

and for randomly placed atoms ⟨|E|⟩ = √π/2 ≈ 0.886 for acentric and √(2/π) ≈ 0.798
for centric reflections (⟨|E|²−1|⟩ = 0.736 and 0.968).

**Two ways to get the denominator** (:func:`normalise_amplitudes`):

- ``composition`` known (atoms of each element in the unit cell, e.g. from the formula
  and Z): a *Wilson plot*. The reflections are cut into shells of equal count in s²;
  ln(⟨|F|²/ε⟩ / ⟨Σf²⟩) per shell is fitted by a straight line ln k − 2B s²; then
  |E|² = |F|² / (ε k Σf²(s) e^{−2Bs²}), rescaled so that ⟨|E|²⟩ = 1 over all of them.
  k and B are reported.
- composition unknown: *shell by shell*. |E|² = (|F|²/ε) / ⟨|F|²/ε⟩_shell over shells of
  equal count in s² (at least ``MIN_PER_SHELL`` reflections each). This needs nothing
  but the amplitudes and follows any fall-off exactly, at the price of noise in sparse
  shells.

Only the reflections given are used: pass the amplitudes to the resolution a method may
see (NaN for reflections not measured or beyond d_min); they get |E| = 0 and
``mask`` False. Systematic absences and (0,0,0) are excluded the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from phasenet.reflections import reciprocal_s2
from phasenet.symmetry import symmetry

#: Shells hold at least this many reflections (fewer reflections: fewer shells).
MIN_PER_SHELL = 50
#: At most this many shells.
MAX_SHELLS = 20
#: Expected moments of |E| for random atoms (acentric, centric).
MEAN_E_ACENTRIC = float(np.sqrt(np.pi) / 2)
MEAN_E_CENTRIC = float(np.sqrt(2 / np.pi))

_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


@dataclass(frozen=True)
class WilsonResult:
    """|E| for every reflection given, and how the normalisation was made."""

    e: np.ndarray  # (R,) |E|, 0 where mask is False
    mask: np.ndarray  # (R,) bool: reflections normalised (given, not absent, not 000)
    epsilon: np.ndarray  # (R,) epsilon factors
    method: str  # "wilson-plot" (composition known) or "shells"
    scale: float  # k of the Wilson plot (NaN for "shells")
    b: float  # overall B (Å²) of the Wilson plot (NaN for "shells")
    n_shells: int

    @property
    def e2(self) -> np.ndarray:
        return self.e**2


def composition_from_formula(formula: str, z: float = 1.0) -> dict[str, float]:
    """Atoms per unit cell from a formula unit and Z: ``"C14 H10 N2 O2"``, 4 -> {C: 56, ...}.

    >>> composition_from_formula("C6H6O", 2)
    {'C': 12.0, 'H': 12.0, 'O': 2.0}
    """
    out: dict[str, float] = {}
    for element, count in _FORMULA_TOKEN.findall(formula.replace(" ", "")):
        out[element] = out.get(element, 0.0) + (float(count) if count else 1.0) * z
    if not out:
        raise ValueError(f"no elements in formula {formula!r}")
    return out


def sum_f2(composition: Mapping[str, float], stol2: np.ndarray) -> np.ndarray:
    """Σ_j n_j f_j(s)² over the unit cell (neutral-atom IT92 factors) at each sin²θ/λ²."""
    from phasenet.physics.structure_factors import form_factors

    elements = sorted(composition)
    counts = np.array([float(composition[e]) for e in elements])
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"composition needs positive atom counts, got {dict(composition)}")
    f = form_factors([(e, 0) for e in elements], np.asarray(stol2, dtype=float)).astype(float)
    return counts @ (f**2)


def shells_of_equal_count(s2: np.ndarray, n_shells: int) -> np.ndarray:
    """Shell index (0..n_shells-1) of each s², shells of about equal counts; equal s²
    (symmetry equivalents) always share a shell."""
    n_shells = max(1, int(n_shells))
    if n_shells == 1 or len(s2) == 0:
        return np.zeros(len(s2), dtype=np.int64)
    edges = np.quantile(s2, np.arange(1, n_shells) / n_shells)
    return np.searchsorted(edges, s2, side="right").astype(np.int64)


def default_shell_count(n: int) -> int:
    return int(np.clip(n // MIN_PER_SHELL, 1, MAX_SHELLS))


def normalise_amplitudes(hkl, amplitude, cell, sym, *, composition: Mapping[str, float] | None = None,
                         n_shells: int | None = None, intensities: bool = False) -> WilsonResult:
    """|E| of the reflections ``hkl`` from their amplitudes (or intensities).

    ``amplitude``: |F| per reflection, NaN where not given (not measured, beyond the
    resolution a method may use). ``intensities=True``: the values are I = |F|² (negative
    ones, from background subtraction, count as 0). ``sym``: anything
    :func:`phasenet.symmetry.symmetry` accepts. ``composition``: atoms of each element
    per unit cell (see :func:`composition_from_formula`); without it the shells alone
    set the scale. Nothing about the atomic positions is used.
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    values = np.asarray(amplitude, dtype=float).reshape(-1)
    if len(values) != len(hkl):
        raise ValueError(f"{len(hkl)} reflections but {len(values)} amplitudes")
    sym = symmetry(sym)
    i = np.maximum(values, 0.0) if intensities else values**2
    mask = np.isfinite(i) & ~(hkl == 0).all(axis=1) & ~sym.systematic_absences(hkl)
    eps = sym.epsilon(hkl)
    stol2 = reciprocal_s2(hkl, cell) / 4.0
    n = int(mask.sum())
    if n == 0:
        raise ValueError("no reflections to normalise")
    n_shells = default_shell_count(n) if n_shells is None else max(1, min(int(n_shells), n))
    shell = np.zeros(len(hkl), dtype=np.int64)
    shell[mask] = shells_of_equal_count(stol2[mask], n_shells)
    i_eps = np.where(mask, i / np.where(eps > 0, eps, 1.0), 0.0)
    counts = np.bincount(shell[mask], minlength=n_shells)
    mean_i = np.bincount(shell[mask], weights=i_eps[mask], minlength=n_shells) / np.maximum(counts, 1)

    if composition is None:
        denom = mean_i[shell]
        with np.errstate(divide="ignore", invalid="ignore"):
            e2 = np.where(mask & (denom > 0), i_eps / denom, 0.0)
        return WilsonResult(np.sqrt(e2), mask, eps, "shells", float("nan"), float("nan"), n_shells)

    sf2 = sum_f2(composition, stol2)
    mean_s2 = np.bincount(shell[mask], weights=stol2[mask], minlength=n_shells) / np.maximum(counts, 1)
    mean_f2 = np.bincount(shell[mask], weights=sf2[mask], minlength=n_shells) / np.maximum(counts, 1)
    use = (counts > 0) & (mean_i > 0)
    x, y = mean_s2[use], np.log(mean_i[use] / mean_f2[use])
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(counts[use]))
        k, b = float(np.exp(intercept)), float(-slope / 2.0)
    elif len(x):
        k, b = float(np.exp(np.mean(y))), 0.0
    else:
        raise ValueError("the Wilson plot has no shell with positive mean intensity")
    expected = k * sf2 * np.exp(-2.0 * b * stol2)
    e2 = np.where(mask, i_eps / expected, 0.0)
    rescale = float(np.mean(e2[mask]))  # the fitted line's residual scale, so that <|E|²> = 1
    return WilsonResult(np.sqrt(e2 / rescale), mask, eps, "wilson-plot", k * rescale, b, n_shells)
