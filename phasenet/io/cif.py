"""Read crystal structures (and any measured reflections) from CIF files.

gemmi parses; this module turns each data block that holds atoms into a
:class:`phasenet.structure.Structure`, or into a :class:`ReadFailure` whose reason
a person can act on. Nothing here raises for bad input: failures are returned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

import gemmi

from phasenet.structure import AtomicModel, Structure
from phasenet.io import hkl as hkl_reader

#: Atoms in the unit cell (atoms listed x symmetry operators) above which a block is a
#: failure of kind "too-many-atoms" (``--max-atoms``). Checked before anything is
#: computed; with it, a worker's memory and time per structure are bounded (see
#: docs/robustness.md). Generous: real small-molecule cells hold well under 2 000.
DEFAULT_MAX_ATOMS = 20_000

#: U_iso (Å²) given to atoms without displacement parameters (computed-database CIFs
#: lack them). B = 8π²U ≈ 3.2 Å², typical of organic crystals near room temperature.
DEFAULT_U_ISO = 0.04


@dataclass(frozen=True)
class ReadFailure:
    source: str
    block: str
    reason: str
    kind: str = "invalid-structure"

    def __str__(self) -> str:
        where = f"{self.source}" + (f" [block {self.block}]" if self.block else "")
        return f"{where}: {self.reason}"


class StructureError(ValueError):
    """A data block that cannot become a structure; the message says why.

    ``kind`` is a short category used to summarise failures by reason.
    """

    def __init__(self, message: str, kind: str = "invalid-structure"):
        super().__init__(message)
        self.kind = kind


def _block_has_atoms(block) -> bool:
    return len(block.find_loop("_atom_site_fract_x")) > 0 or block.find_value(
        "_atom_site_fract_x"
    ) is not None


def _group_from_symops(triplets: list[str]):
    ops = []
    for t in triplets:
        try:
            ops.append(gemmi.Op(t))
        except Exception as exc:  # gemmi raises RuntimeError for bad triplets
            raise StructureError(f"cannot parse symmetry operator {t!r} ({exc})", "bad-symmetry") from None
    group = gemmi.GroupOps(ops)
    if len(ops) == len(list(group)) and gemmi.find_spacegroup_by_ops(group) is not None:
        return group  # the operators are exactly a tabulated group
    # Closure check: damaged files list operators that do not form a group.
    full = [op for op in group]
    seeds = {op.triplet() for op in full}
    for a in ops:
        for b in ops:
            if (a * b).wrap().triplet() not in seeds:
                raise StructureError(
                    "symmetry operators do not form a group "
                    f"({a.triplet()} * {b.triplet()} is not in the list)",
                    "bad-symmetry",
                )
    return group


_SYMOP_TAGS = ("_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz",
               "_symmetry_equiv_pos_as_xyz", "_symmetry_equiv.pos_as_xyz")
_HALL_TAGS = ("_space_group_name_Hall", "_space_group.name_Hall",
              "_symmetry_space_group_name_Hall", "_symmetry.space_group_name_Hall")
_HM_TAGS = ("_space_group_name_H-M_alt", "_space_group.name_H-M_alt",
            "_symmetry_space_group_name_H-M", "_symmetry.space_group_name_H-M")


def _first_value(block, tags) -> str:
    for tag in tags:
        v = block.find_value(tag)
        if v is not None and v not in ("?", "."):
            return gemmi.cif.as_string(v).strip()
    return ""


def _symops_in_block(block) -> list[str]:
    for tag in _SYMOP_TAGS:
        col = block.find_loop(tag)
        if len(col):
            return [gemmi.cif.as_string(v) for v in col]
        v = block.find_value(tag)
        if v is not None:
            return [gemmi.cif.as_string(v)]
    return []


def _symmetry(ss, block) -> tuple[list[str], str, int]:
    """(operators, H-M symbol, number) from the operators, else Hall, else H-M.

    Both CIF1 (``_space_group_symop_operation_xyz``) and DDLm/CIF2 dotted tags
    (``_space_group_symop.operation_xyz``) are understood.
    """
    triplets = list(ss.symops) or _symops_in_block(block)
    hall = ss.spacegroup_hall or _first_value(block, _HALL_TAGS)
    hm = ss.spacegroup_hm or _first_value(block, _HM_TAGS)
    sg = None
    if triplets:
        ops, name, number = _symmetry_from_symops(tuple(triplets), hm)
        return list(ops), name, number
    else:
        if hall:
            try:
                group = gemmi.symops_from_hall(hall)
            except Exception:
                raise StructureError(f"cannot interpret Hall symbol {hall!r}", "bad-symmetry") from None
            sg = gemmi.find_spacegroup_by_ops(group)
        elif hm:
            sg = gemmi.find_spacegroup_by_name(hm)
            if sg is None:
                raise StructureError(f"unknown space-group symbol {hm!r}", "bad-symmetry")
            group = sg.operations()
        else:
            raise StructureError(
                "no symmetry: no symmetry operators, Hall symbol or H-M symbol", "no-symmetry"
            )
        triplets = [op.triplet() for op in group]
    if sg is not None:
        return [op.triplet() for op in group], sg.xhm(), sg.number
    return [op.triplet() for op in group], hm, 0


_CELL_NAMES = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


@lru_cache(maxsize=1024)
def _symmetry_from_symops(triplets: tuple[str, ...], hm: str) -> tuple[tuple[str, ...], str, int]:
    """(operators, H-M symbol, number) of a list of operators (cached: files repeat them)."""
    group = _group_from_symops(list(triplets))
    sg = gemmi.find_spacegroup_by_ops(group)
    ops = tuple(op.triplet() for op in group)
    if sg is not None:
        return ops, sg.xhm(), sg.number
    return ops, hm, 0


def _cell_from_tags(block) -> tuple[float, ...] | None:
    """The six cell parameters from CIF1 (_cell_length_a) or DDLm (_cell.length_a) tags."""
    for sep in ("_", "."):
        vals = []
        for name in _CELL_NAMES:
            v = block.find_value(f"_cell{sep}{name}")
            vals.append(gemmi.cif.as_number(v) if v is not None else math.nan)
        if all(math.isfinite(v) for v in vals):
            return tuple(vals)
    return None


def _cell(ss, block=None) -> tuple[float, ...]:
    c = ss.cell
    params = (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)
    # gemmi keeps its placeholder 1 1 1 90 90 90 when it finds no complete CIF1 cell
    # (one of the six missing or '?', or DDLm tags such as cctbx writes: _cell.length_a)
    if params == (1.0, 1.0, 1.0, 90.0, 90.0, 90.0):
        tagged = _cell_from_tags(block) if block is not None else None
        if tagged is None or tagged == params:
            raise StructureError(
                "no valid unit cell (_cell_length_a/b/c and _cell_angle_alpha/beta/gamma)", "no-cell")
        ss.cell = gemmi.UnitCell(*tagged)
        c = ss.cell
        params = (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)
    if not all(math.isfinite(p) and p > 0 for p in params) or not (c.volume > 0):
        raise StructureError(
            "no valid unit cell (_cell_length_a/b/c and _cell_angle_alpha/beta/gamma)", "no-cell"
        )
    if c.volume < 1.0 or not math.isfinite(c.volume):
        raise StructureError(f"unit cell volume {c.volume:.3g} Å³ is not physical", "no-cell")
    return tuple(float(p) for p in params)


def _element_from_label(label: str) -> str:
    """The element a label names, by gemmi's rule for a missing type symbol ('X' if none)."""
    n = 2 if len(label) > 1 and label[1].isalpha() else 1
    return gemmi.Element(label[:n]).name if label[:1].isalpha() else "X"


