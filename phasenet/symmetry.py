"""One symmetry object: a space group in a given setting, parsed once.

:func:`symmetry` turns whatever describes the symmetry into a :class:`Symmetry`:
an H-M symbol (``"P 21/c"``, ``"P 1 21/n 1"``), a space-group number (``14``, the
standard setting), a Hall symbol (``"-P 2ybc"``), operator triplets (a tuple or list
of ``"x,y,z"`` strings, or one string joined by ``;`` as the datasets store them), a
``gemmi.SpaceGroup`` or ``gemmi.GroupOps``, or a ``Symmetry`` (returned as it is).
Every function that needs symmetry converts its argument once, at its edge, with
:func:`symmetry`; nothing re-parses operator strings.

A ``Symmetry`` is identified by its set of operators (translations wrapped into
[0, 1)): built from an H-M symbol, its number, its Hall symbol or its operators in
any order, the same group in the same setting gives an equal object (one cached
instance). The operators are kept in a canonical order (``triplets`` sorted;
``rotations``/``translations`` in gemmi's order for that list, centring vectors
included), so that every result computed from them is independent of how the
symmetry was given.

It carries what the rest of phasenet asks of a space group: centring, inversion
centre (at the origin or not), centric reflections, systematic absences, epsilon
factors (gemmi's, centring included: cctbx's ε times the number of centring
vectors) and the permissible origin shifts of the phase problem (discrete, on a
1/24 grid, and the continuous directions of polar groups).

>>> symmetry("P 21/c") == symmetry(14) == symmetry("-P 2ybc")
True
>>> s = symmetry(["x,y,z", "-x,-y,-z"])
>>> s.is_centrosymmetric, s.has_origin_inversion, len(s.origin_shifts())
(True, True, 8)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

import gemmi

from phasenet.reflections import hkl_token, hkl_from_token

#: Operators' translations are multiples of 1/DEN (gemmi's convention).
DEN = gemmi.Op.DEN
#: Grid of candidate origin shifts (steps of 1/ORIGIN_GRID); 24 holds 1/2, 1/3, 1/4, 1/6, 1/8.
ORIGIN_GRID = 24
_IDENTITY = "x,y,z"
_TOL = 1e-4


class Symmetry:
    """The operators of a space group in one setting, and what follows from them.

    Immutable and hashable (equal when the operator sets are equal). Build it with
    :func:`symmetry`; the arrays are read-only and shared.
    """

    __slots__ = ("triplets", "rotations", "translations", "translations_den", "group_ops",
                 "centring_den", "inversion_den", "proper", "_hash")

    def __init__(self, triplets: tuple[str, ...]):
        # ``triplets``: canonical (normalised by gemmi, translations wrapped, sorted,
        # distinct); only _from_key calls this
        group = gemmi.GroupOps([gemmi.Op(t) for t in triplets])
        rots, trans = [], []
        for op in group:  # all operators, centring vectors included
            rots.append(np.array(op.rot) // DEN)
            trans.append(op.tran)
        rotations = np.array(rots, dtype=np.int64)
        tran = np.array(trans, dtype=np.int64).reshape(-1, 3)
        translations = np.array(trans, dtype=float).reshape(-1, 3) / DEN % 1.0
        trans_den = tran % DEN
        proper = np.round(np.linalg.det(rotations.astype(float))).astype(int) > 0
        inv = np.flatnonzero(np.all(rotations == -np.eye(3, dtype=np.int64), axis=(1, 2)))
        inversion = None
        if len(inv):  # the centre with the smallest translation: independent of the order
            inversion = np.array(sorted(tuple(int(v) for v in trans_den[i]) for i in inv)[0],
                                 dtype=np.int64)
        ident = np.all(rotations == np.eye(3, dtype=np.int64), axis=(1, 2))
        centring = trans_den[ident]
        centring = centring[np.lexsort(centring.T[::-1])]  # (0, 0, 0) first
        for arr in (rotations, translations, trans_den, centring, proper):
            arr.setflags(write=False)
        if inversion is not None:
            inversion.setflags(write=False)
        set_ = object.__setattr__
        set_(self, "triplets", triplets)
        set_(self, "rotations", rotations)
        set_(self, "translations", translations)
        set_(self, "translations_den", trans_den)
        # gemmi's queries (absences, epsilon, centric flags) expect the identity and the
        # zero centring vector first
        set_(self, "group_ops", gemmi.GroupOps(
            [gemmi.Op(_IDENTITY)] + [gemmi.Op(t) for t in triplets if t != _IDENTITY]))
        set_(self, "centring_den", centring)
        set_(self, "inversion_den", inversion)
        set_(self, "proper", proper)
        set_(self, "_hash", hash(triplets))

    # -- identity

    def __setattr__(self, name, value):
        raise AttributeError("Symmetry is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, Symmetry) and self.triplets == other.triplets

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        name = self.hm
        return f"Symmetry({name!r})" if name else f"Symmetry({self.triplets!r})"

    def __reduce__(self):  # pickled (forked/spawned workers) as its triplets
        return (symmetry, (self.triplets,))

    def __len__(self) -> int:
        """Number of operators, centring included."""
        return len(self.rotations)

    @property
    def space_group(self):
        """The tabulated ``gemmi.SpaceGroup`` of these operators, or None (a setting gemmi lacks)."""
        return _space_group(self)

    @property
    def hm(self) -> str:
        """Extended H-M symbol if gemmi tabulates the setting, else ''."""
        sg = self.space_group
        return sg.xhm() if sg is not None else ""

    @property
    def number(self) -> int:
        """Space-group number (0 where gemmi does not tabulate the setting)."""
        sg = self.space_group
        return sg.number if sg is not None else 0

    # -- group facts

    @property
    def centring(self) -> np.ndarray:
        """(n_T, 3) fractional centring vectors, (0, 0, 0) first."""
        return self.centring_den / DEN

    @property
    def is_centrosymmetric(self) -> bool:
        return self.inversion_den is not None

    @property
    def has_origin_inversion(self) -> bool:
        """True if x -> -x (with a lattice translation only) is an operator."""
        return self.inversion_den is not None and not self.inversion_den.any()

    # -- reflections

    def systematic_absences(self, hkl) -> np.ndarray:
        """(R,) bool, read-only: reflections the operators make systematically absent
        (gemmi's rule; cached per reflection list)."""
        key = (self,) + hkl_token(hkl)
        out = _ABSENCES.get(key)
        if out is None:
            h = np.ascontiguousarray(hkl_from_token(*key[1:]), dtype=np.int32)
            out = np.asarray(self.group_ops.systematic_absences(h), dtype=bool)
            out.setflags(write=False)
            if len(_ABSENCES) < 1024:
                _ABSENCES[key] = out
        return out

    def epsilon(self, hkl) -> np.ndarray:
        """(R,) float: epsilon factors (operators, centring included, with h R = h)."""
        h = np.ascontiguousarray(hkl, dtype=np.int32).reshape(-1, 3)
        return np.asarray(self.group_ops.epsilon_factor_array(h), dtype=float)

    def is_centric(self, hkl) -> np.ndarray:
        """(R,) bool: centric reflections (h R = -h for some rotation R)."""
        h = np.ascontiguousarray(hkl, dtype=np.int32).reshape(-1, 3)
        return np.asarray(self.group_ops.centric_flag_array(h), dtype=bool)

    # -- origin of the phase problem

    def origin_shift_mask(self, inverted: bool = False, n: int = ORIGIN_GRID) -> np.ndarray:
        """(n³,) bool, read-only, over the 1/n grid of shifts (ij order): the permissible
        origin shifts (see :meth:`origin_shifts`)."""
        return _allowed_mask(self, bool(inverted), int(n))

    def origin_shifts(self, inverted: bool = False, n: int = ORIGIN_GRID) -> np.ndarray:
        """(K, 3) fractional origin shifts on the 1/n grid that the space group permits.

        A shift t is permissible when it maps the operators onto themselves: for every
        operator (R, s), (R − I)·t is a centring vector modulo the lattice.
        ``inverted=True``: the shifts that map the inverted structure's operators onto
        the group's (empty where the enantiomorph lies in another space group, e.g.
        P3₁ ↔ P3₂).
        """
        return _shift_grid(int(n))[self.origin_shift_mask(inverted, n)]

    def continuous_origin_directions(self) -> np.ndarray:
        """(k, 3) orthonormal directions along which the origin moves freely (polar groups); k = 0..3."""
        return _continuous(self)


def _normalise(op: gemmi.Op) -> str:
    return op.wrap().triplet()


@lru_cache(maxsize=512)
def _from_key(key: tuple[str, ...]) -> Symmetry:
    return Symmetry(key)


@lru_cache(maxsize=4096)
def _from_triplets(triplets: tuple[str, ...]) -> Symmetry:
    ops = []
    for t in triplets:
        try:
            ops.append(gemmi.Op(t))
        except Exception as exc:  # gemmi raises RuntimeError for bad triplets
            raise ValueError(f"cannot parse symmetry operator {t!r} ({exc})") from None
    if not ops:
        raise ValueError("no symmetry operators given")
    return _from_key(tuple(sorted({_normalise(op) for op in ops})))


def _from_group_ops(group) -> Symmetry:
    return _from_key(tuple(sorted({_normalise(op) for op in group})))


@lru_cache(maxsize=1024)
def _from_symbol(name: str) -> Symmetry:
    if "," in name:  # operators joined by ';' (as datasets store them)
        return _from_triplets(tuple(t.strip() for t in name.split(";") if t.strip()))
    sg = gemmi.find_spacegroup_by_name(name.strip())
    if sg is not None:
        return _from_group_ops(sg.operations())
    try:
        group = gemmi.symops_from_hall(name.strip())
    except Exception:
        raise ValueError(f"unknown space group {name!r}: not an H-M or Hall symbol") from None
    return _from_group_ops(group)


@lru_cache(maxsize=256)
def _from_number(number: int) -> Symmetry:
    if not 1 <= number <= 230:
        raise ValueError(f"space-group number must be 1..230, got {number}")
    return _from_group_ops(gemmi.find_spacegroup_by_number(number).operations())


def symmetry(x) -> Symmetry:
    """The :class:`Symmetry` of ``x``: an H-M or Hall symbol, a space-group number,
    operator triplets (sequence, or one ``;``-joined string), a ``gemmi.SpaceGroup``
    or ``gemmi.GroupOps``, or a ``Symmetry``. Raises ValueError if it is none of these.

    >>> symmetry("C 1 2/c 1").centring.tolist()
    [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]
    """
    if isinstance(x, Symmetry):
        return x
    if isinstance(x, str):
        return _from_symbol(x)
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return _from_number(int(x))
    if isinstance(x, gemmi.SpaceGroup):
        return _from_group_ops(x.operations())
    if isinstance(x, gemmi.GroupOps):
        return _from_group_ops(x)
    if isinstance(x, (tuple, list, np.ndarray)):
        triplets = tuple(str(t.decode() if isinstance(t, bytes) else t) for t in x)
        if not all(isinstance(t, str) for t in triplets):
            raise ValueError(f"operators must be strings, got {x!r}")
        return _from_triplets(triplets)
    raise ValueError(f"cannot make a space-group symmetry from {type(x).__name__} {x!r}: "
                     "give an H-M or Hall symbol, a number, operator triplets, a gemmi "
                     "SpaceGroup/GroupOps or a Symmetry")


# ---------------------------------------------------------------------------
# cached computations (keyed by the Symmetry: one per group and setting)

_ABSENCES: dict[tuple, np.ndarray] = {}


@lru_cache(maxsize=512)
def _space_group(sym: Symmetry):
    return gemmi.find_spacegroup_by_ops(sym.group_ops)


@lru_cache(maxsize=16)
def _shift_grid(n: int) -> np.ndarray:
    g = np.arange(n) / n
    t = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    t.setflags(write=False)
    return t


def _ops_by_rotation(sym: Symmetry) -> dict[bytes, np.ndarray]:
    out: dict[bytes, list] = {}
    for r, t in zip(sym.rotations, sym.translations):
        out.setdefault(r.astype(np.int64).tobytes(), []).append(t % 1.0)
    return {k: np.array(v) for k, v in out.items()}


def _in_set(v: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For rows v (M, 3): is v ≡ one of ``targets`` (k, 3) modulo the lattice?"""
    d = v[:, None, :] - targets[None, :, :]
    d -= np.round(d)
    return (np.abs(d) < _TOL).all(axis=2).any(axis=1)


@lru_cache(maxsize=256)
def _allowed_mask(sym: Symmetry, inverted: bool, n: int) -> np.ndarray:
    by_rot = _ops_by_rotation(sym)
    t = _shift_grid(n)
    ok = np.ones(len(t), dtype=bool)
    eye = np.eye(3, dtype=np.int64)
    for r, s in zip(sym.rotations, sym.translations):
        idx = np.flatnonzero(ok)
        if not len(idx):
            break
        v = (-s if inverted else s)[None, :] + t[idx] @ (r - eye).T
        ok[idx] = _in_set(v, by_rot[r.astype(np.int64).tobytes()])
    ok.setflags(write=False)
    return ok


@lru_cache(maxsize=256)
def _continuous(sym: Symmetry) -> np.ndarray:
    m = np.concatenate([r - np.eye(3) for r in sym.rotations]).astype(float)
    _, sv, vt = np.linalg.svd(m)
    rank = int((sv > 1e-8).sum())
    out = vt[rank:].copy()
    out.setflags(write=False)
    return out
