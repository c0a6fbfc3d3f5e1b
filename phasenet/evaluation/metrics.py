"""Scoring phases against the true structure (BRIEF §5), origin-invariant.

A phasing method can only determine a structure up to the permissible origin
shifts of its space group (and, without anomalous scattering, up to the
enantiomorph). Every metric here is therefore taken at the best of those:

- **Permissible origin shifts** t are the translations that map the space
  group's operators onto themselves: for every operator (R, s), (R − I)·t must
  be a centring vector modulo the lattice. For the enantiomorph (the estimate
  inverted through the origin, φ → −φ) the condition is that (R, −s + (R − I)·t)
  is an operator. They are found on a grid of 1/24 steps (which holds every
  discrete shift of the 230 groups: halves, thirds, quarters, sixths, eighths)
  and checked against cctbx's ``is_allowed_origin_shift`` in the tests. Polar
  groups (P1, P2₁, Pc, P3₁, ...) also shift freely along their polar
  directions: there the best grid point is refined continuously.
- **Which origin.** The one that maximises the map correlation R; the phase
  error and sign accuracy are reported at that same origin. Centrosymmetric
  groups with the inversion centre at the origin have only discrete shifts in
  {0, ½}³ (those of the 8 that the group permits: all 8 for P-1 and P2₁/c), and
  the inverted estimate is the estimate itself.

Metrics, over the reflections given (one of each Friedel pair):

- |F|-weighted mean phase error Σ|F||Δφ| / Σ|F| (degrees, 90 = random),
- map correlation R = Σ|F|² cos Δφ / Σ|F|² (1 perfect, 0 random); with the
  estimate's phases put on the observed amplitudes this is also the correlation
  coefficient of the two (F000-free) maps, so "solved" is R ≥ 0.7,
- intensity-weighted sign accuracy Σ I [sign right] / Σ I for structures with
  an inversion centre at the origin (NaN otherwise); for sign phases it equals
  (R + 1) / 2,
- atom recovery (:func:`phasenet.evaluation.maps.atom_recovery`, computed from
  the aligned phases).

The permissible origin shifts themselves are properties of the space group:
:meth:`phasenet.symmetry.Symmetry.origin_shifts` and
:meth:`~phasenet.symmetry.Symmetry.continuous_origin_directions`.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np

from phasenet.symmetry import ORIGIN_GRID, symmetry

#: Map correlation at or above which a structure counts as solved (BRIEF §5).
SOLVED_CC = 0.7


# ---------------------------------------------------------------------------
# best origin


@dataclass(frozen=True)
class OriginMatch:
    shift: tuple[float, float, float]  # t added to the estimate: φ' = ±φ + 2π h·t
    inverted: bool  # the estimate was inverted (φ → −φ) first
    score: float  # R at that origin


def _apply(hkl, phases, shift, inverted) -> np.ndarray:
    p = -phases if inverted else phases
    return p + 2 * np.pi * (np.asarray(hkl, dtype=float) @ np.asarray(shift, dtype=float))


def _r_scores(hkl, w, dphi_terms, shifts) -> np.ndarray:
    arg = dphi_terms[None, :] + 2 * np.pi * (np.asarray(shifts) @ hkl.T)
    return (np.cos(arg) * w[None, :]).sum(axis=1)


def _fft_scores(hkl, w, dphi, n) -> np.ndarray:
    """C(t) = Σ w cos(Δφ + 2π h·t) on the n³ grid of t (flattened ij-order)."""
    a = np.zeros((n, n, n), dtype=complex)
    np.add.at(a, tuple((hkl % n).T), w * np.exp(1j * dphi))
    return (np.fft.ifftn(a).real * n**3).reshape(-1)


def best_origin(hkl, phase_true, phase_est, weights, symops,
                enantiomorph: bool | None = None, n: int = ORIGIN_GRID) -> OriginMatch:
    """The permissible origin shift (and enantiomorph) that maximises Σ w cos Δφ / Σ w.

    ``enantiomorph=None`` tries the inverted estimate for groups without an
    inversion centre (where φ → −φ describes the indistinguishable enantiomorph).
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if total <= 0 or not len(hkl):
        return OriginMatch((0.0, 0.0, 0.0), False, float("nan"))
    sym = symmetry(symops)
    centro = sym.is_centrosymmetric
    if enantiomorph is None:
        enantiomorph = not centro
    phase_true = np.asarray(phase_true, dtype=float)
    phase_est = np.asarray(phase_est, dtype=float)
    directions = sym.continuous_origin_directions()
    if len(directions):
        n = 2 * n  # finer start for the continuous refinement
    best = None
    for inverted in ((False, True) if enantiomorph else (False,)):
        mask = sym.origin_shift_mask(inverted, n)
        if not mask.any():
            continue
        dphi = (-phase_est if inverted else phase_est) - phase_true
        if mask.sum() > 64:
            scores = _fft_scores(hkl, w, dphi, n)
            scores[~mask] = -np.inf
            k = int(np.argmax(scores))
            shift = np.array(np.unravel_index(k, (n, n, n))) / n
            score = scores[k]
        else:
            shifts = sym.origin_shifts(inverted, n)
            scores = _r_scores(hkl, w, dphi, shifts)
            k = int(np.argmax(scores))
            shift, score = shifts[k], scores[k]
        if len(directions):
            shift, score = _refine_continuous(hkl, w, dphi, shift, directions, n)
        if best is None or score > best[0] + 1e-12:
            best = (score, shift, inverted)
    if best is None:
        return OriginMatch((0.0, 0.0, 0.0), False, float("nan"))
    score, shift, inverted = best
    shift = np.asarray(shift, dtype=float) % 1.0
    return OriginMatch(tuple(float(x) for x in shift), bool(inverted), float(score / total))


