"""Structure factors of the independent-atom model on a reflection list.

The unit cell is filled by applying every symmetry operator to the asymmetric unit
exactly as the CIF gives it (no origin shift, no change of setting). An atom within
``SPECIAL_POSITION_TOLERANCE`` of a special position is put on it, with its
displacement tensor averaged over the site symmetry (as cctbx does), and counted once
per distinct copy: cctbx's convention with CIF (chemical) occupancies. The cell then
has the space group's symmetry exactly.

F(h) = Σ_j w_j f_j(s) exp(-hᵀβ_j h) exp(2πi h·x_j) over the unit cell is evaluated
with that symmetry (``method="auto"``, the default), exactly, not approximately:

- Laue symmetry of the reflections: F is summed for one reflection of each orbit
  {±h R} in the list; every other member follows as F(h) = exp(2πi h·t) F(h R)
  (and F(-h) = F(h)*), the phase factor from integer arithmetic on the operator's
  translation (a multiple of 1/24).
- Centrosymmetric groups: with an inversion centre c (x → 2c − x) the atoms come in
  pairs and F(h) = exp(2πi h·c) Σ' 2 w f exp(-hᵀβh) cos(2π h·(x − c)) over one atom
  of each pair (an atom whose orbit is its own inversion image counts once): half
  the atoms and no sines. With the centre at the origin F is real, so the phases
  are exactly 0 or π.
- Centred lattices (A, B, C, I, F, R): F(h) = n_T F_primitive(h), or 0 for the
  reflections the centring extinguishes, which are not summed at all.

``method="direct"`` sums every atom of the cell for every reflection (the plain
definition; tests compare the two, and a cell whose metric contradicts its operators
is always summed directly). The sums are dense array algebra: the phase arguments and
the exponents w·f·exp(-hᵀβh) = exp(-hᵀβh + ln w + ln f) are small matrix products
(atoms x reflections), the rest vectorised float32 arithmetic (coordinates reduced
modulo 1 first) with float64 accumulation of the per-reflection sums. Accuracy
against cctbx's direct summation: amplitude R ~1e-6, at most 5e-4 where the cell fits its
operators (tests/physics assert the documented limits, docs/science.md),
identical signs. Form factors: International Tables Vol. C (IT92) four-Gaussian
fits from cctbx's table, for the ion where the table has it (``Na1+``, ``O1-``),
otherwise for the neutral atom.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

import gemmi
from cctbx.eltbx import xray_scattering

from phasenet.reflections import hkl_from_token, hkl_token, reciprocal_metric, reciprocal_s2
from phasenet.structure import Structure
from phasenet.symmetry import DEN, Symmetry, symmetry

TWO_PI = 2.0 * np.pi
#: Copies of an atom closer than this (Å) are one atom on a special position.
SPECIAL_POSITION_TOLERANCE = 0.05
METHODS = ("auto", "direct")
_PACK = np.array([1024 * 1024, 1024, 1], dtype=np.int64)  # as reflections.hkl_keys


@dataclass(frozen=True)
class _SummationPlan:
    """What the fast summation needs to know about a group (cached per Symmetry)."""

    order: np.ndarray  # (m,) op indices, proper operators first (stable)
    orbit_op: np.ndarray  # (md,) one operator of each distinct rotation
    orbit_coef: np.ndarray  # (md, 3) float: R c (c packs an index into a key)


@lru_cache(maxsize=512)
def _summation_plan(sym: Symmetry) -> _SummationPlan:
    order = np.argsort(~sym.proper, kind="stable")
    first: dict[bytes, int] = {}  # one operator per distinct rotation
    for i, r in enumerate(sym.rotations):
        first.setdefault(r.tobytes(), i)
    pick = np.array(sorted(first.values()))
    coef = (sym.rotations[pick] @ _PACK).astype(np.float64)
    return _SummationPlan(order, pick, coef)


@dataclass(frozen=True)
class UnitCellContents:
    """All atoms of the unit cell, ready for summation."""

    frac: np.ndarray  # (N, 3)
    weight: np.ndarray  # (N,) occupancy / site multiplicity factor
    type_index: np.ndarray  # (N,) into ``types``
    beta: np.ndarray  # (N, 6): b11 b22 b33 2b12 2b13 2b23, DW = exp(-hᵀβh)
    types: tuple[tuple[str, int], ...]  # (element, charge) of each scattering type
    #: asymmetric-unit atom and operator (index into Symmetry.rotations) of each cell atom;
    #: None when the contents were not made by :func:`expand_to_unit_cell`
    asu_index: np.ndarray | None = None
    op_index: np.ndarray | None = None
    #: True when the atoms have the space group's symmetry exactly (the symmetric
    #: summation relies on it); False for hand-made contents
    exact_symmetry: bool = False


def _beta_matrices(structure: Structure, gstar: np.ndarray) -> np.ndarray:
    """β (n, 3, 3) of each atom of the asymmetric unit."""
    a = structure.atoms
    rec = gemmi.UnitCell(*structure.cell).reciprocal()
    n = np.array([rec.a, rec.b, rec.c])
    beta = (2 * np.pi**2) * a.u_iso[:, None, None] * gstar[None]
    aniso = np.isfinite(a.u_aniso).all(axis=1)
    if aniso.any():
        u = a.u_aniso[aniso]
        m = np.empty((len(u), 3, 3))
        m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = u[:, 0], u[:, 1], u[:, 2]
        m[:, 0, 1] = m[:, 1, 0] = u[:, 3]
        m[:, 0, 2] = m[:, 2, 0] = u[:, 4]
        m[:, 1, 2] = m[:, 2, 1] = u[:, 5]
        beta[aniso] = (2 * np.pi**2) * n[None, :, None] * m * n[None, None, :]
    return beta


def expand_to_unit_cell(structure: Structure) -> UnitCellContents:
    """Apply the space-group operators to the asymmetric unit.

    Copies of one atom closer than ``SPECIAL_POSITION_TOLERANCE`` are one atom on a
    special position. Such an atom is first moved onto the special position (the mean
    of its images under the operators that map it within the tolerance of itself, its
    site symmetry) and given the site-symmetric mean of those images' displacement
    tensors (as cctbx does); then one copy of each coincident set is kept (the first
    in ``Symmetry`` order with proper rotations first). The cell then has the
    space group's symmetry exactly. Cell atoms are ordered by asymmetric-unit atom.
    """
    ops = symmetry(structure.symops)
    plan = _summation_plan(ops)
    atoms = structure.atoms
    cell = gemmi.UnitCell(*structure.cell)
    gstar = reciprocal_metric(cell)
    orth = np.array(cell.orth.mat.tolist())
    order = plan.order
    rot = ops.rotations[order].astype(float)
    trans = ops.translations[order]
    m, n = len(order), len(atoms)

    x = np.einsum("mij,nj->nmi", rot, atoms.frac) + trans[None]
    x %= 1.0  # (n, m, 3)
    keep = np.ones((n, m), dtype=bool)
    beta_asu = _beta_matrices(structure, gstar)  # (n, 3, 3)
    metric_ok = m == 1 or _metric_invariant(ops, tuple(structure.cell))
    exact = True
    if m > 1:
        # An atom has coinciding copies iff some image lies on the atom itself (images
        # i, j coincide iff the image under op_j⁻¹ op_i does, at the same distance).
        d = x - atoms.frac[:, None, :]
        d -= np.round(d)
        dc = d @ orth.T
        near = np.einsum("nmi,nmi->nm", dc, dc) < SPECIAL_POSITION_TOLERANCE**2
        special = np.flatnonzero(near.sum(axis=1) > 1)
        # a cell that contradicts its operators (see _metric_invariant) has no exact
        # site symmetry to impose: its atoms stay as given (first copy kept)
        exact = metric_ok
        if len(special):
            exact = _special_positions(x, keep, beta_asu, atoms.frac, d, near, special,
                                       rot, trans, orth, symmetrise=exact)
    asu, img = np.nonzero(keep)

    beta = beta_asu[asu]
    # R β Rᵀ; for an isotropic β = 2π² U G* that is β itself (the operators keep G*)
    turn = np.isfinite(atoms.u_aniso).all(axis=1)[asu] | (not metric_ok)
    if turn.any():
        r = rot[img[turn]]
        beta[turn] = r @ beta[turn] @ r.transpose(0, 2, 1)
    b6 = np.stack([beta[:, 0, 0], beta[:, 1, 1], beta[:, 2, 2],
                   2 * beta[:, 0, 1], 2 * beta[:, 0, 2], 2 * beta[:, 1, 2]], axis=-1)

    types: dict[tuple[str, int], int] = {}
    tindex = np.array([types.setdefault(_scattering_type(e, int(c)), len(types))
                       for e, c in zip(atoms.element, atoms.charge)], dtype=np.int64)
    return UnitCellContents(
        frac=x[asu, img],
        weight=atoms.occupancy[asu],
        type_index=tindex[asu],
        beta=b6,
        types=tuple(types),
        asu_index=asu,
        op_index=order[img],
        exact_symmetry=exact,
    )


def _special_positions(x, keep, beta_asu, frac, d, near, special, rot, trans, orth,
                       symmetrise: bool = True) -> bool:
    """Symmetrise atoms near special positions, in place (x, keep, beta_asu); see
    :func:`expand_to_unit_cell`. Returns False if some atom's near operators are not
    its site-symmetry group (copies within the tolerance of each other but not of the
    atom: then its first copies are kept as they are, and the cell is not exactly
    symmetric), or if ``symmetrise`` is False (all atoms kept as they are)."""
    m = x.shape[1]
    if not symmetrise:
        _first_copies(x, keep, special, orth)
        return False
    nr = near[special]  # (k, m): the site-symmetry operators of each atom
    cnt = nr.sum(axis=1)
    xbar = frac[special] + np.einsum("km,kmi->ki", nr, d[special]) / cnt[:, None]
    # mean of R β Rᵀ over each atom's site-symmetry operators: Σ_m nr R_ai β_ij R_bj
    rr = np.einsum("mai,mbj->mabij", rot, rot).reshape(m, 9, 9)  # β (flat) -> R β Rᵀ (flat)
    bbar = np.einsum("km,mpq,kq->kp", nr / cnt[:, None], rr,
                     beta_asu[special].reshape(-1, 9)).reshape(-1, 3, 3)
    xi = np.einsum("mij,kj->kmi", rot, xbar) + trans[None]
    xi %= 1.0
    q = np.round(xi * 2.0**20).astype(np.int64) % (1 << 20)  # copies now coincide exactly
    key = (q[..., 0] << 40) | (q[..., 1] << 20) | q[..., 2]  # (k, m)
    kp = np.zeros((len(special), m), dtype=bool)
    for i, row in enumerate(key):  # the first operator of each distinct position
        kp[i, np.unique(row, return_index=True)[1]] = True
    ok = kp.sum(axis=1) * cnt == m  # |orbit| * |site group| = |group|
    good, bad = special[ok], special[~ok]
    x[good], keep[good], beta_asu[good] = xi[ok], kp[ok], bbar[ok]
    if len(bad):
        _first_copies(x, keep, bad, orth)
    return not len(bad)


def _first_copies(x, keep, atoms, orth) -> None:
    """Keep the first copy of each coincident set of these atoms' images, unchanged."""
    m = x.shape[1]
    step = max(1, 65_536 // (m * m))  # atoms per block: (block, m, m, 3) stays small
    for lo in range(0, len(atoms), step):
        sel = atoms[lo:lo + step]
        xs = x[sel]
        dd = xs[:, :, None, :] - xs[:, None, :, :]
        dd -= np.round(dd)
        dist = np.linalg.norm(dd @ orth.T, axis=-1)  # (block, m, m)
        first = np.argmax(dist < SPECIAL_POSITION_TOLERANCE, axis=2)
        keep[sel] = first == np.arange(m)[None, :]


def _ion_label(element: str, charge: int) -> str:
    return element + (f"{abs(charge)}{'+' if charge > 0 else '-'}" if charge else "")


@lru_cache(maxsize=256)
def _scattering_type(element: str, charge: int) -> tuple[str, int]:
    """The (element, charge) whose IT92 table is used: the ion if tabulated, else neutral."""
    name = gemmi.Element(element).name
    if charge:
        try:
            xray_scattering.it1992(_ion_label(name, charge), True)
            return (name, charge)
        except (RuntimeError, ValueError):
            pass
    return (name, 0)


@lru_cache(maxsize=256)
def it92_coefficients(element: str, charge: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(a[4], b[4], c) of the IT92 fit f(s) = Σ a exp(-b (sinθ/λ)²) + c (cctbx's table)."""
    try:
        g = xray_scattering.it1992(_ion_label(element, charge), True).fetch()
    except (RuntimeError, ValueError):
        raise ValueError(f"no IT92 scattering factor for {_ion_label(element, charge)!r}") from None
    return np.array(g.array_of_a()), np.array(g.array_of_b()), float(g.c())


def form_factors(types, stol2: np.ndarray) -> np.ndarray:
    """f (T, R) for each scattering type at each sin²θ/λ²."""
    a, b, c = _it92_table(tuple(types))  # (T, 4), (T, 4), (T,)
    e = np.exp(-b[:, :, None].astype(np.float32) * np.asarray(stol2, dtype=np.float32)[None, None, :])
    return a[:, 0, None] * e[:, 0] + a[:, 1, None] * e[:, 1] + a[:, 2, None] * e[:, 2] \
        + a[:, 3, None] * e[:, 3] + c[:, None]


@lru_cache(maxsize=1024)
def _it92_table(types: tuple[tuple[str, int], ...]):
    coef = [it92_coefficients(el, ch) for el, ch in types]
    return (np.array([x[0] for x in coef]).reshape(-1, 4), np.array([x[1] for x in coef]).reshape(-1, 4),
            np.array([x[2] for x in coef]))


def _hh(hkl: np.ndarray) -> np.ndarray:
    h = hkl.astype(np.float64)
    return np.stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2,
                     h[:, 0] * h[:, 1], h[:, 0] * h[:, 2], h[:, 1] * h[:, 2]], axis=1)


def structure_factors(structure: Structure, hkl: np.ndarray,
                      contents: UnitCellContents | None = None,
                      dtype=np.float32, real: bool = False, method: str = "auto") -> np.ndarray:
    """Complex F (R,) for the reflections ``hkl`` (R, 3).

    ``method="auto"`` uses the space group's symmetry (see the module docstring);
    ``"direct"`` sums every atom of the cell for every reflection. Contents that did
    not come from :func:`expand_to_unit_cell` are always summed directly. ``real=True``
    returns the real part only (for space groups with an inversion centre at the
    origin that is all of F; ``auto`` gives those exactly real F anyway).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if contents is None:
        contents = expand_to_unit_cell(structure)
    hkl = np.asarray(hkl)
    sym = symmetry(structure.symops)
    if (method == "direct" or not contents.exact_symmetry or len(hkl) == 0
            or not _metric_invariant(sym, tuple(structure.cell))):
        # with an inversion centre at the origin the sines cancel in ±x pairs
        real = real or (method == "auto" and contents.asu_index is not None
                        and sym.has_origin_inversion)
        f = _direct(structure, hkl, contents, dtype, real)
    else:
        f = _symmetric(structure, hkl, contents, dtype)
    if real:
        f = f.real + 0j
    return f


def _stol2(structure: Structure, hkl: np.ndarray) -> np.ndarray:
    """sin²θ/λ² = hᵀG*h / 4 of each row of hkl."""
    return reciprocal_s2(hkl, structure.cell) / 4.0


# ------------------------------------------------------------------ direct sum


def _direct(structure, hkl, contents, dtype, real) -> np.ndarray:
    """Σ over every atom of the cell for every reflection (the definition)."""
    f = form_factors(contents.types, _stol2(structure, hkl)).astype(dtype)  # (T, R)
    # Atoms in blocks of (atoms x reflections) ~150 000 elements: the temporaries
    # stay in cache and below malloc's mmap threshold, which is ~3x faster than
    # one big block (page faults on every fresh multi-MB temporary).
    block = max(1, 150_000 // max(1, len(hkl)))
    re_sum = np.zeros(len(hkl))
    im_sum = np.zeros(len(hkl))
    h = hkl.astype(np.float64)
    hh = _hh(hkl).astype(dtype).T.copy()  # (6, R)
    ht = h.astype(dtype).T.copy()  # (3, R)
    x = (TWO_PI * contents.frac).astype(dtype)
    beta = contents.beta.astype(dtype)
    weight = contents.weight.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # callers check finiteness
        for start in range(0, len(x), block):
            sl = slice(start, start + block)
            theta = x[sl] @ ht  # (b, R) phase arguments 2π h·x
            w = f[contents.type_index[sl]] * np.exp(-(beta[sl] @ hh))  # f · Debye-Waller
            w *= weight[sl, None]
            re_sum += np.einsum("br,br->r", w, np.cos(theta))
            if not real:
                im_sum += np.einsum("br,br->r", w, np.sin(theta))
    return re_sum + 1j * im_sum


# ------------------------------------------------------------- symmetric sum

#: exp(2πi k/(2 DEN)) for k = 0 .. 2 DEN - 1, exact where it is 0, ±1 or ±i
_ROOTS = np.exp(2j * np.pi * np.arange(2 * DEN) / (2 * DEN))
_ROOTS = np.where(np.abs(_ROOTS.real) < 1e-12, 0.0, _ROOTS.real) + 1j * np.where(
    np.abs(_ROOTS.imag) < 1e-12, 0.0, _ROOTS.imag)


@dataclass(frozen=True)
class _LauePlan:
    """How a reflection list follows from one reflection of each Laue orbit."""

    reps: np.ndarray  # (U, 3) the reflections summed: the largest-key member of each orbit
    rep_of: np.ndarray  # (R,) index into reps of each reflection's orbit
    k: np.ndarray  # (R,) F(h) = exp(2πi k/(2 DEN)) F(rep) ...
    conj: np.ndarray  # (R,) ... with F(rep) conjugated where True
    use: np.ndarray  # (U,) reps not extinguished by the lattice centring (the ones summed)
    ht: np.ndarray  # (3, U') float32 indices of the reps summed (U' = use.sum())
    hh: np.ndarray  # (7, U') float32 h², k², l², hk, hl, kl, 1 of the reps summed
    hf: np.ndarray  # (3, U') float64 indices of the reps summed
    k_centre: np.ndarray | None  # (U,) exp(2πi h·c) = _ROOTS[k_centre], inversion centre c


def _laue_plan(sym: Symmetry, hkl: np.ndarray) -> _LauePlan:
    return _laue_plan_cached(sym, *hkl_token(hkl))


@lru_cache(maxsize=1024)
def _laue_plan_cached(sym: Symmetry, token: tuple, n: int) -> _LauePlan:
    """Each reflection h maps onto its orbit's representative m (the member with the
    largest packed key, as in ``reflections.laue_asu_keys``) by some rotation:
    h R = σ m, σ = ±1. With F(h R) = exp(-2πi h·t) F(h) and F(-h) = F(h)*:
    F(h) = exp(2πi h·t) F(m), conjugated when σ = -1."""
    hkl = hkl_from_token(token, n)
    if np.abs(hkl).max(initial=0) >= 512:
        raise ValueError("Miller indices must be below 512 in magnitude")
    sp = _summation_plan(sym)
    coef, pick = sp.orbit_coef, sp.orbit_op
    h = hkl.T.astype(np.float64)  # (3, n)
    g = np.zeros(n, dtype=np.int64)
    for i, c in enumerate(coef):  # c = R c: the packed key of h R, less K0
        v = c[0] * h[0] + c[1] * h[1] + c[2] * h[2]
        if i == 0:
            best = v
            continue
        better = np.abs(v) > np.abs(best)  # the first of equals, as argmax
        best = np.where(better, v, best)
        g[better] = i
    key, rep_of = np.unique(np.abs(best).astype(np.int64), return_inverse=True)
    packed = key + int(_PACK.sum()) * 512
    reps = np.stack([packed // (1024 * 1024), (packed // 1024) % 1024, packed % 1024], axis=1) - 512
    t = sym.translations_den[pick[g]]  # (n, 3)
    k = (2 * (hkl[:, 0] * t[:, 0] + hkl[:, 1] * t[:, 1] + hkl[:, 2] * t[:, 2])) % (2 * DEN)
    # centring: F = 0 where some centring translation t gives h·t not an integer
    use = np.all((reps @ sym.centring_den.T) % DEN == 0, axis=1)
    hf = reps[use].T.astype(np.float64)
    hh = np.empty((7, hf.shape[1]), dtype=np.float32)
    hh[0], hh[1], hh[2] = hf[0] ** 2, hf[1] ** 2, hf[2] ** 2
    hh[3], hh[4], hh[5] = hf[0] * hf[1], hf[0] * hf[2], hf[1] * hf[2]
    hh[6] = 1.0
    k_centre = None if sym.inversion_den is None else (reps @ sym.inversion_den) % (2 * DEN)
    plan = _LauePlan(reps, rep_of.ravel().astype(np.int64), k.astype(np.int64), best < 0,
                     use, hf.astype(np.float32), hh, hf, k_centre)
    for arr in (plan.reps, plan.rep_of, plan.k, plan.conj, plan.use, plan.ht, plan.hh, plan.hf):
        arr.setflags(write=False)
    return plan


def _symmetric(structure, hkl, contents, dtype) -> np.ndarray:
    sym = symmetry(structure.symops)
    plan = _laue_plan(sym, hkl)
    x, weight = contents.frac, contents.weight
    sel = None
    if sym.inversion_den is not None:
        # one atom of each inversion pair: the copies made by proper rotations
        # (operators are ordered proper first, so a copy that both make is kept as
        # the proper one); an atom whose copies are all proper-made images of each
        # other (it sits on an inversion centre's orbit) counts once, else twice
        proper = sym.proper[contents.op_index]
        n_asu = int(contents.asu_index.max()) + 1
        n_all = np.bincount(contents.asu_index, minlength=n_asu)
        n_half = np.bincount(contents.asu_index[proper], minlength=n_asu)
        sel = np.flatnonzero(proper)
        x = x[sel]
        weight = weight[sel] * (n_all[contents.asu_index[sel]] / n_half[contents.asu_index[sel]])
    # centring: the cell is its primitive part repeated by the centring translations t,
    # so F(h) = Σ_t exp(2πi h·t) F_primitive(h) = |T| F_primitive(h), or 0 (h absent)
    use = None
    if len(sym.centring_den) > 1:
        first = _centring_representatives(x, sym.centring_den)
        if first is not None:
            use = plan.use
            x, weight = x[first], weight[first] * len(sym.centring_den)
            sel = first if sel is None else sel[first]
    type_index = contents.type_index if sel is None else contents.type_index[sel]
    beta = contents.beta if sel is None else contents.beta[sel]
    if use is None:  # all reps (plan.ht etc. hold the centring-allowed ones only)
        hf = plan.reps.T.astype(np.float64)
        q = (hf.astype(np.float32), None, hf)
    else:
        q = (plan.ht, plan.hh, plan.hf)
    if sym.inversion_den is not None:  # cosines about the inversion centre c: x -> 2c - x
        x = x - sym.inversion_den / (2.0 * DEN)
    g = _sum(x, weight, type_index, beta, q, contents.types, structure.cell, dtype,
             imaginary=sym.inversion_den is None)
    if use is not None:
        full = np.zeros(len(plan.reps), dtype=g.dtype)
        full[use] = g
        g = full
    if sym.inversion_den is not None:
        if sym.has_origin_inversion:
            return g[plan.rep_of] * _ROOTS[plan.k].real + 0j
        f_rep = g * _ROOTS[plan.k_centre]  # exp(2πi h·c) F_centred(h)
    else:
        f_rep = g
    f = f_rep[plan.rep_of]
    return np.where(plan.conj, f.conj(), f) * _ROOTS[plan.k]


def _centring_representatives(frac: np.ndarray, centring: np.ndarray) -> np.ndarray | None:
    """Indices of one atom of each set {x + t : t a centring translation} (the set whose
    position key is smallest), or None if the atoms do not come in such complete sets."""
    x = frac % 1.0
    keys = []
    for t in centring:
        q = np.round(((x + t / DEN) % 1.0) * 2.0**20).astype(np.int64) % (1 << 20)
        keys.append((q[:, 0] << 40) | (q[:, 1] << 20) | q[:, 2])
    keys = np.array(keys)  # (|T|, n); row 0 is t = 0
    first = np.flatnonzero(keys[0] == keys.min(axis=0))
    if len(first) * len(centring) != len(x) or len(np.unique(keys[0])) != len(x):
        return None
    return first


#: relative tolerance of R G* Rᵀ = G* (the cell's metric agrees with the operators)
METRIC_TOLERANCE = 1e-5


@lru_cache(maxsize=1024)
def _metric_invariant(sym: Symmetry, cell: tuple[float, ...]) -> bool:
    """True when every rotation keeps the reciprocal metric (|h R| = |h|), so symmetry-
    equivalent reflections share their form factors. A cell that contradicts its
    operators (a rhombohedral cell with a cubic F group's operators) is summed directly."""
    g = reciprocal_metric(gemmi.UnitCell(*cell))
    r = sym.rotations.astype(float)
    dev = np.abs(r @ g @ r.transpose(0, 2, 1) - g[None]).max()
    return bool(dev <= METRIC_TOLERANCE * np.abs(g).max())


#: atoms x reflections per block: the temporaries (reused) stay in the CPU cache
_BLOCK = 65_536


def _sum(x, weight, type_index, beta, q, types, cell, dtype, imaginary):
    """The sums over atoms (rows of x) for each reflection, float32 terms in blocks of
    atoms, float64 accumulation: Σ_j w_j f_j exp(-hᵀβ_j h) (cos, i sin)(2π h·x_j).

    ``q`` = (ht (3, U) float32, hh (7, U) float32 or None, hf (3, U) float64) of the
    reflections. Each term is exp(b·p) (cos, sin)(2π h·x) with b·p = -hᵀβh + ln w +
    ln f_type(h): one matrix product of the atom rows b = (-β11 .. -2β23, ln w, one-hot
    type) with the reflection columns p = (h², k², l², hk, hl, kl, 1, ln f_1(h) ..
    ln f_T(h)). (Where some f or w is not positive the form factors multiply per type.)
    """
    ht, hh, hf = q
    stol2 = reciprocal_s2(hf.T, cell) / 4
    f_t = form_factors(types, stol2)  # (T, U)
    keep = weight != 0
    if not keep.all():
        x, weight, type_index, beta = x[keep], weight[keep], type_index[keep], beta[keep]
    n_h, n_t = ht.shape[1], len(f_t)
    out_re = np.zeros(n_h)
    out_im = np.zeros(n_h) if imaginary else None
    if not len(x):
        return out_re if not imaginary else out_re + 0j
    x = x - np.round(x)  # |x| <= 1/2: the float32 phase argument stays small
    xs = (TWO_PI * x).astype(dtype)
    folded = bool(np.all(f_t > 0) and np.all(weight > 0))
    k = 7 + (n_t if folded else 0)
    p = np.empty((k, n_h), dtype=dtype)
    if hh is not None:
        p[:7] = hh
    else:
        p[0], p[1], p[2] = hf[0] ** 2, hf[1] ** 2, hf[2] ** 2
        p[3], p[4], p[5] = hf[0] * hf[1], hf[0] * hf[2], hf[1] * hf[2]
        p[6] = 1.0
    b = np.zeros((len(x), k))
    b[:, :6] = -beta
    b[:, 6] = np.log(np.abs(weight))
    if folded:
        p[7:] = np.log(f_t)
        b[np.arange(len(x)), 7 + type_index] = 1.0
        groups = [(0, len(x), None)]
    else:  # per type: sorted, the form factor multiplies each type's sum
        order = np.argsort(type_index, kind="stable")
        xs, b, type_index = xs[order], b[order], type_index[order]
        weight = weight[order]
        bounds = np.searchsorted(type_index, np.arange(n_t + 1))
        groups = [(bounds[t], bounds[t + 1], t) for t in range(n_t) if bounds[t + 1] > bounds[t]]
    b = b.astype(dtype)
    sign = None if np.all(weight > 0) else np.sign(weight).astype(dtype)
    block = max(1, min(len(xs), _BLOCK // n_h))
    theta = np.empty((block, n_h), dtype=dtype)
    w = np.empty((block, n_h), dtype=dtype)
    s = np.empty((block, n_h), dtype=dtype) if imaginary else None
    acc_re, acc_im = np.empty(n_h), np.empty(n_h)
    with np.errstate(over="ignore", invalid="ignore"):  # callers check finiteness
        for lo, hi, t in groups:
            acc_re[:] = 0.0
            if imaginary:
                acc_im[:] = 0.0
            for start in range(lo, hi, block):
                stop = min(start + block, hi)
                nb = stop - start
                th, ww = theta[:nb], w[:nb]
                np.matmul(xs[start:stop], ht, out=th)  # 2π h·x
                np.matmul(b[start:stop], p, out=ww)
                np.exp(ww, out=ww)  # w f exp(-hᵀβh)
                if sign is not None:
                    ww *= sign[start:stop, None]
                if imaginary:
                    ss = s[:nb]
                    np.sin(th, out=ss)
                    ss *= ww
                    acc_im += ss.sum(axis=0)
                np.cos(th, out=th)
                th *= ww
                acc_re += th.sum(axis=0)
            if t is None:
                out_re += acc_re
                if imaginary:
                    out_im += acc_im
            else:
                out_re += f_t[t] * acc_re
                if imaginary:
                    out_im += f_t[t] * acc_im
    return out_re if not imaginary else out_re + 1j * out_im
