"""A classical polish of given phases: charge flipping started from them, in numpy.

cctbx's charge flipping (:mod:`phasenet.baselines.charge_flipping`) starts from random
phases in P1 and finds the origin afterwards. A polish starts from phases that are
already good in part (a network's) and must keep their origin, so it works in the
space group: every cycle

1. expands the given reflections to P1 (h R with phase φ(h) − 2π h·t for each operator
   x → R x + t, and the Friedel mates), computes ρ(x) by FFT;
2. flips the density below δ = ``delta`` · σ(ρ) (Oszlányi & Sütő 2004);
3. transforms back, and takes the new phase of each given reflection as the average over
   its symmetry equivalents (exp(iφ(h R) + 2πi h·t)); in a group with an inversion centre
   at the origin the phase is then projected onto 0 or π, which pins the origin to one
   of the permissible ones, the one the start was nearest.

Amplitudes are |E| (sharp maps: CF converges on normalised amplitudes) with F(000) free.
``cycles`` cycles; the result is the phase set with the best figure of merit seen (the
flipped map's skewness, :func:`phasenet.physics.figures_of_merit.map_figures`) among the last cycles, so a
polish that wanders does not lose a good start.
"""

from __future__ import annotations

import numpy as np

from phasenet.baselines.registry import NotApplicable, PhasingMethod
from phasenet.physics.figures_of_merit import map_figures
from phasenet.symmetry import symmetry

#: δ as a multiple of the |E| map's standard deviation (F(000) = 0); measured: 0.4-0.6 converges
#: from random starts at 1.0 Å, 1.1 destroys even the true phases, 0.2 does not move them
DEFAULT_DELTA = 0.55


class P1Expansion:
    """The P1 images of a list of unique reflections under a space group (cached per problem)."""

    def __init__(self, hkl, cell, symops, d_min: float | None = None, step: float = 0.33):
        sym = symmetry(symops)
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        rots = np.asarray(sym.rotations, dtype=np.int64)
        trans = np.asarray(sym.translations, dtype=float)
        self.hkl, self.n = hkl, len(hkl)
        self.n_ops = len(rots)
        eq = np.einsum("ni,mij->mni", hkl, rots)  # (M, N, 3): h R for each operator
        self.shift = -2 * np.pi * np.einsum("ni,mi->mn", hkl, trans)  # (M, N): φ(hR) = φ(h) + shift
        hmax = np.abs(eq).max(axis=(0, 1)) if self.n else np.ones(3, int)
        if d_min is None:
            from phasenet.reflections import d_spacings

            d_min = float(d_spacings(hkl, cell).min()) if self.n else 1.0
        grid = []
        for i in range(3):
            g = max(2 * int(hmax[i]) + 2, int(np.ceil(cell[i] / (d_min * step))))
            grid.append(g + g % 2)
        self.grid = tuple(grid)
        g = np.array(self.grid)
        self.index = tuple(np.moveaxis(eq % g, -1, 0))  # 3 × (M, N) grid positions of h R
        self.index_mate = tuple(np.moveaxis(-eq % g, -1, 0))
        self.centro = bool(sym.has_origin_inversion)

    def density(self, amplitude, phase) -> np.ndarray:
        """ρ(x) (the grid of this expansion) from the unique reflections' amplitudes and phases."""
        f = amplitude[None, :] * np.exp(1j * (phase[None, :] + self.shift))  # (M, N)
        a = np.zeros(self.grid, dtype=complex)
        # equivalents that coincide (special reflections) are each written once: assignment
        a[self.index] = f
        a[self.index_mate] = np.conj(f)
        return np.fft.fftn(a).real

    def phases_of(self, rho) -> tuple[np.ndarray, np.ndarray]:
        """(phases, |F|) of the unique reflections in the map ``rho``, averaged over their
        equivalents (and projected onto 0/π in a group with an inversion centre at the origin)."""
        g = np.fft.ifftn(rho)
        z = (g[self.index] * np.exp(-1j * self.shift)).mean(axis=0)
        if self.centro:
            z = z.real.astype(complex)
        return np.angle(z), np.abs(z)


#: the E²-weighted share of phase 0 above which a sign set is the "uranium" false solution
URANIUM_SHARE = 0.9


def uranium_like(e, phases, hkl=None) -> bool:
    """True for the false solution of direct methods and flipping in centrosymmetric groups:
    (nearly) every strong reflection with the sign of a single point atom on an inversion
    centre (phase 0 for the origin; (-1)^(2h·t) for the centre t, with ``hkl`` given, one of
    the 8 half-integral ones), one huge peak there. Its triplets are all satisfied, so the
    triplet figure of merit prefers it to the answer (docs/phasing-network.md); true
    structures have about half their E² at phase 0 (0.48-0.83 in the 49 real structures of
    the honest set at 1.0 Å; a heavy atom on the inversion centre raises it)."""
    from phasenet.reflections import origin_sign_flips

    e = np.asarray(e, dtype=float)
    ph = np.asarray(phases, dtype=float)
    ok = np.isfinite(e) & np.isfinite(ph)
    w = e[ok] ** 2
    if not w.sum() > 0:
        return False
    s = np.where(np.cos(ph[ok]) > 0, 1, -1)
    flips = origin_sign_flips(np.asarray(hkl)[ok]) if hkl is not None else np.ones((1, ok.sum()))
    share = ((s[None, :] == flips) * w[None, :]).sum(axis=1) / w.sum()
    return bool(share.max() > URANIUM_SHARE)


