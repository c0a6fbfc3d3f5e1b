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
- atom recovery: the fraction of the unit cell's non-H atoms that lie within
  0.5 Å of one of the strongest map peaks (as many peaks as there are such
  atoms; lattice translations included; the map is computed from the aligned
  phases, so symmetry equivalents and the best origin are accounted for).
"""

from __future__ import annotations

from dataclasses import dataclass, asdict
from functools import lru_cache

import numpy as np

import gemmi

from phasenet.reflections import reciprocal_s2
from phasenet.physics.structure_factors import SymmetryOps

#: Grid of candidate origin shifts (steps of 1/ORIGIN_GRID); 24 holds 1/2, 1/3, 1/4, 1/6, 1/8.
ORIGIN_GRID = 24
#: Map correlation at or above which a structure counts as solved (BRIEF §5).
SOLVED_CC = 0.7
#: Distance (Å) within which a map peak finds an atom.
PEAK_MATCH_DISTANCE = 0.5
_TOL = 1e-4


# ---------------------------------------------------------------------------
# resolution


def d_spacings(hkl: np.ndarray, cell) -> np.ndarray:
    """d (Å) of each reflection; ``cell`` is (a, b, c, α, β, γ) or a gemmi.UnitCell."""
    uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*[float(x) for x in cell])
    s2 = reciprocal_s2(np.asarray(hkl), uc)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(s2)


def resolution_mask(hkl: np.ndarray, cell, d_min: float | None) -> np.ndarray:
    """True for reflections with d ≥ d_min (all if d_min is None)."""
    if d_min is None:
        return np.ones(len(hkl), dtype=bool)
    if d_min <= 0:
        raise ValueError(f"d_min must be positive, got {d_min}")
    return d_spacings(hkl, cell) >= d_min - 1e-9


# ---------------------------------------------------------------------------
# permissible origin shifts


def _ops_by_rotation(ops: SymmetryOps) -> dict[bytes, np.ndarray]:
    out: dict[bytes, list] = {}
    for r, t in zip(ops.rotations, ops.translations):
        out.setdefault(r.astype(np.int64).tobytes(), []).append(t % 1.0)
    return {k: np.array(v) for k, v in out.items()}


def _in_set(v: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For rows v (M, 3): is v ≡ one of ``targets`` (k, 3) modulo the lattice?"""
    d = v[:, None, :] - targets[None, :, :]
    d -= np.round(d)
    return (np.abs(d) < _TOL).all(axis=2).any(axis=1)


@lru_cache(maxsize=256)
def _allowed_mask(symops: tuple[str, ...], inverted: bool, n: int) -> np.ndarray:
    ops = SymmetryOps.from_triplets(symops)
    by_rot = _ops_by_rotation(ops)
    g = np.arange(n) / n
    t = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    ok = np.ones(len(t), dtype=bool)
    eye = np.eye(3, dtype=np.int64)
    for r, s in zip(ops.rotations, ops.translations):
        idx = np.flatnonzero(ok)
        if not len(idx):
            break
        v = (-s if inverted else s)[None, :] + t[idx] @ (r - eye).T
        ok[idx] = _in_set(v, by_rot[r.astype(np.int64).tobytes()])
    ok.setflags(write=False)
    return ok


def permissible_origin_shifts(symops, inverted: bool = False, n: int = ORIGIN_GRID) -> np.ndarray:
    """(K, 3) fractional origin shifts on the 1/n grid that the space group permits.

    ``inverted=True``: the shifts that map the inverted structure's operators onto
    the group's (empty where the enantiomorph lies in another space group, e.g.
    P3₁ ↔ P3₂).

    >>> permissible_origin_shifts(["x,y,z", "-x,-y,-z"]).shape
    (8, 3)
    """
    mask = _allowed_mask(tuple(symops), bool(inverted), int(n))
    g = np.arange(n) / n
    t = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    return t[mask]


@lru_cache(maxsize=256)
def _continuous(symops: tuple[str, ...]) -> np.ndarray:
    ops = SymmetryOps.from_triplets(symops)
    m = np.concatenate([r - np.eye(3) for r in ops.rotations]).astype(float)
    _, sv, vt = np.linalg.svd(m)
    rank = int((sv > 1e-8).sum())
    out = vt[rank:].copy()
    out.setflags(write=False)
    return out


def continuous_origin_directions(symops) -> np.ndarray:
    """(k, 3) orthonormal directions along which the origin moves freely (polar groups); k = 0..3."""
    return _continuous(tuple(symops))


def has_origin_inversion(symops) -> bool:
    return SymmetryOps.from_triplets(tuple(symops)).has_origin_inversion


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
    symops = tuple(symops)
    centro = SymmetryOps.from_triplets(symops).is_centrosymmetric
    if enantiomorph is None:
        enantiomorph = not centro
    phase_true = np.asarray(phase_true, dtype=float)
    phase_est = np.asarray(phase_est, dtype=float)
    directions = continuous_origin_directions(symops)
    if len(directions):
        n = 2 * n  # finer start for the continuous refinement
    best = None
    for inverted in ((False, True) if enantiomorph else (False,)):
        mask = _allowed_mask(symops, inverted, n)
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
            shifts = permissible_origin_shifts(symops, inverted, n)
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
    match = best_origin(hkl, phase_true, phase_est, f**2, symops)
    aligned = _apply(hkl, phase_est, match.shift, match.inverted)
    centric = has_origin_inversion(symops)
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


