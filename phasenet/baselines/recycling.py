"""Partial-structure expansion by E-Fourier recycling: from the phases of a few located
atoms (the heavy atoms of :mod:`phasenet.baselines.patterson`) to phases of most of the
structure.

What every heavy-atom program does after placing the heavy atoms (the "Karle
recycling" of DIRDIF, SHELXS's E-Fourier recycling, SHELXD's peak-list cycles). One
cycle:

1. **Weights.** |E| of the observed amplitudes comes from
   :func:`phasenet.physics.wilson.normalise_amplitudes` (equal-count shells: nothing
   but the amplitudes). The partial structure's |F_p| is normalised on the same shells
   and scaled so that ⟨|E_p|²⟩ = σ_p, its share Σ_p Z² / Σ_N Z² of the scattering of
   the cell. Sim weights (Sim 1959): X = 2 |E| |E_p| / (1 − σ_p); m = tanh(X/2) for
   centric reflections, I₁(X)/I₀(X) for acentric ones.
2. **E-map** with coefficients m |E| exp(iφ_p) on a grid of about d_min/4.
3. **Peaks.** The strongest peaks, one per symmetry-equivalent set, at least
   ``min_distance`` Å from the atoms kept so far and their images (and from their own
   images: no light atom on a special position), up to ``fraction`` of the atoms the
   composition says the asymmetric unit still lacks (cycle k of n takes (k/n) of that
   number, so the first cycles trust only the strongest peaks).
4. The fixed atoms plus the peaks (as the most numerous light element) give new phases φ_p.

Every cycle starts again from the fixed atoms (the peaks are chosen afresh). The
figure of merit is the correlation of |E|² with |E_p|² (as SHELXD's CC, answer-free);
the phases of the best cycle (cycle 0 = the fixed atoms alone) are returned, so
recycling never returns phases its own figure of merit rates below the starting set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from phasenet.evaluation.maps import density_map, find_peaks, min_distances
from phasenet.physics.structure_factors import structure_factors
from phasenet.physics.wilson import default_shell_count, normalise_amplitudes, shells_of_equal_count
from phasenet.reflections import d_spacings, reciprocal_s2
from phasenet.structure import AtomicModel, Structure
from phasenet.symmetry import symmetry


@dataclass(frozen=True)
class RecyclingOptions:
    cycles: int = field(default=6, metadata={"help": "E-Fourier recycling cycles after the heavy atoms (0: off)"})
    fraction: float = field(default=0.8, metadata={
        "help": "peaks taken in the last cycle, as a fraction of the atoms the composition says are missing"})
    min_distance: float = field(default=1.1, metadata={
        "help": "Å between an accepted peak and every atom kept so far (and their images)"})
    grid_fraction: float = field(default=0.25, metadata={"help": "E-map grid step as a fraction of d_min"})
    u_iso: float = field(default=0.03, metadata={"help": "U (Å²) of the atoms of the partial structure"})


@dataclass(frozen=True)
class RecyclingResult:
    phases: np.ndarray  # (R,) radians, of the best cycle
    frac: np.ndarray  # (k, 3) atoms of the best cycle (fixed ones first)
    element: np.ndarray  # (k,) their elements
    fom: np.ndarray  # (cycles + 1,) CC(|E|², |E_p|²) of each cycle, cycle 0 = the fixed atoms
    best_cycle: int


def _sim_weights(e, ep, sigma_p, centric):
    from scipy.special import i0e, i1e

    x = 2.0 * e * ep / max(1.0 - sigma_p, 0.05)
    m = np.where(centric, np.tanh(x / 2.0), i1e(x) / np.maximum(i0e(x), 1e-300))
    return np.clip(m, 0.0, 1.0)


def _model(elements, frac, cell, symops, u_iso) -> Structure:
    k = len(frac)
    atoms = AtomicModel(label=np.array([f"{e}{i + 1}" for i, e in enumerate(elements)]),
                        element=np.asarray(elements, dtype=str), charge=np.zeros(k, np.int8),
                        frac=np.asarray(frac, dtype=float).reshape(-1, 3), occupancy=np.ones(k),
                        u_iso=np.full(k, u_iso), u_aniso=np.full((k, 6), np.nan), u_defaulted=np.zeros(k, bool))
    return Structure(source="partial structure", block="", cell=tuple(cell), symops=tuple(symops),
                     space_group="", sg_number=0, atoms=atoms)


def _images(x, sym) -> np.ndarray:
    return (np.einsum("mij,kj->kmi", sym.rotations, np.atleast_2d(x)) + sym.translations[None]).reshape(-1, 3) % 1.0


def _cc(a, b) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def light_element(composition: Mapping[str, float], exclude: str = "") -> str:
    """The most numerous non-H element other than ``exclude`` (C for organic compounds)."""
    light = {e: n for e, n in composition.items() if e not in ("H", "D", exclude) and n > 0}
    return max(sorted(light), key=lambda e: light[e]) if light else (exclude or "C")


def recycle(hkl, amplitude, cell, symops, composition: Mapping[str, float], fixed_element, fixed_frac,
            options: RecyclingOptions | None = None) -> RecyclingResult:
    """Expand the partial structure ``fixed_frac`` (atoms of ``fixed_element``, asymmetric
    unit) by E-Fourier recycling (module docstring).

    ``composition``: atoms of each element in the unit cell (hydrogens are ignored); it sets
    how many atoms are missing, the element given to peaks and σ_p. Only the amplitudes
    on ``hkl`` are used, never a position of the true structure.
    """
    options = options or RecyclingOptions()
    hkl = np.asarray(hkl, dtype=np.int64)
    amplitude = np.asarray(amplitude, dtype=float)
    cell = tuple(float(c) for c in cell)
    sym = symmetry(symops)
    symops = sym.triplets
    fixed_frac = np.atleast_2d(np.asarray(fixed_frac, dtype=float))
    fixed_el = np.broadcast_to(np.asarray(fixed_element, dtype=str), (len(fixed_frac),)).copy()
    import gemmi

    comp = {e: float(n) for e, n in composition.items() if e not in ("H", "D") and n > 0}
    z2 = {e: gemmi.Element(e).atomic_number ** 2 for e in comp}
    total_z2 = sum(comp[e] * z2[e] for e in comp)
    n_ops = len(sym.rotations)
    n_missing = max(0.0, sum(comp.values()) / n_ops - len(fixed_frac))
    peak_el = light_element(comp, exclude=str(fixed_el[0]) if len(fixed_el) else "")

    w = normalise_amplitudes(hkl, amplitude, cell, sym)
    e, mask = w.e, w.mask
    s2 = reciprocal_s2(hkl, cell)
    n_shells = default_shell_count(int(mask.sum()))
    shell = np.zeros(len(hkl), dtype=np.int64)
    shell[mask] = shells_of_equal_count(s2[mask], n_shells)
    eps = np.where(w.epsilon > 0, w.epsilon, 1)
    centric = sym.is_centric(hkl)
    d_min = float(d_spacings(hkl[mask], cell).min())
    grid_step = options.grid_fraction * d_min

    def phase_partial(elements, frac):
        """(phases, |E_p|, σ_p) of a partial structure."""
        f = structure_factors(_model(elements, frac, cell, symops, options.u_iso), hkl, dtype=np.float64)
        cell_count = _cell_count(frac, sym, cell)
        sigma = min(0.95, float(sum(cell_count[i] * gemmi.Element(str(el)).atomic_number ** 2
                                     for i, el in enumerate(elements)) / total_z2)) if total_z2 > 0 else 0.5
        i = np.abs(f) ** 2 / eps
        mean = np.bincount(shell[mask], weights=i[mask], minlength=n_shells) / np.maximum(
            np.bincount(shell[mask], minlength=n_shells), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ep2 = np.where(mask & (mean[shell] > 0), sigma * i / mean[shell], 0.0)
        return np.angle(f), np.sqrt(ep2), sigma

    def fom(ep):
        return _cc(e[mask] ** 2, ep[mask] ** 2)

    phi, ep, sigma = phase_partial(fixed_el, fixed_frac)
    best = (fom(ep), 0, phi, fixed_frac, fixed_el)
    foms = [best[0]]
    for cycle in range(1, options.cycles + 1):
        m = _sim_weights(e, ep, sigma, centric)
        rho = density_map(hkl[mask], (m * e)[mask], phi[mask], cell, d_min=grid_step / 0.25)
        n_pick = int(round(options.fraction * n_missing * cycle / options.cycles))
        peaks, _ = find_peaks(rho, n_peaks=max(50, 6 * n_ops * (n_pick + 1)))
        kept = _pick_peaks(peaks, fixed_frac, sym, cell, n_pick, options.min_distance)
        frac = np.vstack([fixed_frac, kept]) if len(kept) else fixed_frac
        elements = np.concatenate([fixed_el, np.full(len(kept), peak_el)])
        phi, ep, sigma = phase_partial(elements, frac)
        foms.append(fom(ep))
        if foms[-1] > best[0]:
            best = (foms[-1], cycle, phi, frac, elements)
    return RecyclingResult(phases=best[2], frac=best[3], element=best[4], fom=np.array(foms), best_cycle=best[1])


def _cell_count(frac, sym, cell, tol: float = 0.3) -> np.ndarray:
    """Atoms in the unit cell of each site (site multiplicity)."""
    out = np.empty(len(frac))
    for k, x in enumerate(np.atleast_2d(frac)):
        im = _images(x, sym)
        out[k] = len(im) / max(1, int((min_distances(im, x[None], cell) < tol).sum()))
    return out


def _pick_peaks(peaks, fixed, sym, cell, n_pick, min_distance) -> np.ndarray:
    """Up to ``n_pick`` peaks (strongest first), one of each symmetry-equivalent set, at
    least ``min_distance`` from the fixed atoms, the peaks taken and their images."""
    taken = [x for x in np.atleast_2d(fixed)]
    images = [_images(x, sym) for x in taken]
    out = []
    for p in peaks:
        if len(out) >= n_pick:
            break
        if (min_distances(_images(p, sym), p[None], cell) < min_distance).sum() > 1:
            continue  # on (or next to) a special position: too close to its own image
        if images and min_distances(p[None], np.concatenate(images), cell)[0] < min_distance:
            continue
        out.append(p)
        images.append(_images(p, sym))
    return np.array(out).reshape(-1, 3)