def charge_flip_polish(hkl, e, phases, cell, symops, *, cycles: int = 100, delta: float = DEFAULT_DELTA,
                       d_min: float | None = None, expansion: P1Expansion | None = None
                       ) -> tuple[np.ndarray, float]:
    """(polished phases (N,), the skewness of their map): charge flipping from ``phases``.

    ``e``: |E| of the given reflections (NaN/0: not given, left unphased in the result);
    ``phases``: the start (radians; NaN where unknown: started at 0).
    """
    e = np.asarray(e, dtype=float)
    given = np.isfinite(e) & (e > 0)
    x = expansion or P1Expansion(np.asarray(hkl)[given], cell, symops, d_min=d_min)
    amp = e[given]
    phi = np.nan_to_num(np.asarray(phases, dtype=float)[given])
    best_phi, best_fom = phi, -np.inf
    for c in range(cycles):
        rho = x.density(amp, phi)
        sigma = rho.std()
        if c >= cycles // 2:  # the second half: keep the most skewed map's phases
            fom = map_figures(rho)["skewness"]
            if fom > best_fom:
                best_phi, best_fom = phi, fom
        flipped = np.where(rho < delta * sigma, -rho, rho)
        phi, _ = x.phases_of(flipped)
    out = np.full(len(e), np.nan)
    out[given] = best_phi
    return out, float(best_fom)


def flip_from_random(hkl, amplitude, cell, symops, *, starts: int = 8, cycles: int = 200, seed: int = 0,
                     delta: float = DEFAULT_DELTA) -> tuple[np.ndarray, float, np.ndarray]:
    """(phases, figure of merit, the figure of each start): :func:`charge_flip_polish` from
    ``starts`` starts, the first with every phase 0 (the start ``net``'s first run has: no
    phases), the others random signs; the best by the triplet figure of merit
    (:func:`phasenet.physics.figures_of_merit.triplet_consistency`) kept, sign sets that are
    :func:`uranium_like` after all others. ``amplitude``:
    |F| (NaN or 0: not given), normalised here without the answer."""
    from phasenet.physics.figures_of_merit import triplet_consistency
    from phasenet.physics.wilson import normalise_amplitudes

    hkl = np.asarray(hkl, dtype=np.int64)
    amp = np.asarray(amplitude, dtype=float)
    given = np.isfinite(amp) & (amp > 0)
    sym = symmetry(symops)
    e = np.sqrt(normalise_amplitudes(hkl, np.where(given, amp, np.nan), cell, sym).e2)
    e = np.where(given, e, np.nan)
    x = P1Expansion(hkl[given], cell, sym)
    rng = np.random.default_rng([seed, 17])
    results = []
    for k in range(starts):
        start = np.pi * rng.integers(0, 2, len(hkl)) if k else np.zeros(len(hkl))
        ph, _ = charge_flip_polish(hkl, e, start, cell, sym, cycles=cycles, delta=delta, expansion=x)
        ok = np.isfinite(ph)
        fom = triplet_consistency(hkl[ok], e[ok], ph[ok], sym) if ok.sum() >= 3 else float("-inf")
        if uranium_like(e, ph, hkl):
            fom = fom - 1.0  # the point-atom false solution ranks after every other
        results.append((float(fom) if np.isfinite(fom) else float("-inf"), ph))
    foms = np.array([f for f, _ in results])
    best = int(np.argmax(foms))
    return results[best][1], float(foms[best]), foms


class SpaceGroupFlippingMethod(PhasingMethod):
    """``sg-flipping``: the polish of ``net`` alone, from as many starts as ``net`` has
    (``EvaluateOptions.network``), the first all phases 0, the others random: the classical
    reference for what the network's starts add. Structures with an inversion centre at
    the origin."""

    name = "sg-flipping"

    def check(self, problem, options):
        if not problem.centric_origin:
            raise NotApplicable("no inversion centre at the origin: the polish works on signs")

    def phases(self, problem, seed, options):
        net = options.network
        ph, fom, foms = flip_from_random(problem.hkl, problem.amplitude, problem.cell, problem.symops,
                                         starts=net.starts, cycles=net.polish_cycles, seed=seed)
        return np.where(np.isfinite(ph), ph, 0.0), f"best of {len(foms)} starts, fom {fom:.2f}"