def _refine_continuous(hkl, w, dphi, shift, directions, n):
    from scipy.optimize import minimize

    h = hkl.astype(float)

    def neg(c):
        t = shift + c @ directions
        return -(w * np.cos(dphi + 2 * np.pi * (h @ t))).sum()

    c0 = np.zeros(len(directions))
    simplex = np.vstack([c0, np.eye(len(directions)) / (2 * n)])
    res = minimize(neg, c0, method="Nelder-Mead",
                   options=dict(xatol=1e-6, fatol=1e-12 * w.sum(), initial_simplex=simplex, maxiter=600))
    c = res.x if res.fun <= neg(c0) else c0
    return shift + c @ directions, -neg(c)


# ---------------------------------------------------------------------------
# phase metrics


def _wrap(dphi: np.ndarray) -> np.ndarray:
    """|Δφ| folded into [0, π]."""
    return np.abs(np.angle(np.exp(1j * dphi)))


def mean_phase_error(phase_true, phase_est, amplitude) -> float:
    """Σ|F||Δφ| / Σ|F| in degrees (fixed origin)."""
    f = np.asarray(amplitude, dtype=float)
    if f.sum() <= 0:
        return float("nan")
    return float(np.degrees((f * _wrap(np.asarray(phase_est) - np.asarray(phase_true))).sum() / f.sum()))


def map_correlation(phase_true, phase_est, amplitude) -> float:
    """R = Σ|F|² cos Δφ / Σ|F|² (fixed origin)."""
    w = np.asarray(amplitude, dtype=float) ** 2
    if w.sum() <= 0:
        return float("nan")
    return float((w * np.cos(np.asarray(phase_est) - np.asarray(phase_true))).sum() / w.sum())


def sign_accuracy(phase_true, phase_est, amplitude) -> float:
    """Σ I [cos φ_est and cos φ_true have the same sign] / Σ I (fixed origin)."""
    w = np.asarray(amplitude, dtype=float) ** 2
    if w.sum() <= 0:
        return float("nan")
    same = np.cos(np.asarray(phase_est)) * np.cos(np.asarray(phase_true)) > 0
    return float((w * same).sum() / w.sum())


@dataclass(frozen=True)
class PhaseScore:
    phase_error: float  # degrees, |F|-weighted, best origin
    map_cc: float  # R at the best origin
    sign_accuracy: float  # intensity-weighted, NaN without an inversion centre at the origin
    solved: bool  # map_cc >= SOLVED_CC
    origin_shift: tuple[float, float, float]
    inverted: bool
    n_reflections: int

    def as_dict(self) -> dict:
        d = asdict(self)
        d["origin_shift"] = " ".join(f"{x:.4f}" for x in self.origin_shift)
        return d


