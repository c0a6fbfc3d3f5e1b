"""Space groups for synthetic crystals, random cells, and growing molecules inside them.

A space group enters through :data:`SPACE_GROUPS`: its gemmi name and its crystal
system, which fixes the cell-shape constraints (triclinic, monoclinic b-unique,
orthorhombic); any group whose standard setting has those cells works with the
same code, so adding a row adds a group.

Packing is not a separate step: the molecule grows *inside* the periodic cell
(:func:`grow_in_cell`). The cell is chosen first (its volume from the wanted
number of atoms and volume per atom, a random shape within the edge limits); a
first fragment goes to a random place, and every further fragment (tried at
several torsions at once) must clear the molecule itself and every symmetry and
lattice image of everything already placed, including its own images (special
positions), with van der Waals limits between molecules (Bondi radii - 0.2 Å,
- 0.3 Å for pairs with H) and topological ones within a molecule. Growth stops
when the molecule has its atoms or is jammed (no hydrogen left that can be
replaced); holes it cannot reach can then take small extra molecules (Z' > 1).
:class:`phasenet.synth.environment.CellEnv` keeps the images as a flat point cloud
covering the cell plus the reach of a contact; the checks run in compiled kernels
(:mod:`phasenet.synth.kernels`). :func:`compress_packing` squeezes a grown crystal
(rigid molecules and the cell relaxed together under pressure,
:mod:`phasenet.synth.relax`), and
``grow_in_cell(..., compress=..., rounds=...)`` alternates growth and squeezing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import gemmi

from phasenet.synth.environment import CellEnv, PackingOptions, group_ops
from phasenet.synth.molecules import MoleculeBuilder, vdw_radius


@dataclass(frozen=True)
class SpaceGroupSpec:
    """A space group the generator can use. ``system`` picks the cell constraints:
    triclinic (all angles free), monoclinic (b unique, beta free), orthorhombic."""

    name: str  # short name, e.g. "P21/c"
    hm: str  # gemmi / extended H-M name of the standard setting
    system: str

    @property
    def gemmi(self):
        return gemmi.find_spacegroup_by_name(self.hm)


#: The table of supported groups (add a row to support another one).
SPACE_GROUPS: dict[str, SpaceGroupSpec] = {s.name: s for s in [
    SpaceGroupSpec("P-1", "P -1", "triclinic"),
    SpaceGroupSpec("P21/c", "P 1 21/c 1", "monoclinic"),
    SpaceGroupSpec("P212121", "P 21 21 21", "orthorhombic"),
    SpaceGroupSpec("P21", "P 1 21 1", "monoclinic"),
    SpaceGroupSpec("C2/c", "C 1 2/c 1", "monoclinic"),
    SpaceGroupSpec("Pbca", "P b c a", "orthorhombic"),
]}
DEFAULT_SPACE_GROUPS = ("P-1", "P21/c")


def space_group_spec(name: str) -> SpaceGroupSpec:
    """Look a group up by short name ("P21/c", "P2_1/c"), H-M ("P 1 21/c 1") or number."""
    key = name.replace(" ", "").replace("_", "")
    for s in SPACE_GROUPS.values():
        if key in (s.name, s.hm.replace(" ", "")):
            return s
    sg = gemmi.find_spacegroup_by_name(name.strip())
    if sg is not None:
        for s in SPACE_GROUPS.values():
            if s.gemmi.hall == sg.hall:
                return s
    raise ValueError(f"space group {name!r} is not supported by the generator; choose one of "
                     f"{', '.join(SPACE_GROUPS)} (or add it to phasenet.synth.packing.SPACE_GROUPS)")


def contact_limits(element, options: PackingOptions) -> np.ndarray:
    r = np.array([vdw_radius(str(e)) for e in element])
    h = np.asarray(element) == "H"
    tol = np.where(h[:, None] | h[None, :], options.h_contact_tolerance, options.contact_tolerance)
    return r[:, None] + r[None, :] - tol


def random_cell_angles(system: str, rng) -> tuple[float, float, float]:
    if system == "orthorhombic":
        return 90.0, 90.0, 90.0
    if system == "monoclinic":
        return 90.0, float(rng.uniform(90.0, 120.0)), 90.0
    while True:  # triclinic: a valid cell not too flat
        al, be, ga = rng.uniform(70.0, 115.0, 3)
        c = np.cos(np.radians([al, be, ga]))
        v2 = 1 - (c**2).sum() + 2 * c.prod()
        if v2 > 0.55:
            return float(al), float(be), float(ga)


def _volume_factor(angles) -> float:
    c = np.cos(np.radians(angles))
    return float(np.sqrt(1 - (c**2).sum() + 2 * c.prod()))


def max_cell_volume(system: str, max_edge: float) -> float:
    """A volume every random cell of ``system`` with edges <= max_edge can reach
    (edges equal, the flattest angles :func:`random_cell_angles` draws)."""
    f = {"orthorhombic": 1.0, "monoclinic": np.sin(np.radians(120.0))}.get(system, np.sqrt(0.55))
    return float(f * max_edge**3)


def random_cell(system: str, volume: float, rng, max_edge: float, min_edge: float = 4.5,
                sigma: float = 0.3):
    """A random cell (a, b, c, alpha, beta, gamma) of the given volume with edges in
    [min_edge, max_edge], or None if the volume does not fit."""
    angles = random_cell_angles(system, rng)
    f = _volume_factor(angles)
    mean = (volume / f) ** (1.0 / 3.0)
    if mean > max_edge or mean < min_edge:
        return None
    e = rng.normal(0.0, sigma, 3)
    for _ in range(12):
        lengths = mean * np.exp(e - e.mean())
        if lengths.max() <= max_edge and lengths.min() >= min_edge:
            return (*map(float, lengths), *angles)
        e *= 0.7
    lengths = np.full(3, mean)
    return (*map(float, lengths), *angles)


@dataclass(frozen=True)
class Packing:
    """A grown crystal: the molecule (Cartesian, the cell's frame) and its cell."""

    cell: tuple[float, float, float, float, float, float]
    molecule: object  # synth_molecules.Molecule
    frac: np.ndarray  # (n, 3) fractional coordinates of the asymmetric unit
    volume: float
    mol_id: np.ndarray | None = None  # (n,) molecule of each atom (Z' > 1), contiguous


@dataclass(frozen=True)
class CompressOptions:
    """Squeezing after growth (:func:`compress_packing`): variable-cell relaxation under
    pressure (:func:`phasenet.synth.relax.relax_cell`). Rigid molecules and the cell
    shape settle together under ``pressure`` (Å⁻¹: P·V against the quarter-squared
    overlaps) for ``press_steps`` steepest-descent steps with the contact limits raised
    by ``press_margin`` Å, then up to ``release_steps`` steps at zero pressure with the
    limits + ``release_margin`` until no contact is closer than its limit + ``eps``.
    Edges stay in [min_edge, ``max_edge``], V/(abc) >= ``min_shape``; pair lists hold
    pairs up to limit + ``skin``. A relaxation that does not end clean is dropped."""

    pressure: float = 0.01
    press_steps: int = 60
    release_steps: int = 120  # stops as soon as clean (most take 20-40)
    press_margin: float = 0.1
    release_margin: float = 0.05
    max_edge: float = 15.0
    min_shape: float = 0.75
    skin: float = 1.5
    eps: float = 0.003  # Å kept clear above every contact limit


def _molecule_rows(packing: Packing):
    """(starts, ends) of the molecules of the asymmetric unit (contiguous rows)."""
    ids = packing.mol_id if packing.mol_id is not None else np.zeros(len(packing.molecule), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids, starts, np.r_[starts[1:], len(ids)]


def cell_parameters(m: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(a, b, c, alpha, beta, gamma) of the cell whose columns are the edge vectors ``m``."""
    e = np.linalg.norm(m, axis=0)

    def angle(i, j):
        return float(np.degrees(np.arccos(np.clip(m[:, i] @ m[:, j] / (e[i] * e[j]), -1.0, 1.0))))

    return (*map(float, e), angle(1, 2), angle(0, 2), angle(0, 1))


def relax_packing(packing: Packing, spec: SpaceGroupSpec, min_volume: float,
                  options: PackingOptions | None = None,
                  compress: CompressOptions | None = None) -> Packing | None:
    """Stage 1 of :func:`compress_packing`: the packing relaxed with its cell under
    pressure (:func:`phasenet.synth.relax.relax_cell`), or None if overlaps were left."""
    from phasenet.synth.relax import STRAIN_MASKS, relax_cell

    options = options or PackingOptions()
    c = compress or CompressOptions()
    mol = packing.molecule
    m0 = np.array(gemmi.UnitCell(*packing.cell).orth.mat.tolist())
    ops = group_ops(spec.hm)
    ids, starts, ends = _molecule_rows(packing)
    rad = np.array([vdw_radius(str(e)) for e in mol.element])
    m, new, u, _ = relax_cell(packing.frac @ m0.T, starts, ends, m0, ops.rot, ops.trans, rad,
                              mol.element == "H", options.contact_tolerance,
                              options.h_contact_tolerance, STRAIN_MASKS[spec.system], c.pressure,
                              c.press_steps, c.release_steps, c.eps, options.min_edge, c.max_edge,
                              c.min_shape, float(min_volume), c.skin, c.release_margin, c.press_margin)
    if u > 0.0:
        return None
    if spec.system == "monoclinic" and m[:, 0] @ m[:, 2] > 0.0:
        # beta < 90: the conventional cell takes -a, -b (beta -> 180 - beta, still right-handed);
        # fractional (x, y, z) -> (-x, -y, z) maps every b-unique monoclinic group onto itself
        m = m * np.array([-1.0, -1.0, 1.0])[None, :]
    frac = new @ np.linalg.inv(m).T
    return Packing(cell_parameters(m), type(mol)(mol.element, new, mol.bonds),
                   frac - np.floor(frac.mean(axis=0)), float(abs(np.linalg.det(m))), ids)


def compress_packing(packing: Packing, spec: SpaceGroupSpec, min_volume: float,
                     options: PackingOptions | None = None,
                     compress: CompressOptions | None = None) -> Packing:
    """The packing squeezed (never below ``min_volume``) by :func:`relax_packing`, or
    unchanged where the relaxation left an overlap."""
    relaxed = relax_packing(packing, spec, min_volume, options, compress)
    return packing if relaxed is None else relaxed


def grow_in_cell(rng, n_heavy: int, spec: SpaceGroupSpec, cell, molecule_options,
                 options: PackingOptions | None = None, max_failures: int = 400,
                 fill: bool = True, fill_tries: int = 8,
                 max_molecules: int = 8, compress: CompressOptions | None = None,
                 min_volume_per_atom: float = 0.0, rounds: int = 1,
                 max_volume_per_atom: float = np.inf, extra_rounds: int = 0) -> Packing | None:
    """Grow a molecule of up to ``n_heavy`` non-H atoms inside ``cell`` under the
    symmetry of ``spec``, every fragment clear of all images of what is already
    there. Returns the (possibly smaller, if growth got stuck) molecule, or None if
    not even the first fragment fits.

    With ``compress``, the grown crystal is squeezed (:func:`compress_packing`, never
    below ``min_volume_per_atom`` Å³ per non-H atom), and ``rounds`` > 1 times growth
    goes on in the squeezed cell (every site reopened) and is squeezed again, up to
    ``extra_rounds`` more times while looser than ``max_volume_per_atom``."""
    options = options or PackingOptions()
    env = CellEnv(cell, spec.hm, options)
    origin = env.m @ rng.random(3)
    b = MoleculeBuilder(rng, molecule_options, env, origin)
    if not b.seed(n_heavy, tries=20, origins=lambda: env.m @ rng.random(3)):
        return None
    z = len(env.rot)
    packing = None
    rounds = max(rounds, 1)
    for r in range(rounds + extra_rounds if compress is not None else 1):
        if r >= rounds and packing.volume <= max_volume_per_atom * z * packing.molecule.n_heavy:
            break
        if r:  # go on growing in the squeezed cell
            env = CellEnv(packing.cell, spec.hm, options)
            keep = np.flatnonzero(b.alive[:b.n])
            b.xyz[keep] = packing.frac @ env.m.T
            b.env = env
            env.add(0, b.xyz[:b.n], b.rad[:b.n], b.is_h[:b.n])
            b.closed[:] = False
            b.close_blocked()  # one vectorised test instead of a failed attempt per site
        b.grow(n_heavy, max_failures)
        # holes the first molecule cannot reach: more molecules in the asymmetric unit
        extra = b.n_mol - 1
        while fill and extra < max_molecules - 1 and b.heavy_count() < n_heavy:
            if not b.seed(1, tries=fill_tries, origins=lambda: env.m @ rng.random(3), small=True):
                break
            extra += 1
            b.grow(n_heavy, max_failures // 2)
        mol = b.molecule()
        ids = b.mol[np.flatnonzero(b.alive[:b.n])]
        frac = mol.xyz @ env.minv.T
        shift = np.floor(frac.mean(axis=0))  # molecular centre in the first cell
        packing = Packing(env.cell, mol, frac - shift,
                          float(abs(np.linalg.det(env.m))), ids)
        if compress is not None:
            packing = compress_packing(packing, spec, min_volume_per_atom * z * mol.n_heavy,
                                       options, compress)
    return packing

