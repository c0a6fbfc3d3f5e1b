"""Training data made on the fly: structure factors computed per batch from atomic models.

``data.source = "atoms"`` takes the atomic models of a dataset (the ``atoms`` group that
``phasenet build`` and ``phasenet synth`` write; the structures of one split with an
inversion centre at the origin); ``data.source = "synth"`` synthesises them per batch
(:func:`phasenet.synth.generate.generate_structure`, a pure function of (seed, index):
training structure ``k`` is index ``k``, test structure ``k`` index ``TEST_INDEX_OFFSET + k``,
so the two never meet). Either way, every sample gets its own draws
(:class:`Augmentation`):

- U_iso (Å²) uniform in ``data.u_iso``, given to every atom (``[]``: the model's own);
- d_min (Å) uniform in ``data.d_min``: the reflections beyond it are not given (``[]``: none cut);
- a fraction uniform in ``data.drop`` of the reflections to d_min left out at random
  (systematic absences are never given);
- a permissible origin shift t (``data.origin_shift``; ``Symmetry.origin_shifts`` with
  2t integral, 8 in P-1 and P2₁/c): F(h) is multiplied by exp(2πi h·t) = ±1;
- an overall scale, log-uniform in ``data.scale``.

F is computed once per structure on the reflection grid with every U set to 0 (the
library's :func:`~phasenet.physics.structure_factors.structure_factors`), then per sample
F = scale · exp(-2π² U s²) · exp(2πi h·t) · F₀ (exact: one U for all atoms factors out).
The network is shown what a measurement gives, :func:`phasenet.training.inputs.network_input`
of the given amplitudes (|E|² by equal-count shells over the given reflections, 0 elsewhere,
and the mask), computed here for a whole batch at once by :func:`shell_input` with the
grid's symmetry data precomputed in a :class:`GridPlan` (tests hold it equal to
``network_input``). Labels: the sign of the shifted F
(1: phase 0, 0: phase π) on the given reflections, -1 elsewhere.

``data.repeats = R``: each training structure gives R samples, each with its own draws,
in different batches (synthesis costs ~5-15 ms a structure, the rest ~0.1 ms a sample):
every batch of B holds B different structures, B/R of them new and the others met
D·LANES, 2·D·LANES, ... batches before (:meth:`OnTheFlySource.batch_positions`), so the cost
per batch is steady; worker process w, computing every ``workers``-th batch, meets only
the lanes ≡ w (mod workers) and keeps their structures' F₀ until their last use
(memory bounded by LANES · B · D structures, not by the stream). At the start of the
stream (and of a resumed run) the first (R-1)·D·LANES batches bring more new structures
(B at first, then fewer): the warm-up. Batch ``i`` is a pure
function of (seed, i): its structures and its draws (``np.random.default_rng([seed, tag,
i])``), whoever computes it; ``data.workers`` processes compute batches i, i+1, ...
ahead into shared memory (the reader of :mod:`phasenet.training.data`), so a resumed
run sees the batches an uninterrupted one did. The test split (each structure once,
the same batches every epoch) is kept in memory when small.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from phasenet.io.hdf5 import DatasetError, DatasetReader
from phasenet.physics.wilson import MAX_SHELLS, MIN_PER_SHELL
from phasenet.reflections import canonical_hkl, friedel_representative, lookup, reciprocal_s2
from phasenet.structure import AtomicModel, Structure
from phasenet.symmetry import Symmetry, symmetry

TRAIN_TAG, TEST_TAG = 7, 8  # the draws' random streams: default_rng([seed, tag, batch])
TEST_INDEX_OFFSET = 1 << 40  # synth: test structure k is index TEST_INDEX_OFFSET + k
RETRY_STRIDE = 1 << 44  # synth: a structure that cannot be made is replaced by index + j·stride
MAX_RETRIES = 20
SYNTH_EPOCH = 51_200  # synth: training samples per epoch (data.epoch_size = 0)
SYNTH_TEST = 1_024  # synth: test structures (data.max_test = 0)
LANES = 16  # training batch i takes its structures from lane i mod LANES
LANE_STRUCTURES = 128  # spacing D = this / batch size lane batches (at least 1)
TEST_CACHE_BYTES = 256 << 20  # the test split's batches are kept in memory below this size


class OnTheFlyError(DatasetError):
    """On-the-fly data that cannot be made: no atoms, a group without origin inversion."""


# ---- what is drawn -----------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """The per-sample draw ranges (empty u_iso/d_min: the model's own U, no cut)."""

    u_iso: tuple = (0.005, 0.06)
    d_min: tuple = (0.8, 2.5)
    drop: tuple = (0.0, 0.15)
    scale: tuple = (0.5, 2.0)
    origin_shift: bool = True

    @classmethod
    def from_config(cls, data) -> "Augmentation":
        return cls(tuple(data.u_iso), tuple(data.d_min), tuple(data.drop), tuple(data.scale),
                   bool(data.origin_shift))

    @classmethod
    def off(cls) -> "Augmentation":
        """Nothing drawn: the model's U, every reflection, origin and scale as stored."""
        return cls((), (), (0.0, 0.0), (1.0, 1.0), False)


@dataclass(frozen=True)
class Draws:
    """The draws of n samples (NaN u_iso / d_min: the model's own U, no cut)."""

    u_iso: np.ndarray  # (n,) Å²
    d_min: np.ndarray  # (n,) Å
    drop: np.ndarray  # (n,) fraction of the candidate reflections left out
    scale: np.ndarray  # (n,)
    shift: np.ndarray  # (n,) in [0, 1): which permissible origin shift (index = floor(shift·K))
    keys: np.ndarray  # (n, R) which reflections are dropped: the smallest keys among candidates


def draw(aug: Augmentation, n: int, n_reflections: int, rng: np.random.Generator) -> Draws:
    """The draws of ``n`` samples, always in the same order from ``rng`` (whatever is off)."""
    def uniform(pair):
        v = rng.uniform(0.0, 1.0, n)
        return pair[0] + (pair[1] - pair[0]) * v if pair else np.full(n, np.nan)

    u = uniform(aug.u_iso)
    d = uniform(aug.d_min)
    drop = uniform(aug.drop)
    v = rng.uniform(0.0, 1.0, n)
    lo, hi = np.log(aug.scale[0]), np.log(aug.scale[1])
    scale = np.exp(lo + (hi - lo) * v)
    shift = rng.uniform(0.0, 1.0, n) if aug.origin_shift else np.zeros(n)
    keys = rng.random((n, n_reflections), dtype=np.float32)
    return Draws(u, d, drop, scale, shift, keys)


# ---- one grid in one space group -----------------------------------------------------------
class GridPlan:
    """What the network input of a reflection grid in one space group needs, computed once:
    systematic absences, epsilon factors, the origin shifts' sign factors."""

    def __init__(self, hkl: np.ndarray, sym: Symmetry):
        self.hkl = np.asarray(hkl, dtype=np.int64)
        self.sym = sym
        if not sym.has_origin_inversion:
            raise OnTheFlyError(f"space group {sym.hm or sym}: no inversion centre at the origin, "
                                "so its reflections have no sign labels (on-the-fly data needs one, "
                                "e.g. P-1, P21/c, C2/c, Pbca)")
        self.absent = np.asarray(sym.systematic_absences(self.hkl), dtype=bool)
        self.candidate = ~self.absent & ~(self.hkl == 0).all(axis=1)
        eps = sym.epsilon(self.hkl)
        self.eps_div = np.where(eps > 0, eps, 1.0)
        rep, _ = friedel_representative(self.hkl)
        if not np.array_equal(lookup(self.hkl, rep), np.arange(len(self.hkl))):
            raise ValueError("the grid must hold one reflection of each Friedel pair")
        t = np.asarray(sym.origin_shifts(), dtype=float).reshape(-1, 3)
        t = t[np.all(np.abs(2 * t - np.round(2 * t)) < 1e-9, axis=1)]
        # shifts with 2t integral keep F real: the factor exp(2πi h·t) is (-1)^(2h·t)
        parity = (self.hkl @ np.round(2 * t).astype(np.int64).T) % 2  # (R, K)
        self.shifts = t
        self.flips = np.ascontiguousarray((1 - 2 * parity).T.astype(np.float64))  # (K, R)

    def input(self, amplitude: np.ndarray, s2: np.ndarray, given: np.ndarray):
        """(e2, mask) float32 (m, G) of m samples of this plan's group (``s2`` = 1/d², (G,))."""
        given = np.atleast_2d(given)
        return shell_input(np.atleast_2d(amplitude), np.broadcast_to(s2, given.shape), given,
                           np.broadcast_to(self.eps_div, given.shape))


def shell_input(amplitude: np.ndarray, s2: np.ndarray, given: np.ndarray, eps_div: np.ndarray):
    """(e2, mask) float32 (m, G) for m samples, each row with its own amplitudes, 1/d²,
    given reflections (within d_min, no absences) and epsilon factors: what
    :func:`phasenet.training.inputs.network_input` gives (the equal-count shells of
    :func:`phasenet.physics.wilson.normalise_amplitudes`, their edges computed as
    ``np.quantile`` does), for all rows at once."""
    m, g = given.shape
    n = given.sum(axis=1)
    n_shells = np.clip(n // MIN_PER_SHELL, 1, MAX_SHELLS)
    stol2 = s2 / 4.0
    ordered = np.sort(np.where(given, stol2, np.inf), axis=1)
    # np.quantile(stol2[given], np.arange(1, n_shells) / n_shells), method "linear"
    j = np.arange(1, MAX_SHELLS)
    q = j[None, :] / n_shells[:, None]
    valid = j[None, :] < n_shells[:, None]
    virtual = (n - 1)[:, None] * q  # numpy's virtual index of the linear method
    prev = np.floor(virtual)
    gamma = virtual - prev
    top = virtual >= (n - 1)[:, None]
    lo = np.where(top, (n - 1)[:, None], prev.astype(np.int64))
    hi = np.where(top, (n - 1)[:, None], lo + 1)
    a = np.take_along_axis(ordered, np.clip(lo, 0, g - 1), axis=1)
    b = np.take_along_axis(ordered, np.clip(hi, 0, g - 1), axis=1)
    diff = b - a
    edges = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    edges = np.where(valid, edges, np.inf)
    shell = (edges[:, None, :] <= stol2[:, :, None]).sum(axis=2)  # searchsorted, side right
    with np.errstate(invalid="ignore"):
        i_eps = np.where(given, amplitude**2 / eps_div, 0.0)
    key = (np.arange(m)[:, None] * MAX_SHELLS + shell)[given]
    counts = np.bincount(key, minlength=m * MAX_SHELLS)
    sums = np.bincount(key, weights=i_eps[given], minlength=m * MAX_SHELLS)
    mean_i = (sums / np.maximum(counts, 1)).reshape(m, MAX_SHELLS)
    denom = np.take_along_axis(mean_i, shell, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(given & (denom > 0), i_eps / denom, 0.0)
    return (np.sqrt(v) ** 2).astype(np.float32), given.astype(np.float32)


def phase_hint(sign: np.ndarray, wrong: tuple, share: float, rng: np.random.Generator) -> np.ndarray:
    """(B, R) float32 training hints for a recycling model (``data.hint``): for a share of
    the samples, the true signs (±1 on the labelled reflections, at the sample's origin) with
    a fraction uniform in ``wrong`` of them turned over, times a strength uniform in
    [0.3, 1]; 0 for the other samples. A model learns from them to improve a partly right
    phase set (what it is given back when recycling, or from a classical polish)."""
    b, r = sign.shape
    labelled = sign >= 0
    s = np.where(sign > 0, 1.0, -1.0)
    f = rng.uniform(wrong[0], wrong[1], (b, 1))
    turn = rng.random((b, r)) < f
    strength = rng.uniform(0.3, 1.0, (b, 1))
    use = rng.random((b, 1)) < share
    return (np.where(turn, -s, s) * labelled * strength * use).astype(np.float32)


@lru_cache(maxsize=64)
def grid_plan(max_index: int, r2_max: int | None, sym: Symmetry) -> GridPlan:
    return GridPlan(canonical_hkl(max_index, r2_max), sym)


# ---- structures --------------------------------------------------------------------------
def with_u_iso(structure: Structure, u: float) -> Structure:
    """The structure with every atom isotropic at ``u`` (Å²)."""
    a = structure.atoms
    n = len(a)
    atoms = dataclasses.replace(a, u_iso=np.full(n, float(u)), u_aniso=np.full((n, 6), np.nan),
                                u_defaulted=np.zeros(n, dtype=bool))
    return dataclasses.replace(structure, atoms=atoms)


def grid_structure_factors(structure: Structure, plan: GridPlan) -> np.ndarray:
    """F (real, float64) on the plan's grid; 0 for systematic absences (as a build stores)."""
    from phasenet.physics.structure_factors import structure_factors

    f = structure_factors(structure, plan.hkl, real=True).real.astype(np.float64)
    f[plan.absent] = 0.0
    return f


@dataclass
class Samples:
    """Samples of one batch (float32): the network input and the target channels."""

    e2: np.ndarray  # (n, R) |E|², 0 where not given
    mask: np.ndarray  # (n, R) 1 where given
    sign: np.ndarray  # (n, R) 1 phase 0, 0 phase π, -1 not given
    intensity_calc: np.ndarray  # (n, R) |F|² of the sample (scale, U, origin), 0 where not given
    cell: np.ndarray  # (n, 6)


@dataclass(frozen=True)
class Prepared:
    """One structure on the grid before the draws: F₀ (every U 0, or the model's own)."""

    f0: np.ndarray  # (G,) float32
    cell: tuple
    plan: GridPlan


def prepare(structure: Structure, plan: GridPlan, own_u: bool = False) -> Prepared:
    f0 = grid_structure_factors(structure if own_u else with_u_iso(structure, 0.0), plan)
    return Prepared(f0.astype(np.float32), tuple(float(c) for c in structure.cell), plan)


def augment(prepared, draws: Draws, rows=None) -> Samples:
    """Sample j from ``prepared[j]`` with the draws of row ``rows[j]`` (default j), all
    at once: F = scale · exp(-2π² U s²) · (±1 of the origin shift) · F₀; the reflections
    beyond d_min, absent or dropped are not given."""
    rows = np.arange(len(prepared)) if rows is None else np.asarray(rows, dtype=np.int64)
    m = len(rows)
    s2_of = {}
    for p in prepared:  # one s² per distinct cell
        if p.cell not in s2_of:
            s2_of[p.cell] = reciprocal_s2(p.plan.hkl, p.cell)
    s2 = np.stack([s2_of[p.cell] for p in prepared])
    with np.errstate(divide="ignore"):
        d = 1.0 / np.sqrt(s2)
    f = np.stack([p.f0 for p in prepared]).astype(np.float64) * draws.scale[rows, None]
    u = draws.u_iso[rows]
    if not np.isnan(u).all():
        f = f * np.exp(-2.0 * np.pi**2 * np.nan_to_num(u)[:, None] * s2)
    k = [min(int(sh * len(p.plan.flips)), len(p.plan.flips) - 1) for sh, p in zip(draws.shift[rows], prepared)]
    f = f * np.stack([p.plan.flips[kk] for p, kk in zip(prepared, k)])
    d_min = draws.d_min[rows]
    cut = np.where(np.isnan(d_min), -np.inf, d_min - 1e-9)  # as phasenet.reflections.resolution_mask
    cand = np.stack([p.plan.candidate for p in prepared]) & (d >= cut[:, None])
    n_drop = np.rint(draws.drop[rows] * cand.sum(axis=1)).astype(np.int64)
    # the n_drop candidates with the smallest keys (ties: the first) are left out
    order = np.argsort(np.where(cand, draws.keys[rows], 2.0), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    given = cand & (rank >= n_drop[:, None])
    e2, mask = shell_input(np.abs(f), s2, given, np.stack([p.plan.eps_div for p in prepared]))
    return Samples(e2, mask, np.where(given, np.where(f < 0, 0.0, 1.0), -1.0).astype(np.float32),
                   np.where(given, f * f, 0.0).astype(np.float32),
                   np.array([p.cell for p in prepared], dtype=np.float32).reshape(m, 6))


def make_samples(structure: Structure, plan: GridPlan, draws: Draws, rows) -> Samples:
    """Samples ``rows`` of ``draws`` of one structure (U_iso NaN in the draws: its own U)."""
    rows = list(rows)
    p = prepare(structure, plan, own_u=bool(np.isnan(draws.u_iso[rows[0]])))
    return augment([p] * len(rows), draws, rows)


class _Atoms:
    """The atomic models of some rows of a dataset, in memory (coordinates, elements;
    displacement parameters only when they are used)."""

    def __init__(self, path: Path, rows: np.ndarray, own_u: bool):
        with DatasetReader(path) as ds:
            try:
                ds.require("atoms/offset", "atoms/frac", "atoms/element")
            except DatasetError as exc:
                raise OnTheFlyError(f"{exc}; data.source = \"atoms\" needs the atomic models") from None
            offsets = ds.dataset("atoms/offset")[...]
            lo, hi = offsets[rows], offsets[rows + 1]
            self.offsets = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
            take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(rows) else np.zeros(0, int)
            names = ["frac", "element", "charge", "occupancy"] + (
                ["u_iso", "u_aniso", "u_defaulted"] if own_u else [])
            cols = {}
            for k in names:
                full = ds.dataset(f"atoms/{k}")
                a0, a1 = (int(take.min()), int(take.max()) + 1) if len(take) else (0, 0)
                cols[k] = full[a0:a1][take - a0]  # one read of the span, then the rows
            from phasenet.io.hdf5 import decode_strings

            element = decode_strings(cols.pop("element")).astype(str)
            self.elements, self.element_code = np.unique(element, return_inverse=True)
            self.cols = cols
            self.cell = ds.column("cell")[rows].astype(float)
            self.symops = [ds.symops(int(r)) for r in rows]
            self.ids = ds.ids[rows]
        self.own_u = own_u

    def structure(self, k: int) -> Structure:
        a, b = self.offsets[k], self.offsets[k + 1]
        n = int(b - a)
        c = {name: v[a:b] for name, v in self.cols.items()}
        atoms = AtomicModel(
            label=np.array([f"A{j}" for j in range(n)]), element=self.elements[self.element_code[a:b]],
            charge=c["charge"].astype(np.int8), frac=c["frac"].astype(float),
            occupancy=c["occupancy"].astype(float),
            u_iso=c["u_iso"].astype(float) if self.own_u else np.zeros(n),
            u_aniso=c["u_aniso"].astype(float) if self.own_u else np.full((n, 6), np.nan),
            u_defaulted=c["u_defaulted"].astype(bool) if self.own_u else np.zeros(n, bool))
        cid = str(self.ids[k])
        return Structure(source=cid, block=cid, cell=tuple(self.cell[k]), symops=self.symops[k],
                         space_group="", sg_number=0, atoms=atoms)


def synth_options(cfg):
    """The :class:`~phasenet.synth.generate.SynthOptions` of a ``synth`` source."""
    from phasenet.synth.options import PACKINGS, SynthOptions

    d = cfg.data
    try:
        return SynthOptions(seed=cfg.run.seed, space_groups=tuple(d.space_groups),
                            atoms=tuple(d.synth_atoms), max_edge=d.synth_max_edge,
                            max_index=d.max_index, r2_max=cfg.r2_max_or_none(),
                            **PACKINGS[d.synth_packing])
    except (ValueError, KeyError) as exc:
        raise OnTheFlyError(f"data.space_groups / data.synth_*: {exc}") from None


def synth_structure(index: int, options) -> Structure:
    """Structure ``index`` of the synth stream: generate_structure, or, where it cannot be
    made, the first of index + j·RETRY_STRIDE (j = 1, 2, ...) that can (deterministic)."""
    from phasenet.synth.generate import GenerationError, generate_structure

    for j in range(MAX_RETRIES + 1):
        try:
            return generate_structure(int(index) + j * RETRY_STRIDE, options)
        except GenerationError as exc:
            last = exc
    raise OnTheFlyError(f"synth structure {index}: {MAX_RETRIES + 1} attempts failed ({last})")


# ---- the batch source --------------------------------------------------------------------
class OnTheFlySource:
    """Batches of structure factors made on the fly (the interface of
    :class:`phasenet.training.data.BatchSource`: ``batch``, ``compute_batch``, ``start``,
    ``close``, ``steps_per_epoch``; wrapped for Keras by ``keras_dataset``).

    ``shuffle=True``: the endless training stream of structures (synth indices 0, 1, ...;
    for ``atoms`` the rows in a seeded permutation per pass). Batch i belongs to lane
    i mod LANES, as its j = i // LANES-th batch; with R = ``repeats`` and c = B/R, lane
    batch j holds the c structures the lane introduces at j and those it introduced at
    j - D, j - 2D, ..., j - (R-1)D (D = ``spacing``): B different structures, c of them
    new, each structure used R times, D·LANES batches apart. A worker process computing
    every ``workers``-th batch meets only its own lanes and keeps their structures' F₀
    until their last use (workers should divide LANES = 16). ``shuffle=False``: the test
    split, each structure once, the same batches every epoch (the last one may be short).
    ``x`` is ``{"intensity": e2, "mask": mask}`` (+ ``"cell"`` with model.cell_input),
    ``y`` the (B, R, 3) sign target.
    """

    input_mask = True  # the reader's slots carry the mask

    def __init__(self, cfg, split: str, *, shuffle: bool, path=None, rows=None, augmentation=None):
        d = cfg.data
        self.cfg, self.split, self.shuffle = cfg, split, shuffle
        self.kind = d.source
        if self.kind not in ("atoms", "synth"):
            raise ValueError(f"data.source {self.kind!r} is not an on-the-fly source")
        self.task = "sign"
        self.seed = cfg.run.seed
        self.batch_size = cfg.run.batch_size
        self.repeats = d.repeats if shuffle else 1
        self.transform = d.input_transform
        self.cell_input = cfg.model.cell_input
        self.weight_source = cfg.loss.weight_source
        # phase hints for a recycling model in training (data.hint: wrong-sign fraction range)
        self.hint = bool(d.hint) and cfg.model.architecture == "phasing-net"
        self.hint_range, self.hint_share = tuple(d.hint) or (0.0, 0.0), d.hint_share
        self.aug = augmentation or Augmentation.from_config(d)
        self.own_u = not self.aug.u_iso
        self.max_index, self.r2_max = d.max_index, cfg.r2_max_or_none()
        self.hkl = canonical_hkl(self.max_index, self.r2_max)
        self.n_reflections = len(self.hkl)
        self.tag = TRAIN_TAG if shuffle else TEST_TAG
        self.path = Path(path) if path is not None else None
        if self.kind == "atoms":
            if self.path is None:
                raise OnTheFlyError('data.source = "atoms" needs a dataset: give --data or data.path')
            self.rows = np.asarray(rows)
            self.n = len(self.rows)  # structures
            if self.n == 0:
                raise OnTheFlyError(f"{self.path}: no {split} structures with sign labels")
        else:
            self.options = synth_options(cfg)
            for g in self.options.space_groups:
                grid_plan(self.max_index, self.r2_max, symmetry(g))  # a group without labels: now
            self.rows = None
            self.n = (d.epoch_size or SYNTH_EPOCH) if shuffle else (d.max_test or SYNTH_TEST)  # samples
        b = self.batch_size
        if shuffle and b % self.repeats:
            raise OnTheFlyError(f"run.batch_size = {b} must be a multiple of data.repeats = {self.repeats}")
        self.per_batch = b // self.repeats  # new structures per training batch
        self.spacing = max(1, -(-LANE_STRUCTURES // b))  # D: lane batches between two uses
        if shuffle:
            samples = self.n if self.kind == "synth" else self.n * self.repeats
            self.steps_per_epoch = max(1, samples // b)
        else:
            self.steps_per_epoch = -(-self.n // b)
        self.workers = d.workers
        self.use_process = d.workers > 0
        self._reader = None
        self._atoms = None
        self._prepared: dict = {}  # structure key -> (lane, last lane batch, Prepared)
        self._cache = {} if (not shuffle and self.n * self.n_reflections * 5 * 4 <= TEST_CACHE_BYTES) else None

    # -- which structures --------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """atoms: the rows' positions in the order pass ``epoch`` takes them."""
        orders = self.__dict__.setdefault("_orders", {})
        if epoch not in orders:
            if len(orders) > 2:
                orders.clear()
            orders[epoch] = np.random.default_rng([self.seed, 104729, epoch]).permutation(self.n)
        return orders[epoch]

    def batch_positions(self, i: int) -> tuple[int, int, np.ndarray]:
        """(lane, lane batch j, positions in the structure stream of batch ``i``'s samples)."""
        i, b = int(i), self.batch_size
        if not self.shuffle:
            return 0, i, np.arange(i * b, min((i + 1) * b, self.n), dtype=np.int64)
        lane, j = i % LANES, i // LANES
        r, c = self.repeats, self.per_batch
        groups = j - self.spacing * np.arange(r, dtype=np.int64) + (r - 1) * self.spacing  # >= 0
        pos = (groups[:, None] * LANES + lane) * c + np.arange(c, dtype=np.int64)[None, :]
        return lane, j, pos.reshape(-1)

    def batch_keys(self, i: int) -> np.ndarray:
        """The structure of each sample of batch ``i``: synth indices (test:
        TEST_INDEX_OFFSET + k), or positions into ``rows`` (atoms)."""
        _, _, pos = self.batch_positions(i)
        if self.kind == "synth":
            return pos if self.shuffle else TEST_INDEX_OFFSET + pos
        if not self.shuffle:
            return pos
        epochs, at = np.divmod(pos, self.n)
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.epoch_order(int(e))[at[sel]]
        return out

    def structure(self, key: int) -> Structure:
        if self.kind == "synth":
            return synth_structure(int(key), self.options)
        if self._atoms is None:
            self._atoms = _Atoms(self.path, self.rows, own_u=self.own_u)
        return self._atoms.structure(int(key))

    def prepared(self, key: int, lane: int = 0, last: int = -1) -> Prepared:
        """F₀ of structure ``key``, kept until lane batch ``last`` of ``lane`` is done."""
        key = int(key)
        hit = self._prepared.get(key)
        if hit is None:
            s = self.structure(key)
            prep = prepare(s, grid_plan(self.max_index, self.r2_max, symmetry(s.symops)), self.own_u)
        else:
            prep = hit[2]
        if last >= 0:
            self._prepared[key] = (lane, max(last, hit[1] if hit else -1), prep)
        return prep

    def _evict(self, lane: int, j: int):
        old = [k for k, (ln, last, _) in self._prepared.items() if ln == lane and last < j]
        for k in old:
            del self._prepared[k]

    def draws(self, i: int, n: int | None = None) -> Draws:
        """The draws of batch ``i`` (a pure function of (seed, split, i))."""
        n = len(self.batch_keys(i)) if n is None else n
        return draw(self.aug, n, self.n_reflections, np.random.default_rng([self.seed, self.tag, int(i)]))

    def samples(self, i: int) -> Samples:
        lane, j, pos = self.batch_positions(i)
        keys = self.batch_keys(i)
        if self.shuffle:
            self._evict(lane, j)
            # a sample of group g (= pos // c // LANES) is in use at lane batches g - (R-1)D .. g
            last = pos // self.per_batch // LANES
            prepared = [self.prepared(k, lane, int(t)) for k, t in zip(keys, last)]
        else:  # each test structure once: nothing to keep
            prepared = [self.prepared(k) for k in keys]
        return augment(prepared, self.draws(i, len(keys)))

    # -- batches -----------------------------------------------------------------------
    def compute_batch(self, i: int):
        """Batch ``i`` computed in this process (the reader processes call this too)."""
        from phasenet.training.data import cell_features, prepare_input

        s = self.samples(i)
        e2 = prepare_input(s.e2, self.transform)
        x = {"intensity": e2, "mask": s.mask}
        if self.cell_input:
            x["cell"] = cell_features(s.cell)
        w_src = s.intensity_calc if self.weight_source == "calc" else e2
        y = [s.sign, w_src, s.intensity_calc]
        if self.hint and self.shuffle:
            x["hint"] = phase_hint(s.sign, self.hint_range, self.hint_share,
                                   np.random.default_rng([self.seed, self.tag, 1 << 20, int(i)]))
            # a hint fixes the origin: its samples are scored at the stored origin (SignLoss)
            hinted = (np.abs(x["hint"]).max(axis=1, keepdims=True) > 0).astype(np.float32)
            y.append(np.broadcast_to(hinted, s.sign.shape))
        elif self.hint:  # the test split: no hints (the model phases from nothing, as at inference)
            x["hint"] = np.zeros_like(s.sign, dtype=np.float32)
        return x, np.stack(y, axis=-1)

    def start(self, first_batch: int = 0):
        if self.use_process and self._reader is None and not self._complete():
            from phasenet.training.data import start_reader

            self._reader = start_reader(self, first_batch, self.workers)

    def _complete(self) -> bool:
        return self._cache is not None and len(self._cache) == self.steps_per_epoch

    def batch(self, i: int):
        """Batch ``i`` as (x, y) numpy arrays (from the worker processes when there are some)."""
        i = int(i)
        if self._cache is not None and i in self._cache:
            x, y = self._cache[i]
            return {k: v.copy() for k, v in x.items()}, y.copy()
        if self.use_process:
            self.start(i)
            out = self._reader.get(i)
        else:
            out = self.compute_batch(i)
        if self._cache is not None:
            self._cache[i] = ({k: v.copy() for k, v in out[0].items()}, out[1].copy())
            if self._complete() and self._reader is not None:  # every test batch is here
                self._reader.close()
                self._reader = None
        return out

    def next_index(self, i: int) -> int:
        return i + 1 if self.shuffle else (i + 1) % self.steps_per_epoch

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # what a worker process gets: no reader, caches or loaded atoms
        state = dict(self.__dict__)
        state.update(_reader=None, _atoms=None, _cache=None, _prepared={}, _orders={}, use_process=False)
        return state


# ---- run set-up --------------------------------------------------------------------------
def prepare_sources(cfg, path=None):
    """(train rows, test rows) for ``atoms`` (the split's structures with sign labels), or
    (None, None) for ``synth``; errors name the dataset and the reason."""
    if cfg.data.source == "synth":
        opts = synth_options(cfg)
        for g in opts.space_groups:
            grid_plan(cfg.data.max_index, cfg.r2_max_or_none(), symmetry(g))
        return None, None
    from phasenet.training.data import select_rows

    if path is None or not str(path):
        raise OnTheFlyError('data.source = "atoms" needs a dataset: give --data DATA.h5 or set data.path')
    with DatasetReader(path) as ds:
        try:
            ds.require("atoms/offset", "atoms/frac")
        except DatasetError as exc:
            raise OnTheFlyError(f"{exc}; data.source = \"atoms\" needs the atomic models") from None
        return select_rows(ds, "train", cfg), select_rows(ds, "test", cfg)


# ---- the grid form (3-D models) -----------------------------------------------------------
def box_hkl(max_index: int = 10) -> np.ndarray:
    """(2m+1)·(m+1)·(m+1) reflections h ∈ [-m, m], k, l ∈ [0, m] in C order (PhAI's grid)."""
    m = int(max_index)
    h, k, l = np.meshgrid(np.arange(-m, m + 1), np.arange(m + 1), np.arange(m + 1), indexing="ij")
    return np.stack([h, k, l], axis=-1).reshape(-1, 3)


def to_box(values: np.ndarray, hkl: np.ndarray, max_index: int = 10, fill: float = 0.0) -> np.ndarray:
    """Flat per-reflection ``values`` (..., R) on ``hkl`` (Friedel representatives, e.g. the
    canonical grid) as a box (..., 2m+1, m+1, m+1): each box cell takes the value of its
    reflection or of its Friedel mate, ``fill`` where neither is in ``hkl``. For the mask,
    to_box(mask, hkl) (0 off the list)."""
    values = np.asarray(values)
    box = box_hkl(max_index)
    rep, _ = friedel_representative(box)
    pos = lookup(np.asarray(hkl), rep)
    out = np.full(values.shape[:-1] + (len(box),), fill, dtype=values.dtype)
    on = pos >= 0
    out[..., on] = values[..., pos[on]]
    m = int(max_index)
    return out.reshape(values.shape[:-1] + (2 * m + 1, m + 1, m + 1))