def _atoms(ss, default_u: float) -> tuple[AtomicModel, list[str], np.ndarray]:
    """(atoms, notes, disorder group of each atom: ``_atom_site_disorder_group``, 0 if none)."""
    notes: list[str] = []
    rows = []
    skipped_h = 0
    isfinite = math.isfinite
    nan6 = (math.nan,) * 6
    for site in ss.sites:
        fract = site.fract
        x, y, z = fract.x, fract.y, fract.z
        name = site.element.name
        if name == "X" and not site.type_symbol:  # type symbol '?' or '.': use the label
            name = _element_from_label(site.label)
        if name == "X":
            what = (f"type {site.type_symbol!r}, which is not a chemical element" if site.type_symbol
                    else "no type symbol and a label that names no element")
            raise StructureError(f"atom {site.label!r} has {what}", "unknown-element")
        if not (isfinite(x) and isfinite(y) and isfinite(z)):
            if name in ("H", "D"):
                skipped_h += 1
                continue
            raise StructureError(f"atom {site.label!r} has no coordinates", "missing-coordinates")
        occ = site.occ
        if not isfinite(occ):
            occ = 1.0
        elif occ < 0 or occ > 1.0001:
            raise StructureError(f"atom {site.label!r} has occupancy {occ}, outside [0, 1]", "bad-occupancy")
        aniso = site.aniso
        u_iso = site.u_iso
        if aniso.nonzero():
            u6 = (aniso.u11, aniso.u22, aniso.u33, aniso.u12, aniso.u13, aniso.u23)
            defaulted = False  # U_eq below, for all anisotropic atoms at once
        elif isfinite(u_iso) and u_iso < 0:
            raise StructureError(f"atom {site.label!r} has negative U_iso {u_iso:.4g}", "bad-adp")
        elif isfinite(u_iso) and u_iso > 0:
            u6, defaulted = nan6, False
        else:
            u6, u_iso, defaulted = nan6, default_u, True
        rows.append((site.label, name, site.charge, (x, y, z), occ, u_iso, u6, defaulted,
                     site.disorder_group))
    if not rows:
        raise StructureError("no atoms with coordinates", "no-atoms")
    label, element, charge, frac, occupancy, u_iso, u_aniso, u_defaulted, part = zip(*rows)
    u_iso = np.array(u_iso, dtype=np.float64)
    u_aniso = np.array(u_aniso, dtype=np.float64)
    aniso = np.flatnonzero(~np.isnan(u_aniso[:, 0]))
    if len(aniso):
        u_cart = _u_cart_many(ss.cell, u_aniso[aniso])
        u_iso[aniso] = np.trace(u_cart, axis1=1, axis2=2) / 3.0  # U_eq
        # non-positive-definite U: kept as given, noted
        npd = [label[i] for i in aniso[np.linalg.eigvalsh(u_cart)[:, 0] <= 0]]
        if npd:
            notes.append("non-positive-definite U kept as given: " + ", ".join(npd[:10])
                         + (" ..." if len(npd) > 10 else ""))
    if skipped_h:
        notes.append(f"{skipped_h} hydrogen atoms without coordinates skipped")
    model = AtomicModel(
        label=np.array(label, dtype=object).astype(str),
        element=np.array(element).astype(str),
        charge=np.array(charge, dtype=np.int8),
        frac=np.array(frac, dtype=np.float64),
        occupancy=np.array(occupancy, dtype=np.float64),
        u_iso=u_iso,
        u_aniso=u_aniso,
        u_defaulted=np.array(u_defaulted, dtype=bool),
    )
    n_def = int(model.u_defaulted.sum())
    if n_def:
        notes.append(f"{n_def} atoms without displacement parameters got U_iso={default_u}")
    return model, notes, np.array(part, dtype=np.int64)


