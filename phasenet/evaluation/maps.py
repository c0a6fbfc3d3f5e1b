"""Density maps from reflections, their peaks, and atom recovery.

- :func:`density_map`: ρ(x) on a grid over the unit cell by FFT, from one
  reflection of each Friedel pair (F000 left out);
- :func:`find_peaks`: local maxima of a periodic map, refined by parabolas;
- :func:`min_distances`: shortest distances between fractional positions,
  lattice translations included;
- :func:`atom_recovery`: the fraction of the unit cell's non-H atoms that lie
  within 0.5 Å of one of the strongest map peaks (as many peaks as there are
  such atoms; the map is computed from phases already moved to the true origin,
  e.g. the aligned phases of :func:`phasenet.evaluation.metrics.score_phases`,
  so symmetry equivalents and the best origin are accounted for).
"""

from __future__ import annotations

import numpy as np

import gemmi

from phasenet.reflections import d_spacings

#: Distance (Å) within which a map peak finds an atom.
PEAK_MATCH_DISTANCE = 0.5


def grid_size(cell, hmax: np.ndarray, d_min: float, step_fraction: float = 0.25) -> tuple[int, int, int]:
    """Even grid dimensions that hold indices up to ``hmax`` with steps of at most
    ``step_fraction`` · d_min along each cell edge."""
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
        grid = grid_size(cell, hmax, d_min)
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


_LATTICE_IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


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
        d = d[:, :, None, :] + _LATTICE_IMAGES[None, None]  # (a, b, 27, 3)
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
