"""``net`` and ``net:RUN_DIR``: the phasing network with several starts and a classical polish.

The network (:mod:`phasenet.training.phasing_net`, a recycling sign model) sees what every
method sees at a d_min: the amplitudes to d_min, normalised without the answer
(:func:`phasenet.training.inputs.network_input`), in the reference setting of its space
group (P2₁/n and P2₁/a are reindexed to P2₁/c, A-1 and B-1 to P-1 by
:mod:`phasenet.settings`; the phases go back to the input's setting at the end). Then
(:func:`predict`, also ``phasenet.predict``):

1. **network**: one start from no phases, ``cycles`` recycling cycles (each cycle's
   expected signs, averaged over symmetry-equivalent reflections, are the next cycle's
   input); the signs are those of the last cycle;
2. **starts**: ``starts`` runs, the first as in 1, the others from random signs; the best
   by the figure of merit (below) is kept;
3. **polish**: charge flipping in the space group
   (:func:`phasenet.baselines.polish.charge_flip_polish`) from the ``polish_starts`` best
   starts, on every reflection given (those off the network's grid start from random
   signs); where the data reach ``cf_below`` (1.3 Å) or finer, cctbx's charge flipping from
   random phases (:mod:`phasenet.baselines.charge_flipping`) runs too and its solution is
   kept unless a polished start's figure of merit beats it by :data:`CF_MARGIN`; otherwise
   the best candidate by the figure of merit is kept.

**Figure of merit** (:func:`phasenet.physics.figures_of_merit.triplet_consistency`): the
|E|-weighted consistency of the triplets among the strongest reflections, a structure
invariant that needs no origin and that random signs score ≈ 0 on; see
``docs/phasing-network.md`` for the measurement that chose it over map skewness and the
network's own confidence.

The evaluation reports the three stages as the methods ``net/network``, ``net/starts``
and ``net`` (the polished result), so that what the network itself contributes is seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phasenet.baselines.registry import BATCHED, NotApplicable, PhasingMethod

#: The reference settings the network is trained for (cctbx's symbols).
SUPPORTED = ("P -1", "P 1 21/c 1")
#: At atomic resolution, how much higher a polished start's figure of merit must be to be
#: kept over cctbx's charge flipping (measured: with a plain maximum, the triplet figure of
#: merit preferred false polished solutions in 7 of 49 real structures at 1.0 Å)
CF_MARGIN = 0.1


def shipped_model_dir() -> Path:
    """The pretrained model shipped with the package (``phasenet/resources/models/phasing-net``)."""
    import phasenet.resources

    return Path(phasenet.resources.__file__).resolve().parent / "models" / "phasing-net"


@dataclass(frozen=True)
class NetworkOptions:
    starts: int = 8  # runs: the first from no phases, the others from random signs
    cycles: int = 3  # recycling cycles per run
    polish_starts: int = 8  # the best starts polished by charge flipping (0: no polish); 8 = all:
    # the same polish budget as sg-flipping, so the two differ only in where the starts come from
    polish_cycles: int = 200  # charge-flipping cycles of the polish
    refine_rounds: int = 1  # rounds of network recycling + a shorter polish after the polish
    refine_top: int = 2  # of the best polished phase sets by the figure of merit
    #: data reaching this d_min (Å) or finer: cctbx's charge flipping from random phases joins
    #: the polish's candidates (it solves 96 % at 1.0 Å, where a polish of poor starts may not)
    cf_below: float = 1.3
    seed: int = 0


@dataclass
class NetworkPhasing:
    """The phases of each stage for one structure (input setting, NaN: unphased) and their
    figures of merit; ``probability`` is the network's P(phase 0) of the kept start
    (NaN off its grid)."""

    stages: dict = field(default_factory=dict)  # stage -> phases (N,)
    fom: dict = field(default_factory=dict)  # stage -> figure of merit
    start_fom: np.ndarray | None = None  # (starts,) the figure of merit of each start
    probability: np.ndarray | None = None  # (N,)
    setting: str = ""  # "P 1 21/n 1 -> P 1 21/c 1" or ""
    n_off_grid: int = 0

    @property
    def phases(self) -> np.ndarray:
        return self.stages[list(self.stages)[-1]]


class GridSymmetry:
    """Symmetry-equivalent reflections on a model's grid: ``average(m)`` replaces each
    reflection's expected sign m by the mean over its equivalents on the grid (with the
    sign factor exp(-2πi h·t) = ±1 of each operator x → Rx + t)."""

    def __init__(self, grid_hkl, sym):
        from phasenet.reflections import friedel_representative, lookup

        grid = np.asarray(grid_hkl, dtype=np.int64)
        idx, fac = [], []
        for rot, t in zip(np.asarray(sym.rotations), np.asarray(sym.translations, dtype=float)):
            rep, _ = friedel_representative(grid @ np.asarray(rot, dtype=np.int64))
            idx.append(lookup(grid, rep))
            fac.append(np.cos(2 * np.pi * (grid @ t)))
        self.index = np.stack(idx)  # (K, R), -1 off the grid
        self.factor = np.where(self.index >= 0, np.round(np.stack(fac)), 0.0)  # (K, R)
        self.count = np.maximum((self.factor != 0).sum(axis=0), 1)

    def average(self, m: np.ndarray) -> np.ndarray:
        """(..., R) expected signs → the same averaged over equivalents."""
        taken = m[..., np.maximum(self.index, 0)]  # (..., K, R)
        return (taken * self.factor).sum(axis=-2) / self.count


#: rows per network call: inputs are padded to a multiple, so that JAX/TensorFlow compile
#: the model for one batch shape only (a new shape costs a compilation, seconds on a CPU)
BATCH = 32


def probabilities(predictor, e2, mask, phase) -> np.ndarray:
    """P(phase 0) (N, R) from the predictor, in padded batches of :data:`BATCH` rows."""
    n = len(e2)
    pad = (-n) % BATCH
    if pad:
        e2, mask, phase = (np.concatenate([a, np.zeros((pad, a.shape[1]), np.float32)]) for a in (e2, mask, phase))
    p = predictor.predict_sign_probability(e2, mask=mask, phase=phase.astype(np.float32), batch_size=BATCH)
    return p[:n]


def recycle(predictor, e2, mask, *, starts: int, cycles: int, seed: int, grid_symmetry=None) -> np.ndarray:
    """(N, S, R) P(phase 0) after ``cycles`` cycles from ``starts`` starts per structure
    (start 0 from no phases, the others from random signs of strength 0.7);
    ``grid_symmetry``: one :class:`GridSymmetry` per structure (or None)."""
    n, r = e2.shape
    # every structure gets the same starts (whatever its place in the batch)
    one = np.random.default_rng([seed, 11]).choice([-0.7, 0.7], size=(starts, r)).astype(np.float32)
    phase = np.repeat(one[None], n, axis=0)
    phase[:, 0] = 0.0
    e2s = np.repeat(e2[:, None], starts, axis=1).reshape(-1, r)
    masks = np.repeat(mask[:, None], starts, axis=1).reshape(-1, r)
    phase = phase.reshape(-1, r) * masks
    for c in range(max(1, cycles)):
        p = probabilities(predictor, e2s, masks, phase)
        m = (2.0 * p - 1.0).reshape(n, starts, r)
        if grid_symmetry is not None:  # one GridSymmetry per structure
            m = np.stack([g.average(m[i]) for i, g in enumerate(grid_symmetry)])
        phase = (m.reshape(-1, r) * masks).astype(np.float32)
    return ((phase + 1.0) / 2.0).reshape(n, starts, r)


def _fom(hkl, e, phases, sym) -> float:
    """The triplet consistency, minus 1 for the point-atom ("uranium") false solution."""
    from phasenet.baselines.polish import uranium_like
    from phasenet.physics.figures_of_merit import triplet_consistency

    ok = np.isfinite(phases)
    if ok.sum() < 3:
        return float("-inf")
    v = triplet_consistency(hkl[ok], e[ok], phases[ok], sym)
    if not np.isfinite(v):
        return float("-inf")
    # the point-atom false solution ranks after every other (its triplets are all satisfied)
    return float(v) - (1.0 if uranium_like(e, phases, hkl) else 0.0)


def load_network(model=None):
    """A predictor: ``None`` the shipped model, a run folder, or a loaded predictor as is."""
    from phasenet.training.predict import Predictor, load_predictor

    if isinstance(model, Predictor):
        return model
    return load_predictor(shipped_model_dir() if model is None else model)


def predict(problems, model=None, options: NetworkOptions | None = None) -> list[NetworkPhasing]:
    """The network's phases, stage by stage, for each problem (anything with ``hkl``,
    ``amplitude`` (NaN or 0: not given), ``cell`` and ``symops``, e.g. a
    :class:`~phasenet.evaluation.problem.PhasingProblem`): see the module docstring.
    ``model``: None (the shipped model), a run folder or a loaded predictor
    (:func:`load_network`). A problem the network cannot take gets the NotApplicable
    exception in its place. Also ``phasenet.predict``."""
    from phasenet.baselines.polish import charge_flip_polish
    from phasenet.physics.wilson import normalise_amplitudes
    from phasenet.reflections import friedel_representative, lookup
    from phasenet.settings import reference_setting
    from phasenet.training.inputs import network_input

    options = options or NetworkOptions()
    predictor = load_network(model)
    grid = np.asarray(predictor.hkl, dtype=np.int64)
    prepared, out = [], [None] * len(problems)
    for n, p in enumerate(problems):
        try:
            prepared.append((n, _reference_problem(p, reference_setting)))
        except NotApplicable as exc:
            out[n] = exc
    if not prepared:
        return out
    e2 = np.zeros((len(prepared), len(grid)), dtype=np.float32)
    mask = np.zeros_like(e2)
    gsyms, positions = [], []
    for j, (_, (change, hkl, amp, cell, sym)) in enumerate(prepared):
        x = network_input(grid, hkl, amp, cell, sym)
        e2[j], mask[j] = x.e2, x.mask
        gsyms.append(GridSymmetry(grid, sym))
        positions.append(lookup(grid, friedel_representative(hkl)[0]))
    prob = recycle(predictor, e2, mask, starts=options.starts, cycles=options.cycles, seed=options.seed,
                   grid_symmetry=gsyms)
    for j, (n, (change, hkl, amp, cell, sym)) in enumerate(prepared):
        pos = positions[j]
        on = pos >= 0
        given = np.isfinite(amp) & (amp > 0)
        e = np.sqrt(normalise_amplitudes(hkl, np.where(given, amp, np.nan), cell, sym).e2)
        start_phases = np.full((options.starts, len(hkl)), np.nan)
        start_phases[:, on] = np.where(prob[j][:, pos[on]] > 0.5, 0.0, np.pi)
        start_phases[:, ~given] = np.nan
        foms = np.array([_fom(hkl, e, ph, sym) for ph in start_phases])
        best = int(np.argmax(foms))
        res = NetworkPhasing(start_fom=foms, n_off_grid=int((given & ~on).sum()))
        res.stages["network"], res.fom["network"] = start_phases[0], float(foms[0])
        res.stages["starts"], res.fom["starts"] = start_phases[best], float(foms[best])
        res.probability = np.full(len(hkl), np.nan)
        res.probability[on] = prob[j][best, pos[on]]
        if options.polish_starts > 0:
            rng = np.random.default_rng([options.seed, 13])
            ea = np.where(given, e, np.nan)
            phs = []
            for s in np.argsort(-foms, kind="stable")[:options.polish_starts]:
                start = np.where(np.isfinite(start_phases[s]), start_phases[s],
                                 rng.choice([0.0, np.pi], len(hkl)))
                phs.append(charge_flip_polish(hkl, ea, start, cell, sym, cycles=options.polish_cycles)[0])
            polished = [(_fom(hkl, e, ph, sym), ph) for ph in phs]
            # the network improves the best polished phase sets
            phs = [ph for _, ph in sorted(polished, key=lambda t: -t[0])[:options.refine_top]]
            for _ in range(options.refine_rounds if phs else 0):
                phs = _refine(predictor, e2[j], mask[j], phs, pos, gsyms[j], options.cycles)
                phs = [charge_flip_polish(hkl, ea, ph, cell, sym, cycles=options.polish_cycles // 2)[0]
                       for ph in phs]
                polished += [(_fom(hkl, e, ph, sym), ph) for ph in phs]
            f, ph = max(polished, key=lambda t: t[0])
            if _d_min(hkl[given], cell) <= options.cf_below:
                # atomic resolution: P1 charge flipping's solution is kept unless the network's
                # polished starts beat its figure of merit clearly
                f_cf, ph_cf = _cctbx_candidate(hkl, amp, cell, sym, e, options.seed)
                if f_cf > -np.inf and not f > f_cf + CF_MARGIN:
                    f, ph = f_cf, ph_cf
            res.stages["polish"], res.fom["polish"] = ph, float(f)
        if change is not None:
            res.setting = f"{change.symbol_in} -> {change.symbol_reference}"
            for k, ph in res.stages.items():
                res.stages[k] = change.phases_from_reference(hkl, ph)
        out[n] = res
    return out


def _refine(predictor, e2, mask, phases, pos, grid_symmetry, cycles) -> list:
    """The network's recycling started from each phase set of ``phases`` (one structure):
    its signs replace theirs on the grid (the rest kept)."""
    on = pos >= 0
    start = np.zeros((len(phases), len(e2)), dtype=np.float32)
    for i, ph in enumerate(phases):
        ok = on & np.isfinite(ph)
        start[i, pos[ok]] = np.cos(ph[ok])
    k = len(phases)
    e2s, masks = np.repeat(e2[None], k, axis=0), np.repeat(mask[None], k, axis=0)
    m = start * masks
    for _ in range(max(1, cycles)):
        p = probabilities(predictor, e2s, masks, m)
        m = grid_symmetry.average(2.0 * p - 1.0) * masks
    out = []
    for i, ph in enumerate(phases):
        new = np.array(ph, dtype=float)
        ok = on & np.isfinite(ph)
        new[ok] = np.where(m[i, pos[ok]] >= 0, 0.0, np.pi)
        out.append(new)
    return out


def _d_min(hkl, cell) -> float:
    from phasenet.reflections import d_spacings

    return float(d_spacings(hkl, cell).min()) if len(hkl) else float("inf")


def _cctbx_candidate(hkl, amp, cell, sym, e, seed) -> tuple[float, np.ndarray]:
    """(figure of merit, phases) of cctbx's charge flipping from random phases (-inf if it fails)."""
    from phasenet.baselines.charge_flipping import charge_flip

    try:
        r = charge_flip(hkl, amp, cell, sym.triplets, seed=seed)
    except (ValueError, RuntimeError):
        return float("-inf"), np.full(len(hkl), np.nan)
    ph = np.where(np.isfinite(r.phases), r.phases, 0.0)
    return _fom(hkl, e, ph, sym), ph


