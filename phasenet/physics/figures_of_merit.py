"""Figures of merit of a phase set that need no answer: for ranking starts and methods.

A phasing method returns phases; before anyone knows the structure, the phases can
only be judged by what a right answer looks like. :func:`figures_of_merit` computes,
from the reflections given (|E| and phases; NaN where missing), the cell and the
symmetry:

- ``skewness``: of the E-map ρ(x) sampled over the unit cell (F000 left out, so ⟨ρ⟩ = 0):
  ⟨ρ³⟩/⟨ρ²⟩^{3/2}. Atoms make a few strong positive peaks on a flat background: a
  right map is strongly skewed, a random-phase map (a sum of many random waves, close
  to Gaussian) has skewness ≈ 0. Higher is better.
- ``sharpness``: ⟨ρ⁴⟩/⟨ρ²⟩² (the kurtosis; 3 for a Gaussian map). Higher is better.
- ``negativity``: the fraction of grid points below −2σ (σ the map's r.m.s.). A
  Gaussian map has 2.3 % there; a right map has its negative density spread thin and
  far less of it. **Lower** is better (the one figure that runs the other way).
- ``triplet_consistency``: over the strongest :data:`N_TRIPLET_REFLECTIONS` |E| and
  every triplet h₁ + h₂ + h₃ = 0 among them and their symmetry equivalents, the
  |E₁E₂E₃|-weighted mean of cos(φ₁ + φ₂ + φ₃). The Cochran relation says strong
  triplets have φ₁ + φ₂ + φ₃ ≈ 0: 1 means every triplet is satisfied, random phases
  give ≈ 0. It does not depend on the origin (triplets are structure invariants).
  Higher is better.
- ``fom``: the figure to rank by, higher better: the triplet consistency (see
  :data:`FOM_RULE`).

**Which one ranks.** ``fom`` is the triplet consistency, chosen by measurement
(phases from the published models of tests/data/p-1_organic.cif, p21n_aniso.cif and
the real P2₁/n FinalCif_Esser_JW367_0m.cif, reflections to 1 Å, Wilson |E|):

=====================  ============  ============  ==========  ===========
phases                 P-1 triplet   P-1 skew      P2₁/n trip  P2₁/n skew
=====================  ============  ============  ==========  ===========
true                   0.92          4.5           0.98        5.5
25 % random            0.41          2.1           0.49        3.3
50 % random            0.09          0.4           0.01        0.7
random                 0.00          0.0           0.01        0.1
all zero               1.00          11.9          0.02        7.7
=====================  ============  ============  ==========  ===========

Both fall monotonically with the fraction of wrong phases, but the all-zero phase set
(the "uranium atom" false solution of direct methods and charge flipping: one huge peak
at the origin) is the most skewed map of all in every group, whereas the triplets see
through it wherever the group has translations (P2₁/n: 0.02). In P-1 both are fooled
by it (only a peak list can tell); the triplet consistency is the better ranker
elsewhere and needs no grid, so ``fom`` is it; the others are reported alongside.
Time: ~10–20 ms for 500–2 500 reflections.

Symmetry: the reflections given (one of each set of equivalents, or several, in any
order) are expanded with the space group's operators, F(hR) = F(h) exp(−2πi h·t) for
the operator x → Rx + t (phasenet's convention F(h) = Σ f exp(+2πi h·x)), and their
Friedel mates; systematic absences and (0, 0, 0) are left out.
"""

from __future__ import annotations

import numpy as np

from phasenet.reflections import d_spacings, hkl_keys
from phasenet.symmetry import symmetry

#: Strongest reflections (by |E|) whose triplets are summed.
N_TRIPLET_REFLECTIONS = 200
#: Grid points per d_min along each cell edge for the map figures.
POINTS_PER_D_MIN = 3.0
#: How ``fom`` is made, as the summary says it.
FOM_RULE = "fom = triplet_consistency (|E1E2E3|-weighted mean cos of the strongest triplets)"
#: The keys of :func:`figures_of_merit`, in order.
KEYS = ("skewness", "sharpness", "negativity", "triplet_consistency", "fom")


