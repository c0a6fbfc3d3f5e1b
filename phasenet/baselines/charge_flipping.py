"""Charge flipping (Oszlányi & Sütő 2004) through cctbx's ``smtbx.ab_initio.charge_flipping``.

cctbx 2025.11's ``solving_iterator`` multiplies ``max_solving_iterations`` by 1.5
after the second attempt and then slices an iterator with the resulting float,
which raises ValueError on the third attempt (BRIEF §6). :class:`_IntIterations`
is an int whose products stay ints, which is all the workaround needs.

The solver works on amplitudes only; its result is cctbx's symmetrised solution
(the flipped map's structure factors, shifted to an origin compatible with the
space group by a correlation search; of the several origins cctbx proposes, the one
whose map is most skewed, see ``choose_origin``), mapped back onto the caller's reflections
(symmetry equivalents and Friedel mates get their transformed phases). Without
such a solution (no phase transition or no sharp correlation peak) the P1 phases
of the last cycle are returned, with ``symmetrised=False``: their origin is
arbitrary, so they score as unsolved.

:func:`charge_flip` enforces ``time_limit`` between cycles;
:func:`phasenet.util.workers.run_with_timeout` runs any call in a forked process and kills it when the limit passes (the
evaluation uses it so that one structure can never stall a run).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from cctbx import crystal, miller, sgtbx
from cctbx.array_family import flex

from phasenet.baselines.registry import PhasingMethod
from phasenet.reflections import friedel_representative, lookup
from phasenet.symmetry import symmetry


class _IntIterations(int):
    """``max_solving_iterations`` that stays an int when cctbx multiplies it by 1.5."""

    def __mul__(self, other):
        return _IntIterations(int(round(int(self) * other)))

    __rmul__ = __mul__


@dataclass(frozen=True)
class ChargeFlippingOptions:
    max_attempts: int = 5  # restarts without a phase transition (cctbx's default 5)
    max_solving_iterations: int = 500  # flipping cycles per attempt before a restart
    max_sharp_attempts: int = 5  # restarts when no sharp correlation-map peak is found
    time_limit: float | None = 120.0  # seconds (checked between cycles); None: no limit
    delta_guessing: str = "sigma"  # cctbx's "sigma" or "c_tot_over_c_flip"
    amplitude_type: str = "quasi-E"  # "F" or "quasi-E" (cctbx's amplitude quasi-normalisation)
    polishing_iterations: int = 5
    #: which of cctbx's symmetry-consistent origins to keep: "skewness" (the most skewed
    #: map, the default) or "cctbx" (its highest correlation peak; often a false origin
    #: in heavy-atom structures, whose pseudo-inversion centres score alike)
    choose_origin: str = "skewness"


@dataclass(frozen=True)
class ChargeFlippingResult:
    phases: np.ndarray  # (R,) radians, on the caller's reflections (NaN where not phased)
    had_phase_transition: bool
    symmetrised: bool  # a symmetry-consistent origin was found
    cc_peak_height: float  # of that origin search (NaN if none)
    n_iterations: int
    seconds: float
    timed_out: bool
    message: str


def crystal_symmetry(cell, symops) -> crystal.symmetry:
    """cctbx's crystal symmetry; ``symops``: triplets (used in their order) or anything
    :func:`phasenet.symmetry.symmetry` accepts."""
    if not isinstance(symops, (tuple, list)):
        symops = symmetry(symops).triplets
    group = sgtbx.space_group()
    for op in symops:
        group.expand_smx(sgtbx.rt_mx(op))
    return crystal.symmetry(unit_cell=tuple(float(x) for x in cell), space_group=group)


def charge_flip(hkl, amplitude, cell, symops, options: ChargeFlippingOptions | None = None,
                seed: int = 0) -> ChargeFlippingResult:
    """Phase the amplitudes on ``hkl`` (one of each Friedel pair, any symmetry redundancy)."""
    from smtbx.ab_initio import charge_flipping as cf

    options = options or ChargeFlippingOptions()
    if options.amplitude_type not in ("F", "quasi-E"):
        raise ValueError(f"amplitude_type must be 'F' or 'quasi-E', got {options.amplitude_type!r}")
    hkl = np.asarray(hkl, dtype=np.int64)
    amplitude = np.asarray(amplitude, dtype=float)
    # zeros are measured weak reflections and stay; systematic absences do not
    keep = np.isfinite(amplitude) & (amplitude >= 0) & ~symmetry(symops).systematic_absences(hkl)
    if (amplitude[keep] > 0).sum() < 20:
        raise ValueError(f"only {int((amplitude[keep] > 0).sum())} non-zero amplitudes: too few for charge flipping")
    flex.set_random_seed(int(seed) % (2**31))
    random.seed(seed)
    cs = crystal_symmetry(cell, symops)
    ms = miller.set(cs, flex.miller_index([tuple(int(v) for v in h) for h in hkl[keep]]), anomalous_flag=False)
    f_obs = miller.array(ms, data=flex.double(amplitude[keep])).as_amplitude_array()
    f_obs.set_observation_type_xray_amplitude()

    t0 = time.perf_counter()
    fallback = ""
    try:
        solving, n, timed_out = _solve(cf, f_obs, options, options.amplitude_type == "quasi-E", t0)
    except AssertionError:
        if options.amplitude_type != "quasi-E":
            raise
        # cctbx's quasi-normalisation asserts when a shell's interpolated <F²> is not
        # positive (e.g. near-zero amplitudes at high resolution): run on plain F instead
        fallback = " (on F: quasi-normalisation failed)"
        flex.set_random_seed(int(seed) % (2**31))
        solving, n, timed_out = _solve(cf, f_obs, options, False, t0)
    seconds = time.perf_counter() - t0
    solutions = list(getattr(solving, "f_calc_solutions", []) or [])
    had_transition = bool(solving.had_phase_transition)
    if solutions:
        k = _most_skewed(solutions, hkl, amplitude, cell) if options.choose_origin == "skewness" else 0
        f_sol, _shift, cc = solutions[k]
        phases = phases_on(f_sol, hkl)
        msg = ("solved" if had_transition else "symmetrised solution") + fallback
        return ChargeFlippingResult(phases, had_transition, True, float(cc), n, seconds, timed_out, msg)
    f_p1 = solving.flipping_iterator.f_calc
    phases = phases_on(f_p1, hkl)
    msg = ("time limit reached" if timed_out else
           "no phase transition" if not had_transition else "no symmetry-consistent origin") + fallback
    return ChargeFlippingResult(phases, had_transition, False, float("nan"), n, seconds, timed_out, msg)


def _solve(cf, f_obs, options: ChargeFlippingOptions, quasi_e: bool, t0: float):
    extra = {"normalisations_for": cf.amplitude_quasi_normalisations} if quasi_e else {}
    solving = cf.solving_iterator(
        cf.weak_reflection_improved_iterator(delta=None), f_obs,
        max_attempts_to_get_phase_transition=int(options.max_attempts),
        max_attempts_to_get_sharp_correlation_map=int(options.max_sharp_attempts),
        max_solving_iterations=_IntIterations(options.max_solving_iterations),
        delta_guessing_method=options.delta_guessing,
        polishing_iterations=int(options.polishing_iterations),
        yield_solving_interval=1, **extra)
    timed_out = False
    n = 0
    for _ in solving:
        n += 1
        if solving.state is solving.finished:
            break
        if options.time_limit is not None and time.perf_counter() - t0 > options.time_limit:
            timed_out = True
            break
    return solving, n, timed_out


def map_skewness(hkl, amplitude, phases, cell) -> float:
    """Skewness of the density map (observed amplitudes, given phases): high for atomic maps."""
    from phasenet.evaluation.maps import density_map

    rho = density_map(hkl, amplitude, np.where(np.isfinite(phases), phases, 0.0), cell)
    r = rho - rho.mean()
    return float((r**3).mean() / (r**2).mean() ** 1.5)


def _most_skewed(solutions, hkl, amplitude, cell) -> int:
    skew = [map_skewness(hkl, amplitude, phases_on(f, hkl), cell) for f, _, _ in solutions]
    return int(np.argmax(skew))


def phases_on(f_calc, hkl: np.ndarray) -> np.ndarray:
    """Phases of a cctbx complex miller array on the reflections ``hkl`` (NaN where absent)."""
    p1 = f_calc.expand_to_p1().as_non_anomalous_array()
    idx = np.array(p1.indices(), dtype=np.int64).reshape(-1, 3)
    data = np.array(p1.data())
    rep, flipped = friedel_representative(idx)
    phase = np.angle(data)
    phase = np.where(flipped, -phase, phase)
    # one entry per Friedel representative (duplicates carry the same phase)
    want, want_flipped = friedel_representative(np.asarray(hkl))
    pos = lookup(rep, want)
    out = np.where(pos >= 0, phase[np.clip(pos, 0, None)], np.nan)
    return np.where(want_flipped, -out, out)


# ---------------------------------------------------------------------------
# the method in the registry


class ChargeFlippingMethod(PhasingMethod):
    """``charge-flipping`` in the evaluation: :func:`charge_flip` with ``EvaluateOptions.charge_flipping``
    (reflections it leaves unphased get phase 0)."""

    name = "charge-flipping"

    def phases(self, problem, seed, options):
        r = charge_flip(problem.hkl, problem.amplitude, problem.cell, problem.symops,
                        options.charge_flipping, seed=seed)
        return np.where(np.isfinite(r.phases), r.phases, 0.0), f"{r.message}, {r.n_iterations} cycles"