def _u_cart_many(cell, u6: np.ndarray) -> np.ndarray:
    """U_cart = A N U N Aᵀ (k, 3, 3) of k rows of CIF U_ij (U11 U22 U33 U12 U13 U23)."""
    u = u6[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(-1, 3, 3)
    a = np.array(cell.orth.mat.tolist())
    rec = cell.reciprocal()
    an = a * np.array([rec.a, rec.b, rec.c])[None, :]  # A N
    return an[None] @ u @ an.T[None]


_SG_NUMBER_TAGS = ("_symmetry_Int_Tables_number", "_space_group_IT_number",
                   "_space_group.IT_number", "_symmetry.Int_Tables_number")


def _unquote_sg_numbers(block) -> bool:
    """Rewrite quoted or non-numeric space-group numbers that gemmi refuses; True if changed."""
    changed = False
    for tag in _SG_NUMBER_TAGS:
        v = block.find_value(tag)
        if v is None:
            continue
        text = gemmi.cif.as_string(v).strip()
        if text != v:
            if text.isdigit():
                block.set_pair(tag, text)
            else:
                block.set_pair(tag, "?")
            changed = True
    return changed


def check_cell_atoms(n_listed: int, n_ops: int, max_atoms: int = DEFAULT_MAX_ATOMS,
                     what: str = "the atoms listed") -> None:
    """Refuse a structure whose unit cell would hold more than ``max_atoms`` atoms:
    ``n_listed`` atoms times ``n_ops`` symmetry operators (an upper bound of the cell's
    count: copies on special positions and repeated atoms are not yet merged). Raises
    :class:`StructureError` of kind ``too-many-atoms``; costs nothing, so every reader
    (build, synth, solve) calls it before computing anything."""
    n = int(n_listed) * max(1, int(n_ops))
    if n > max_atoms:
        raise StructureError(
            f"{n_listed} {what} x {n_ops} symmetry operators = {n} atoms in the unit cell, "
            f"more than the limit of {max_atoms} (max_atoms, --max-atoms)", "too-many-atoms")


#: Two atoms of one element closer than this (Å), one on a symmetry image of the other,
#: with occupancies summing to more than OVERFULL, are one atom listed twice. (The slack
#: keeps disorder parts sharing a site with rounded occupancies, e.g. 0.813 + 0.19.)
DUPLICATE_TOLERANCE = 0.05
OVERFULL = 1.05
#: An atom this close (Å) to one of its own symmetry images may be an atom on a special
#: position given slightly off it (cctbx's default site-symmetry tolerance): see
#: :func:`_settle_near_special`.
NEAR_SPECIAL_TOLERANCE = 0.5
#: (images found near the atoms) / (atoms x operators) above which a block is refused:
#: thousands of atoms crowded within DUPLICATE_TOLERANCE of each other are no structure,
#: and listing their pairs would cost time and memory quadratic in their number
MAX_CROWDING = 32


def _drop_symmetry_copies(atoms: AtomicModel, symops, cell, part=None
                          ) -> tuple[AtomicModel, list[str], np.ndarray | None]:
    """Drop atoms that sit on a symmetry image of an earlier atom of the same element
    when the two together would be more than fully occupied.

    'Grown' asymmetric units (Tonto's grown clusters, CSD atoms marked '*', completed
    molecules) list symmetry-generated copies as atoms of their own; expanded with the
    space group, each would count twice or more. Split sites of a disorder (occupancies
    summing to at most 1) are kept. Rows repeating an earlier row exactly are found by
    sorting; the others by a KD-tree: no step is quadratic in the number of atoms.
    ``part`` (disorder groups, one per atom) is filtered alike and returned.
    """
    n = len(atoms)
    copy = np.zeros(n, dtype=bool)
    if n >= 2:
        # exact repeats of an earlier row (same element, position, occupancy) more than
        # half occupied are copies whatever else is near (the greedy rule below gives
        # them the same answer); dropping them first keeps the pair search small
        key = np.column_stack([np.unique(atoms.element, return_inverse=True)[1].ravel(),
                               atoms.frac % 1.0, atoms.occupancy])
        _, first = np.unique(key, axis=0, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first] = False
        copy |= repeat & (2 * atoms.occupancy > OVERFULL)
        rest = np.flatnonzero(~copy)
        pairs = _near_image_pairs(atoms, symops, cell, rest)
        # an atom is a copy if it repeats an earlier atom that is not itself a copy
        earlier: dict[int, list[int]] = {}
        for i, j in pairs:
            earlier.setdefault(i, []).append(j)
        for i in sorted(earlier):
            copy[i] = any(not copy[j] for j in earlier[i])
    if not copy.any():
        return atoms, [], part
    from dataclasses import fields, replace

    kept = replace(atoms, **{f.name: getattr(atoms, f.name)[~copy] for f in fields(atoms)})
    labels = list(atoms.label[copy])
    return kept, [f"{len(labels)} atoms repeating a symmetry-equivalent atom dropped "
                  "(grown asymmetric unit): " + ", ".join(labels[:10])
                  + (" ..." if len(labels) > 10 else "")], (None if part is None else part[~copy])


def _images(atoms: AtomicModel, symops, cell):
    """(images (n m, 3) in [0, 1), m, orth, frac matrix): atom = image index // m."""
    from phasenet.symmetry import symmetry

    ops = symmetry(symops)
    uc = gemmi.UnitCell(*cell)
    orth = np.array(uc.orth.mat.tolist())
    frac_m = np.array(uc.frac.mat.tolist())
    pts = (np.einsum("mij,nj->nmi", ops.rotations.astype(float), atoms.frac)
           + ops.translations[None]).reshape(-1, 3)
    return _unit(pts), len(ops.rotations), orth, frac_m


def _unit(x: np.ndarray) -> np.ndarray:
    """x mod 1 in [0, 1) (x % 1.0 can round to 1.0, which cKDTree's box refuses)."""
    x = x % 1.0
    x[x >= 1.0] = 0.0
    return x


def _near_image_pairs(atoms: AtomicModel, symops, cell, among=None) -> list[tuple[int, int]]:
    """(i, j), j < i, both in ``among`` (default all): atom i lies within
    DUPLICATE_TOLERANCE of an image of atom j of the same element, and their
    occupancies sum to more than OVERFULL.

    A periodic KD-tree on the images in fractional coordinates, queried with a ball
    that holds every Cartesian DUPLICATE_TOLERANCE-neighbourhood; candidates are then
    checked by their Cartesian distance. A block whose atoms crowd so that the
    candidates exceed MAX_CROWDING per image is refused (``overlapping-atoms``).
    """
    from scipy.spatial import cKDTree

    idx = np.arange(len(atoms)) if among is None else np.asarray(among)
    if len(idx) < 2:
        return []
    sub = atoms if among is None else _take(atoms, idx)
    pts, m, orth, frac_m = _images(sub, symops, cell)
    frac = _unit(sub.frac.copy())
    radius = DUPLICATE_TOLERANCE * float(np.linalg.norm(frac_m, 2)) * (1 + 1e-9)
    if not radius < 0.5:  # a cell so small that the ball wraps: nothing is a copy here
        return []
    tree = cKDTree(pts, boxsize=1.0)
    counts = tree.query_ball_point(frac, radius, return_length=True)
    if counts.sum() > MAX_CROWDING * len(pts) + 1000:
        raise StructureError(
            f"{len(sub)} atoms crowd within {DUPLICATE_TOLERANCE} Å of each other's symmetry "
            "images (not a structure: repeated or garbage coordinates?)", "overlapping-atoms")
    hits = tree.query_ball_point(frac, radius)
    qi = np.repeat(np.arange(len(sub)), counts)
    p = np.fromiter((k for row in hits for k in row), dtype=np.int64, count=int(counts.sum()))
    j = p // m
    ok = (j < qi) & (sub.element[j] == sub.element[qi]) & (
        sub.occupancy[j] + sub.occupancy[qi] > OVERFULL)
    qi, j, p = qi[ok], j[ok], p[ok]
    if not len(qi):
        return []
    d = pts[p] - frac[qi]
    d -= np.round(d)
    near = np.linalg.norm(d @ orth.T, axis=1) < DUPLICATE_TOLERANCE
    return sorted(set(zip(idx[qi[near]].tolist(), idx[j[near]].tolist())))


def _take(atoms: AtomicModel, idx) -> AtomicModel:
    from dataclasses import fields, replace

    return replace(atoms, **{f.name: getattr(atoms, f.name)[idx] for f in fields(atoms)})


def _settle_near_special(atoms: AtomicModel, part: np.ndarray, symops, cell
                         ) -> tuple[AtomicModel, list[str]]:
    """Put atoms given slightly off a special position onto it; keep deliberate disorder.

    The rule, for an atom within NEAR_SPECIAL_TOLERANCE (0.5 Å, cctbx's default) but not
    within the structure factors' SPECIAL_POSITION_TOLERANCE (0.05 Å) of one of its own
    symmetry images (closer ones are always on the special position):

    - disorder group negative (SHELX ``PART -n``: copies generated by symmetry are
      meant to overlap, each partly occupied): kept as given;
    - otherwise, if its occupancy times the number of its images that near (itself
      included) exceeds OVERFULL (1.05) -- e.g. a fully occupied atom 0.2 Å from a
      two-fold axis, two atoms where there is one -- it is moved onto the special
      position (the mean of those images), where the structure-factor code counts it
      once and averages its displacement tensor over the site symmetry;
    - otherwise (e.g. occupancy 0.5 and two images 0.3 Å apart: a site disordered over
      two positions, together at most fully occupied) it is kept as given.

    An atom whose near images do not close onto one point (they are not the site
    symmetry of any special position) is kept as given.
    """
    from phasenet.physics.structure_factors import SPECIAL_POSITION_TOLERANCE
    from phasenet.symmetry import symmetry

    n = len(atoms)
    ops = symmetry(symops)
    m = len(ops.rotations)
    if m == 1 or n == 0:
        return atoms, []
    uc = gemmi.UnitCell(*cell)
    orth = np.array(uc.orth.mat.tolist())
    rot = ops.rotations.astype(float)
    moved, kept_partial = [], []
    frac = atoms.frac.copy()
    # (n, m, 3) in blocks of atoms: memory linear in the number of atoms
    for lo in range(0, n, 4096):
        x = frac[lo:lo + 4096]
        d = np.einsum("mij,nj->nmi", rot, x) + ops.translations[None] - x[:, None, :]
        d -= np.round(d)
        dist = np.linalg.norm(d @ orth.T, axis=-1)  # (b, m)
        near = dist < NEAR_SPECIAL_TOLERANCE
        close = dist < SPECIAL_POSITION_TOLERANCE
        count = near.sum(axis=1)
        cand = np.flatnonzero((count > 1) & (count > close.sum(axis=1)))
        for c in cand:
            i = lo + c
            if part[i] < 0 or atoms.occupancy[i] * count[c] <= OVERFULL:
                kept_partial.append(atoms.label[i])
                continue
            xbar = x[c] + d[c][near[c]].mean(axis=0)
            # the images of xbar under the near operators must coincide with it
            e = np.einsum("mij,j->mi", rot[near[c]], xbar) + ops.translations[near[c]] - xbar
            e -= np.round(e)
            if np.linalg.norm(e @ orth.T, axis=-1).max() < 1e-3:
                frac[i] = xbar
                moved.append(atoms.label[i])
    notes = []
    if moved:
        from dataclasses import replace

        atoms = replace(atoms, frac=frac)
        notes.append(f"{len(moved)} atoms within {NEAR_SPECIAL_TOLERANCE} Å of their own "
                     "symmetry image moved onto the special position: " + ", ".join(moved[:10])
                     + (" ..." if len(moved) > 10 else ""))
    if kept_partial:
        notes.append(f"{len(kept_partial)} partly occupied or PART -n atoms within "
                     f"{NEAR_SPECIAL_TOLERANCE} Å of their own symmetry image kept as given "
                     "(disorder): " + ", ".join(kept_partial[:10])
                     + (" ..." if len(kept_partial) > 10 else ""))
    return atoms, notes


def structure_from_block(block, source: str, default_u: float = DEFAULT_U_ISO,
                         read_observations: bool = True, hkl_text: str | bytes | None = None,
                         max_atoms: int = DEFAULT_MAX_ATOMS) -> Structure:
    """Turn one gemmi CIF block into a Structure (raises StructureError).

    ``hkl_text``: the block's embedded SHELX reflection file, when the caller cut it out
    of the file before parsing (:func:`read_cif` does). ``max_atoms``: see
    :func:`check_cell_atoms` (checked before the atoms are read)."""
    try:
        ss = gemmi.make_small_structure_from_block(block)
    except Exception as exc:
        if "not an integer" not in str(exc) or not _unquote_sg_numbers(block):
            raise StructureError(f"unreadable atom or cell data ({exc})", "unreadable-cif") from None
        try:  # e.g. _symmetry_Int_Tables_number '19' (quoted) in Tonto files
            ss = gemmi.make_small_structure_from_block(block)
        except Exception as exc2:
            raise StructureError(f"unreadable atom or cell data ({exc2})", "unreadable-cif") from None
    cell = _cell(ss, block)
    symops, hm, number = _symmetry(ss, block)
    check_cell_atoms(len(ss.sites), len(symops), max_atoms, "atoms listed")
    atoms, notes, part = _atoms(ss, default_u)
    with np.errstate(over="ignore", invalid="ignore"):  # garbage coordinates: no warnings
        atoms, dropped, part = _drop_symmetry_copies(atoms, symops, cell, part)
        atoms, settled = _settle_near_special(atoms, part, symops, cell)
    notes += dropped + settled
    obs = None
    if read_observations:
        try:
            obs = hkl_reader.observations_from_block(block, source, hkl_text)
        except hkl_reader.ReflectionError as exc:
            notes.append(f"measured reflections ignored: {exc}")
    return Structure(
        source=source,
        block=block.name,
        cell=cell,
        symops=tuple(symops),
        space_group=hm,
        sg_number=number,
        atoms=atoms,
        observations=obs,
        notes=tuple(notes),
    )


def read_cif(path: str | Path, default_u: float = DEFAULT_U_ISO,
             read_observations: bool = True, max_atoms: int = DEFAULT_MAX_ATOMS
             ) -> list[Structure | ReadFailure]:
    """Every data block with atoms in ``path``, as Structure or ReadFailure.

    ``max_atoms`` bounds the unit cell of each block (:func:`check_cell_atoms`).
    A paired reflection file with the same stem (``.hkl``, else ``.fcf``) supplies
    measured data to a structure whose block carries none.
    """
    source = str(path)
    try:
        doc, hkl_texts = _read_document(source)
    except Exception as exc:
        return [ReadFailure(source, "", f"not a readable CIF file ({_short(exc)})", "unreadable-cif")]
    results: list[Structure | ReadFailure] = []
    for index, block in enumerate(doc):
        try:
            if not _block_has_atoms(block):
                continue
            block.name  # noqa: B018  (a name that is not UTF-8 raises here)
        except UnicodeDecodeError as exc:
            results.append(ReadFailure(source, "?", "a block name or tag that is not UTF-8 text "
                                       f"({exc.reason})", "unreadable-cif"))
            continue
        try:
            results.append(structure_from_block(block, source, default_u, read_observations,
                                                hkl_text=hkl_texts.get(index),
                                                max_atoms=max_atoms))
        except StructureError as exc:
            results.append(ReadFailure(source, block.name, str(exc), exc.kind))
        except UnicodeDecodeError as exc:  # gemmi hands values over as str
            results.append(ReadFailure(source, block.name, "a value that is not UTF-8 text "
                                       f"({exc.reason}: {exc.object[:40]!r})", "unreadable-cif"))
        except Exception as exc:  # a reader bug must not stop a batch either
            results.append(ReadFailure(source, block.name, f"unexpected error: {_short(exc)}", "internal-error"))
    if not results:
        results.append(ReadFailure(source, "", "no data block with atom sites (_atom_site_fract_x)", "no-atoms"))
        return results
    if read_observations:
        results = _attach_paired(results, doc, Path(source))
    return results


#: an embedded SHELX reflection file: the tag on its own line, a text field after it
_HKL_FIELD = re.compile(rb"[ \t]*_shelx_hkl_file[ \t]*\r?\n;")


def _read_document(source: str):
    """(gemmi Document, {block index: text of its _shelx_hkl_file}).

    Embedded reflection files are most of the bytes of the CIFs that carry them, and
    gemmi's parser is slow on long text fields (3x on the real corpus); they are cut
    out of the file before gemmi parses it (their text fields left empty) and handed
    to the structures' readers directly. Anything unexpected: gemmi reads the file as
    it is (and reports its errors).
    """
    if source.lower().endswith(".gz"):
        return gemmi.cif.read(source), {}
    with open(source, "rb") as fh:
        raw = fh.read()
    if b"_shelx_hkl_file" not in raw:  # (the usual spelling; others: gemmi reads all)
        try:
            return gemmi.cif.read_string(raw), {}
        except Exception:
            return gemmi.cif.read(source), {}  # its message names the file
    fields = []  # (content start, content end) of each embedded reflection file
    at = raw.find(b"_shelx_hkl_file")
    while at >= 0:
        line_start = raw.rfind(b"\n", 0, at) + 1
        m = _HKL_FIELD.match(raw, line_start)  # the tag alone on its line, then ';'
        if m is not None:
            end = raw.find(b"\n;", m.end())  # a text field ends at a line starting with ';'
            if end < 0 or (fields and m.start() < fields[-1][1]):
                return gemmi.cif.read(source), {}
            fields.append((m.end(), end))
            at = end
        at = raw.find(b"_shelx_hkl_file", at + 1)
    if not fields:
        return gemmi.cif.read(source), {}
    pieces, texts, at = [], [], 0
    for start, end in fields:
        pieces.append(raw[at:start])
        texts.append(raw[start:end])
        at = end
    pieces.append(raw[at:])
    try:
        doc = gemmi.cif.read_string(b"".join(pieces))
    except Exception:
        return gemmi.cif.read(source), {}
    holders = [i for i, block in enumerate(doc) if block.find_value("_shelx_hkl_file") is not None]
    if len(holders) != len(texts) or any(
            gemmi.cif.as_string(doc[i].find_value("_shelx_hkl_file")) != "" for i in holders):
        return gemmi.cif.read(source), {}
    return doc, dict(zip(holders, texts))


def _attach_paired(results, doc, source: Path):
    """A paired stem.hkl/stem.fcf supplies the structure blocks without data of their own,
    provided those blocks share one cell (within 0.2 %): otherwise which block the
    data belong to is ambiguous, and each block gets a note instead."""
    need = [i for i, r in enumerate(results) if isinstance(r, Structure) and r.observations is None]
    if not need:
        return results
    first = results[need[0]]
    paired = hkl_reader.paired_observations(source, hkl_reader.hklf_code(doc.find_block(first.block)))
    if paired is None:
        return results
    cells = np.array([results[i].cell for i in need])
    same_cell = np.all(np.abs(cells - cells[0]) <= 2e-3 * np.abs(cells[0]))
    if not same_cell:
        paired = "blocks with different cells share it; cannot tell whose data they are"
    results = list(results)
    for i in need:
        results[i] = _with_obs(results[i], paired)
    return results


def _with_obs(s: Structure, obs) -> Structure:
    from dataclasses import replace

    if isinstance(obs, str):  # an error message from the paired-file reader
        return replace(s, notes=s.notes + (f"paired reflection file ignored: {obs}",))
    return replace(s, observations=obs)


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