def score_phases(hkl, amplitude, phase_true, phase_est, symops,
                 solved_cc: float = SOLVED_CC) -> tuple[PhaseScore, np.ndarray]:
    """Origin-invariant scores of ``phase_est`` and the estimate's phases moved to the best origin.

    Reflections with zero amplitude (systematic absences) carry no weight.
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    f = np.abs(np.asarray(amplitude, dtype=float))
    phase_est = np.asarray(phase_est, dtype=float)
    if not (len(hkl) == len(f) == len(phase_true) == len(phase_est)):
        raise ValueError(f"hkl, amplitude and phases differ in length: {len(hkl)}, {len(f)}, "
                         f"{len(phase_true)}, {len(phase_est)}")
    if not np.isfinite(phase_est).all():
        raise ValueError("estimated phases contain NaN or inf")
    sym = symmetry(symops)
    match = best_origin(hkl, phase_true, phase_est, f**2, sym)
    aligned = _apply(hkl, phase_est, match.shift, match.inverted)
    centric = sym.has_origin_inversion
    r = map_correlation(phase_true, aligned, f)
    score = PhaseScore(
        phase_error=mean_phase_error(phase_true, aligned, f),
        map_cc=r,
        sign_accuracy=sign_accuracy(phase_true, aligned, f) if centric else float("nan"),
        solved=bool(np.isfinite(r) and r >= solved_cc),
        origin_shift=match.shift,
        inverted=match.inverted,
        n_reflections=int((f > 0).sum()),
    )
    return score, aligned


def score_phases_counting_unphased(hkl, amplitude, phase_true, phase_est, symops,
                                   solved_cc: float = SOLVED_CC) -> tuple[PhaseScore, np.ndarray]:
    """:func:`score_phases` on all reflections, where a NaN in ``phase_est`` (a reflection
    the method did not phase) counts against it: it adds its |F|² to the denominator of R
    and nothing to the numerator (cos Δφ = 0, a map without that term), 90° to the phase
    error and a coin toss (½) to the sign accuracy. The best origin is the one that
    maximises R, found on the phased reflections (the unphased add the same at every origin).
    The aligned phases are NaN where unphased; ``n_reflections`` counts all of them.
    """
    phase_est = np.asarray(phase_est, dtype=float)
    phased = np.isfinite(phase_est)
    if phased.all():
        return score_phases(hkl, amplitude, phase_true, phase_est, symops, solved_cc)
    hkl = np.asarray(hkl, dtype=np.int64)
    f = np.abs(np.asarray(amplitude, dtype=float))
    phase_true = np.asarray(phase_true, dtype=float)
    if not (len(hkl) == len(f) == len(phase_true) == len(phase_est)):
        raise ValueError(f"hkl, amplitude and phases differ in length: {len(hkl)}, {len(f)}, "
                         f"{len(phase_true)}, {len(phase_est)}")
    sym = symmetry(symops)
    aligned = np.full(len(hkl), np.nan)
    shift, inverted = (0.0, 0.0, 0.0), False
    if phased.any():
        match = best_origin(hkl[phased], phase_true[phased], phase_est[phased], f[phased] ** 2, sym)
        shift, inverted = match.shift, match.inverted
        aligned[phased] = _apply(hkl[phased], phase_est[phased], shift, inverted)
    w, total_f = f**2, f.sum()
    cos = np.where(phased, np.cos(np.where(phased, aligned, 0.0) - phase_true), 0.0)
    r = float((w * cos).sum() / w.sum()) if w.sum() > 0 else float("nan")
    err = np.where(phased, _wrap(np.where(phased, aligned, 0.0) - phase_true), np.pi / 2)
    phase_error = float(np.degrees((f * err).sum() / total_f)) if total_f > 0 else float("nan")
    sign_acc = float("nan")
    if sym.has_origin_inversion and w.sum() > 0:
        right = np.where(phased, (np.cos(np.where(phased, aligned, 0.0)) * np.cos(phase_true) > 0) * 1.0, 0.5)
        sign_acc = float((w * right).sum() / w.sum())
    score = PhaseScore(phase_error=phase_error, map_cc=r, sign_accuracy=sign_acc,
                       solved=bool(np.isfinite(r) and r >= solved_cc),
                       origin_shift=tuple(float(x) for x in shift), inverted=bool(inverted),
                       n_reflections=int((f > 0).sum()))
    return score, aligned