def _reference_problem(p, reference_setting):
    """(change or None, hkl, amplitude (NaN: not given), cell, symmetry) in the reference setting."""
    from phasenet.symmetry import symmetry

    sym = symmetry(p.symops)
    if not sym.has_origin_inversion:
        raise NotApplicable("no inversion centre at the origin: the network predicts signs")
    try:
        change = reference_setting(p.cell, p.symops)
    except ValueError as exc:
        raise NotApplicable(f"no reference setting: {exc}") from None
    if change.symbol_reference not in SUPPORTED:
        raise NotApplicable(f"space group {change.symbol_reference}: the network is trained for "
                            f"{' and '.join(SUPPORTED)} (and their other settings)")
    amp = np.asarray(p.amplitude, dtype=float)
    if change.is_identity:
        return None, np.asarray(p.hkl, dtype=np.int64), amp, p.cell, sym
    try:
        hkl = change.hkl_to_reference(p.hkl)
    except ValueError as exc:
        raise NotApplicable(f"reindexing to {change.symbol_reference}: {exc}") from None
    return change, hkl, amp, change.cell_reference, symmetry(change.symops_reference)


class NetworkMethod(PhasingMethod):
    """``net`` (the shipped model) or ``net:RUN_DIR`` (a trained run of a recycling model)."""

    needs = frozenset()
    execution = BATCHED

    def __init__(self, run_dir: str | None = None):
        self.run_dir = run_dir
        self.name = "net" if run_dir is None else f"net:{run_dir}"
        self.predictor = None

    def prepare(self, options):
        self.predictor = load_network(self.run_dir)
        if not self.predictor.takes_phase:
            raise NotApplicable(f"{self.run_dir}: not a recycling model (use model:{self.run_dir})")

    def check(self, problem, options):
        if not problem.centric_origin:
            raise NotApplicable("no inversion centre at the origin: the network predicts signs")

    def phases_batch(self, problems, options):
        opts = getattr(options, "network", None) or NetworkOptions()
        out = []
        for res in predict(problems, self.predictor, opts):
            if isinstance(res, Exception):
                out.append(res)
                continue
            note = f"reindexed {res.setting}" if res.setting else ""
            out.append({stage: (res.stages[stage], note) for stage in res.stages})
        return out
