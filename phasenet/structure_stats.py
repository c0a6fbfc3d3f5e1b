"""Geometry and intensity statistics of one crystal structure (realism checks).

Used to measure synthetic structures (:mod:`phasenet.synth.generate`) against real ones
(``benchmarks/synth_realism.py``). Everything is computed *in the crystal*: the
asymmetric unit is expanded to the unit cell (:func:`expand_to_unit_cell`, so atoms
on special positions count once), and distances are taken between the atoms of the
cell and those of the 3×3×3 block of cells around it (a ``cKDTree`` on Cartesian
coordinates), so symmetry- and lattice-generated neighbours are included.

- **Bonds**: pairs closer than the sum of covalent radii (gemmi's table) + 0.4 Å
  (``bond_tolerance``) and at least ``min_bond`` (0.5 Å; closer pairs are
  *overlaps*, e.g. alternative sites of disorder: they join molecules but are not
  bond lengths). Bond lengths are reported once per symmetry-independent bond
  (pairs of asymmetric-unit atoms with the same length to 10⁻⁴ Å are one bond).
- **Molecules**: connected components of the bond graph of the crystal. Each
  cell atom gets the lattice translation that puts it in one connected copy of its
  molecule; a component whose bonds close a loop through a lattice translation is
  a periodic network (a polymer, a salt framework): ``extended`` is then True and
  intermolecular contacts are undefined (NaN).
- **Shortest intermolecular contact**: the shortest distance between atoms of
  *different* molecules (symmetry copies and lattice translates of a molecule are
  different molecules). ``shortest_contact`` is between non-hydrogen atoms only,
  because many real structures lack hydrogens (and X-ray H positions are short);
  ``shortest_contact_h`` includes hydrogens (NaN for structures without H).
  Contacts are searched up to the cell's smallest width, so a lone small molecule in
  a big cell gets the exact distance to its nearest translate.
- **Volume per non-H atom**: V_cell / Σ occupancy of the non-H atoms of the cell.
- **Wilson statistic** ⟨|E²−1|⟩ of the calculated intensities on a reflection grid
  (default the dataset grid, :func:`canonical_hkl`): |E|² from the ``wilson``
  normalisation (I / (ε Σf² e^{−2B s²}) with k and B fitted, :mod:`phasenet.physics.normalisation`),
  then rescaled to ⟨|E|²⟩ = 1 in each of ``n_shells`` resolution shells of equal
  count; systematic absences are left out. Theory (many equal atoms at random):
  0.968 for centric reflections, 0.736 for acentric ones. The headline value
  ``mean_abs_e2m1`` is over all reflections for centrosymmetric groups and over the
  *acentric* reflections for non-centrosymmetric ones (their centric zones, e.g.
  h0l of P2₁2₁2₁, would pull the mean towards 0.968); ``mean_abs_e2m1_all`` is over
  every present reflection.

Bonds are searched within 2 max(r_cov) + 0.4 Å; the 3×3×3 block holds every
neighbour up to the cell's smallest width, so this assumes cells wider than that
(~1.9 Å for C/N/O/H, ~3.2 Å with iodine): true of any molecular crystal.

Usage::

    import phasenet
    from phasenet.structure_stats import crystal_geometry, wilson_statistic
    g = crystal_geometry(structure)   # g.bond_length, g.shortest_contact, g.volume_per_non_h
    w = wilson_statistic(structure)   # w.mean_abs_e2m1, w.centrosymmetric
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

import gemmi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.spatial import cKDTree

from phasenet.reflections import canonical_hkl, reciprocal_metric, reciprocal_s2
from phasenet.structure import Structure
from phasenet.physics.structure_factors import expand_to_unit_cell
from phasenet.symmetry import symmetry

#: Added to the sum of covalent radii to call a pair bonded (Å).
BOND_TOLERANCE = 0.4
#: Pairs closer than this (Å) are overlapping sites, not bonds.
MIN_BOND = 0.5
#: First search radius for intermolecular contacts (Å); widened when nothing is found.
CONTACT_RADIUS = 6.0
#: Theoretical ⟨|E²−1|⟩ for centric and acentric reflections (random atoms).
E2M1_CENTRIC = 0.968
E2M1_ACENTRIC = 0.736
HYDROGENS = ("H", "D")

_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.int64)  # (27, 3)
_ZERO_SHIFT = 13  # index of (0, 0, 0) in _SHIFTS


@lru_cache(maxsize=256)
def covalent_radius(element: str) -> float:
    return float(gemmi.Element(element).covalent_r)


@dataclass(frozen=True)
class CellAtoms:
    """The atoms of one unit cell (after symmetry expansion) in Cartesian space."""

    cart: np.ndarray  # (N, 3) Å, fractional coordinates in [0, 1)
    element: np.ndarray  # (N,) str
    occupancy: np.ndarray  # (N,)
    asu_index: np.ndarray  # (N,) asymmetric-unit atom
    orth: np.ndarray  # (3, 3) fractional -> Cartesian
    volume: float  # Å³
    min_width: float  # smallest distance between opposite cell faces (Å)

    @property
    def heavy(self) -> np.ndarray:
        return ~np.isin(self.element, HYDROGENS)


def cell_atoms(structure: Structure) -> CellAtoms:
    contents = expand_to_unit_cell(structure)
    cell = gemmi.UnitCell(*structure.cell)
    orth = np.array(cell.orth.mat.tolist())
    frac = np.asarray(contents.frac, dtype=float) % 1.0
    gstar = reciprocal_metric(cell)
    widths = 1.0 / np.sqrt(np.diag(gstar))  # d(100), d(010), d(001)
    element = np.array([gemmi.Element(str(e)).name for e in structure.atoms.element])
    return CellAtoms(cart=frac @ orth.T, element=element[contents.asu_index],
                     occupancy=np.asarray(contents.weight, dtype=float),
                     asu_index=np.asarray(contents.asu_index), orth=orth,
                     volume=float(cell.volume), min_width=float(widths.min()))


def _pairs(ca: CellAtoms, radius: float):
    """(i, j, s, d): cell atom i and atom j translated by _SHIFTS[s], closer than radius."""
    n = len(ca.cart)
    block = (ca.cart[None, :, :] + (_SHIFTS @ ca.orth.T)[:, None, :]).reshape(-1, 3)
    sdm = cKDTree(ca.cart).sparse_distance_matrix(cKDTree(block), radius, output_type="ndarray")
    i, jb, d = sdm["i"].astype(np.int64), sdm["j"].astype(np.int64), sdm["v"]
    s, j = np.divmod(jb, n)
    keep = ~((i == j) & (s == _ZERO_SHIFT))
    return i[keep], j[keep], s[keep], d[keep]


@dataclass(frozen=True)
class Molecules:
    component: np.ndarray  # (N,) molecule (component) of each cell atom
    offset: np.ndarray  # (N, 3) int: translation putting the atom in its molecule's copy
    periodic: np.ndarray  # (n_components,) bool: the component is an infinite network

    @property
    def extended(self) -> bool:
        return bool(self.periodic.any())

    def same_molecule(self, i, j, s) -> np.ndarray:
        """True where cell atom i and atom j + _SHIFTS[s] belong to one molecule (for a
        periodic component: where they are in the same component)."""
        ci = self.component[i]
        same_copy = np.all(_SHIFTS[s] == self.offset[j] - self.offset[i], axis=1)
        return (ci == self.component[j]) & (same_copy | self.periodic[ci])


def find_molecules(n_atoms: int, i, j, s) -> Molecules:
    """Connected components of the bonds (i, j + _SHIFTS[s]) of a cell of n_atoms atoms."""
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n_atoms, n_atoms)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    shift_of = {}
    for a, b, t in zip(i.tolist(), j.tolist(), s.tolist()):
        shift_of.setdefault((a, b), t)
    offset = np.zeros((n_atoms, 3), dtype=np.int64)
    for c in range(n_comp):
        start = int(np.flatnonzero(comp == c)[0])
        order, pred = breadth_first_order(graph, start, directed=False, return_predecessors=True)
        for v in order[1:].tolist():
            u = int(pred[v])
            if (u, v) in shift_of:  # off_v = off_u + t for an edge (u, v, t)
                offset[v] = offset[u] + _SHIFTS[shift_of[(u, v)]]
            else:
                offset[v] = offset[u] - _SHIFTS[shift_of[(v, u)]]
    mismatch = np.any(offset[i] + _SHIFTS[s] != offset[j], axis=1)
    periodic = np.zeros(n_comp, dtype=bool)
    periodic[comp[i[mismatch]]] = True
    return Molecules(comp, offset, periodic)


@dataclass(frozen=True)
class CrystalGeometry:
    """Geometry statistics of one crystal structure (see the module docstring)."""

    bond_length: np.ndarray  # (B,) Å, one per symmetry-independent bond
    bond_elements: np.ndarray  # (B, 2) str, alphabetical within a pair
    shortest_contact: float  # non-H···non-H between different molecules (Å), NaN if undefined
    contact_elements: tuple[str, str]  # elements of that contact ("", "") if none
    shortest_contact_h: float  # any atoms, H included (Å); NaN without hydrogens
    n_molecules_cell: int  # connected components in the unit cell
    extended: bool  # some component is an infinite network (contacts undefined)
    n_overlaps: int  # pairs closer than min_bond (disorder, bad models)
    volume_per_non_h: float  # Å³ per non-H atom (occupancy-weighted)
    n_non_h_cell: float  # Σ occupancy of non-H atoms in the cell
    has_h: bool
    disordered: bool  # some atom has occupancy < 1

    def bonds(self, a: str, b: str) -> np.ndarray:
        """Lengths of the a-b bonds, e.g. ``bonds("C", "C")``."""
        a, b = sorted((a, b))
        m = (self.bond_elements[:, 0] == a) & (self.bond_elements[:, 1] == b)
        return self.bond_length[m]

    def non_h_bonds(self) -> np.ndarray:
        m = ~np.isin(self.bond_elements, HYDROGENS).any(axis=1)
        return self.bond_length[m]


def crystal_geometry(structure: Structure, *, bond_tolerance: float = BOND_TOLERANCE,
                     min_bond: float = MIN_BOND,
                     contact_radius: float = CONTACT_RADIUS) -> CrystalGeometry:
    """Bonds, molecules, shortest intermolecular contacts and volume per non-H atom."""
    ca = cell_atoms(structure)
    n = len(ca.cart)
    heavy = ca.heavy
    radii = np.array([covalent_radius(e) for e in ca.element])
    r_bond = 2.0 * radii.max() + bond_tolerance
    search = max(r_bond, min(contact_radius, ca.min_width))
    i, j, s, d = _pairs(ca, search)

    linked = d < radii[i] + radii[j] + bond_tolerance  # bonds and overlaps join molecules
    bond = linked & (d >= min_bond)
    mol = find_molecules(n, i[linked], j[linked], s[linked])

    # one length per symmetry-independent bond
    ai, aj = ca.asu_index[i[bond]], ca.asu_index[j[bond]]
    key = np.stack([np.minimum(ai, aj), np.maximum(ai, aj),
                    np.round(d[bond] * 1e4).astype(np.int64)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    bi, bj, bd = i[bond][first], j[bond][first], d[bond][first]
    pair = np.sort(np.stack([ca.element[bi], ca.element[bj]], axis=1), axis=1)

    contact, contact_el, contact_h = np.nan, ("", ""), np.nan
    if not mol.extended and n > 1:
        def shortest(i, j, s, d):
            """[(d, (el_i, el_j)) or None] for non-H pairs and for all pairs."""
            inter = ~mol.same_molecule(i, j, s)
            out = []
            for m in (inter & heavy[i] & heavy[j], inter):
                k = np.flatnonzero(m)
                if len(k):
                    best = k[np.argmin(d[k])]
                    out.append((float(d[best]), (str(ca.element[i[best]]), str(ca.element[j[best]]))))
                else:
                    out.append(None)
            return out

        res = shortest(i, j, s, d)
        # nothing within the first radius (a small molecule alone in a wide cell): search
        # up to the cell's smallest width (complete there), then the whole 3×3×3 block
        for radius in (ca.min_width, 3.0 * float(np.linalg.norm(ca.orth, axis=0).sum())):
            if res[1] is not None and (res[0] is not None or not heavy.any()):
                break
            if radius > search:
                res2 = shortest(*_pairs(ca, radius))
                res = [r if r is not None else r2 for r, r2 in zip(res, res2)]
        if res[0] is not None:
            contact, contact_el = res[0][0], tuple(sorted(res[0][1]))
        if res[1] is not None and (~heavy).any():
            contact_h = res[1][0]

    n_heavy = float(ca.occupancy[heavy].sum())
    return CrystalGeometry(
        bond_length=bd, bond_elements=pair, shortest_contact=contact,
        contact_elements=contact_el, shortest_contact_h=contact_h,
        n_molecules_cell=int(len(mol.periodic)), extended=mol.extended,
        n_overlaps=int(np.count_nonzero(linked & ~bond) // 2),
        volume_per_non_h=ca.volume / n_heavy if n_heavy > 0 else np.nan,
        n_non_h_cell=n_heavy, has_h=bool((~heavy).any()),
        disordered=bool((structure.atoms.occupancy < 1.0 - 1e-3).any()))


def volume_per_non_h_atom(structure: Structure) -> float:
    """V_cell / Σ occupancy of the non-H atoms of the unit cell (Å³)."""
    ca = cell_atoms(structure)
    n_heavy = float(ca.occupancy[ca.heavy].sum())
    return ca.volume / n_heavy if n_heavy > 0 else float("nan")


@dataclass(frozen=True)
class WilsonStatistic:
    mean_abs_e2m1: float  # ⟨|E²−1|⟩: all reflections (centrosymmetric), acentric ones otherwise
    mean_abs_e2m1_all: float  # over every present reflection
    mean_abs_e2m1_acentric: float  # NaN if there are none
    mean_abs_e2m1_centric: float  # NaN if there are none
    centrosymmetric: bool
    n_reflections: int  # present reflections used
    wilson_b: float  # Å², from the Wilson fit

    @property
    def expected(self) -> float:
        return E2M1_CENTRIC if self.centrosymmetric else E2M1_ACENTRIC


def normalised_e2(structure: Structure, hkl: np.ndarray | None = None, n_shells: int = 10):
    """(|E|², present, centric, wilson_b) of the calculated intensities on ``hkl``.

    |E|² comes from the ``wilson`` normalisation of :func:`phasenet.pipeline.records.compute_record`
    (measurements ignored), then is rescaled to mean 1 in ``n_shells`` shells of sin²θ/λ²
    of equal count (``n_shells=1``: only the Wilson fit and one overall scale).
    """
    from phasenet.pipeline.records import compute_record

    hkl = canonical_hkl() if hkl is None else np.asarray(hkl)
    if structure.observations is not None:
        structure = dataclasses.replace(structure, observations=None)
    rec = compute_record(structure, hkl, "wilson")
    sym = symmetry(structure.symops)
    present = ~sym.systematic_absences(hkl)
    centric = sym.is_centric(hkl)
    e2 = rec.intensity.astype(np.float64)
    stol2 = reciprocal_s2(hkl, structure.cell) / 4.0
    idx = np.flatnonzero(present)
    for shell in np.array_split(idx[np.argsort(stol2[idx], kind="stable")], max(1, n_shells)):
        mean = e2[shell].mean() if len(shell) else 0.0
        if mean > 0:
            e2[shell] /= mean
    return e2, present, centric, float(rec.norm.wilson_b)


def wilson_statistic(structure: Structure, hkl: np.ndarray | None = None,
                     n_shells: int = 10) -> WilsonStatistic:
    """⟨|E²−1|⟩ of the calculated intensities (see the module docstring)."""
    e2, present, centric, b = normalised_e2(structure, hkl, n_shells)
    dev = np.abs(e2 - 1.0)

    def mean(mask):
        return float(dev[mask].mean()) if mask.any() else float("nan")

    centro = symmetry(structure.symops).is_centrosymmetric
    acen = mean(present & ~centric)
    return WilsonStatistic(
        mean_abs_e2m1=mean(present) if centro else acen,
        mean_abs_e2m1_all=mean(present), mean_abs_e2m1_acentric=acen,
        mean_abs_e2m1_centric=mean(present & centric), centrosymmetric=bool(centro),
        n_reflections=int(present.sum()), wilson_b=b)


def structure_stats(structure: Structure, hkl: np.ndarray | None = None,
                    wilson: bool = True) -> dict:
    """One flat row of statistics (numbers and strings) for tables; bond lengths are
    summarised (count, median of non-H bonds, C-C median)."""
    g = crystal_geometry(structure)
    nh = g.non_h_bonds()
    cc = g.bonds("C", "C")
    row = dict(id=structure.id, space_group=structure.space_group, sg_number=structure.sg_number,
               n_atoms_asu=len(structure.atoms), n_non_h_cell=g.n_non_h_cell,
               volume_per_non_h=g.volume_per_non_h, n_bonds=len(g.bond_length),
               median_non_h_bond=float(np.median(nh)) if len(nh) else np.nan,
               median_cc_bond=float(np.median(cc)) if len(cc) else np.nan,
               shortest_contact=g.shortest_contact,
               contact_elements="···".join(e for e in g.contact_elements if e),
               shortest_contact_h=g.shortest_contact_h, n_molecules_cell=g.n_molecules_cell,
               extended=g.extended, n_overlaps=g.n_overlaps, has_h=g.has_h,
               disordered=g.disordered)
    if wilson:
        w = wilson_statistic(structure, hkl)
        row.update(centrosymmetric=w.centrosymmetric, mean_abs_e2m1=w.mean_abs_e2m1,
                   mean_abs_e2m1_all=w.mean_abs_e2m1_all, wilson_b=w.wilson_b)
    return row