# ---------------------------------------------------------------------------
# maps, peaks, atom recovery


def _grid_size(cell, hmax: np.ndarray, d_min: float, step_fraction: float = 0.25) -> tuple[int, int, int]:
    out = []
    for i in range(3):
        n = max(2 * int(hmax[i]) + 2, int(np.ceil(cell[i] / (d_min * step_fraction))))
        n += n % 2
        out.append(n)
    return tuple(out)


def density_map(hkl, amplitude, phase, cell, d_min: float | None = None,
                grid: tuple[int, int, int] | None = None) -> np.ndarray:
    """ρ(x) on a grid over the unit cell from one reflection of each Friedel pair (F000 left out).

    With F(h) = Σ f exp(+2πi h·x) (phasenet's convention), ρ(x) = Σ_h F(h) exp(−2πi h·x).
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    hmax = np.abs(hkl).max(axis=0) if len(hkl) else np.ones(3, int)
    if grid is None:
        if d_min is None:
            d_min = float(d_spacings(hkl, cell).min())
        grid = _grid_size(cell, hmax, d_min)
    grid = tuple(int(g) for g in grid)
    if any(g <= 2 * h for g, h in zip(grid, hmax)):
        raise ValueError(f"grid {grid} too coarse for indices up to {tuple(hmax)}")
    f = np.asarray(amplitude, dtype=float) * np.exp(1j * np.asarray(phase, dtype=float))
    a = np.zeros(grid, dtype=complex)
    np.add.at(a, tuple((hkl % np.array(grid)).T), f)
    np.add.at(a, tuple((-hkl % np.array(grid)).T), np.conj(f))
    return np.fft.fftn(a).real / np.prod(grid)


def find_peaks(values: np.ndarray, n_peaks: int | None = None, min_height: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a periodic map: (fractional positions (k, 3), heights (k,)), strongest first.

    Positions are refined by a parabola through the peak and its neighbours along each axis.
    """
    from scipy import ndimage

    v = np.asarray(values, dtype=float)
    is_max = ndimage.maximum_filter(v, size=3, mode="wrap") == v
    if min_height is not None:
        is_max &= v > min_height
    idx = np.argwhere(is_max)
    h = v[tuple(idx.T)]
    order = np.argsort(-h, kind="stable")
    if n_peaks is not None:
        order = order[:n_peaks]
    idx, h = idx[order], h[order]
    shape = np.array(v.shape)
    pos = idx.astype(float)
    for ax in range(3):
        e = np.zeros(3, dtype=np.int64)
        e[ax] = 1
        lo = v[tuple(((idx - e) % shape).T)]
        hi = v[tuple(((idx + e) % shape).T)]
        den = lo - 2 * h + hi
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(den < 0, 0.5 * (lo - hi) / den, 0.0)
        pos[:, ax] += np.clip(delta, -0.5, 0.5)
    return (pos / shape) % 1.0, h


_IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def min_distances(frac_a: np.ndarray, frac_b: np.ndarray, cell) -> np.ndarray:
    """For each row of ``frac_a``: the shortest distance (Å) to any row of ``frac_b``, lattice translations included."""
    frac_a = np.asarray(frac_a, dtype=float).reshape(-1, 3)
    frac_b = np.asarray(frac_b, dtype=float).reshape(-1, 3)
    if not len(frac_b):
        return np.full(len(frac_a), np.inf)
    uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*[float(x) for x in cell])
    orth = np.array(uc.orth.mat.tolist())
    out = np.empty(len(frac_a))
    for start in range(0, len(frac_a), 256):
        d = frac_a[start:start + 256, None, :] - frac_b[None, :, :]
        d -= np.round(d)
        d = d[:, :, None, :] + _IMAGES[None, None]  # (a, b, 27, 3)
        out[start:start + 256] = np.linalg.norm(d @ orth.T, axis=-1).min(axis=(1, 2))
    return out


def atom_recovery(hkl, amplitude, phase, cell, atoms_frac_cell: np.ndarray, d_min: float | None = None,
                  distance: float = PEAK_MATCH_DISTANCE, n_peaks: int | None = None) -> float:
    """Fraction of the atoms (unit-cell fractional coordinates) within ``distance`` Å of a map peak.

    The map is computed from ``phase`` (already at the true origin, e.g. the aligned
    phases of :func:`score_phases`); the strongest ``n_peaks`` peaks (default: as many
    as atoms) are used.
    """
    atoms_frac_cell = np.atleast_2d(np.asarray(atoms_frac_cell, dtype=float))
    if not len(atoms_frac_cell):
        return float("nan")
    rho = density_map(hkl, amplitude, phase, cell, d_min=d_min)
    peaks, _ = find_peaks(rho, n_peaks=n_peaks or len(atoms_frac_cell))
    return float((min_distances(atoms_frac_cell, peaks, cell) <= distance).mean())