def expand_phased(hkl, amplitude, phases, sym) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every symmetry equivalent h R of each reflection and its Friedel mate, once:
    (hkl (M, 3) int64, amplitude (M,), phase (M,) radians). Systematic absences and
    (0, 0, 0) are dropped; where several rows give the same index, the first is kept.
    """
    s = symmetry(sym)
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amp = np.asarray(amplitude, dtype=float)
    phi = np.asarray(phases, dtype=float)
    keep = ~(hkl == 0).all(axis=1) & ~s.systematic_absences(hkl)
    hkl, amp, phi = hkl[keep], amp[keep], phi[keep]
    # h R for each operator (R, t); φ(hR) = φ(h) − 2π h·t
    eq = np.einsum("ni,mij->mnj", hkl, s.rotations).reshape(-1, 3)
    shift = 2 * np.pi * (s.translations @ hkl.T)  # (m, n)
    ph = (phi[None, :] - shift).reshape(-1)
    am = np.tile(amp, len(s.rotations))
    eq = np.concatenate([eq, -eq])
    ph = np.concatenate([ph, -ph])
    am = np.concatenate([am, am])
    _, first = np.unique(hkl_keys(eq, offset=1024), return_index=True)
    return eq[first], am[first], np.mod(ph[first], 2 * np.pi)


def map_grid(cell, hkl, d_min: float) -> tuple[int, int, int]:
    """Grid dimensions: about :data:`POINTS_PER_D_MIN` points per d_min along each edge,
    and enough to hold the largest indices."""
    hmax = np.abs(np.asarray(hkl)).max(axis=0)
    out = []
    for i in range(3):
        n = max(2 * int(hmax[i]) + 1, int(np.ceil(POINTS_PER_D_MIN * cell[i] / d_min)))
        out.append(n + n % 2)
    return tuple(out)


def e_map(hkl, amplitude, phases, cell, sym) -> np.ndarray:
    """ρ(x) on a grid over the unit cell from the phased reflections given (NaN rows
    left out), their symmetry equivalents and Friedel mates; F000 = 0."""
    hkl, amp, phi = _given(hkl, amplitude, phases)
    if len(hkl) == 0:
        raise ValueError("no reflection has both an amplitude and a phase")
    full, a, p = expand_phased(hkl, amp, phi, sym)
    d_min = float(d_spacings(hkl, cell).min())
    grid = map_grid(cell, full, d_min)
    coef = np.zeros(grid, dtype=complex)
    coef[tuple((full % np.array(grid)).T)] = a * np.exp(1j * p)
    return np.fft.fftn(coef).real  # Σ F exp(−2πi h·x): both Friedel mates are in


def map_figures(rho: np.ndarray) -> dict[str, float]:
    """skewness, sharpness and negativity of a map (see the module docstring)."""
    r = rho - rho.mean()
    m2 = float(np.mean(r * r))
    if m2 <= 0:
        return {"skewness": 0.0, "sharpness": 0.0, "negativity": 1.0}
    return {"skewness": float(np.mean(r**3) / m2**1.5),
            "sharpness": float(np.mean(r**4) / m2**2),
            "negativity": float(np.mean(r < -2.0 * np.sqrt(m2)))}


def triplet_consistency(hkl, amplitude_e, phases, sym, n_strongest: int = N_TRIPLET_REFLECTIONS) -> float:
    """Σ E₁E₂E₃ cos(φ₁+φ₂+φ₃) / Σ E₁E₂E₃ over the triplets of the ``n_strongest``
    reflections by |E| (NaN rows left out): h₁ one of them, h₂ and h₃ = −h₁−h₂ among
    them and their equivalents. NaN when they form no triplet."""
    hkl, e, phi = _given(hkl, amplitude_e, phases)
    s = symmetry(sym)
    ok = ~(hkl == 0).all(axis=1) & ~s.systematic_absences(hkl)
    hkl, e, phi = hkl[ok], e[ok], phi[ok]
    order = np.argsort(-e, kind="stable")[:n_strongest]
    hkl, e, phi = hkl[order], e[order], phi[order]
    full, fe, fphi = expand_phased(hkl, e, phi, s)
    if len(full) == 0:
        return float("nan")
    keys = hkl_keys(full, offset=1024)
    sort = np.argsort(keys)
    skeys = keys[sort]
    h3 = -(hkl[:, None, :] + full[None, :, :]).reshape(-1, 3)  # (n·M, 3)
    k3 = hkl_keys(h3, offset=1024)
    pos = np.clip(np.searchsorted(skeys, k3), 0, len(skeys) - 1)
    found = skeys[pos] == k3
    if not found.any():
        return float("nan")
    i3 = sort[pos[found]]
    i1 = np.repeat(np.arange(len(hkl)), len(full))[found]
    i2 = np.tile(np.arange(len(full)), len(hkl))[found]
    w = e[i1] * fe[i2] * fe[i3]
    total = float(w.sum())
    if total <= 0:
        return float("nan")
    return float((w * np.cos(phi[i1] + fphi[i2] + fphi[i3])).sum() / total)


def figures_of_merit(hkl, amplitude_e, phases, cell, sym) -> dict[str, float]:
    """The answer-free figures of a phase set: ``skewness``, ``sharpness``,
    ``negativity`` (lower is better), ``triplet_consistency`` and ``fom`` (the one to
    rank by, higher is better: the triplet consistency; see the module docstring).

    ``hkl`` (N, 3) int, ``amplitude_e`` (N,) |E| (NaN = not given), ``phases`` (N,)
    radians (NaN = unphased), ``cell`` (a, b, c, α, β, γ), ``sym`` anything
    :func:`phasenet.symmetry.symmetry` accepts.
    """
    hkl = np.asarray(hkl)
    if hkl.ndim != 2 or hkl.shape[1] != 3:
        raise ValueError(f"hkl must be (N, 3), got {hkl.shape}")
    if not (len(hkl) == len(amplitude_e) == len(phases)):
        raise ValueError(f"hkl, amplitude_e and phases differ in length: "
                         f"{len(hkl)}, {len(amplitude_e)}, {len(phases)}")
    s = symmetry(sym)
    out = map_figures(e_map(hkl, amplitude_e, phases, cell, s))
    tc = triplet_consistency(hkl, amplitude_e, phases, s)
    out["triplet_consistency"] = tc
    out["fom"] = tc if np.isfinite(tc) else out["skewness"]
    return out


def _given(hkl, amplitude, phases):
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amp = np.asarray(amplitude, dtype=float)
    phi = np.asarray(phases, dtype=float)
    ok = np.isfinite(amp) & np.isfinite(phi) & (amp > 0)
    return hkl[ok], amp[ok], phi[ok]
