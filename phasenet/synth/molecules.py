"""Molecules grown from fragment rules: the content of synthetic crystal structures.

A molecule grows from a seed fragment by attaching fragments to free valences
("slots": ideal bond directions of an atom's hybridisation) until it has the
requested number of non-hydrogen atoms; the remaining slots get hydrogens at X-ray
distances. Fragments:

- rigid rings: aromatic 6-rings (benzene, pyridine; 1.39 Å, 120°), aromatic 5-rings
  (furan, pyrrole; 1.38 Å), cyclohexane chairs (1.53 Å, ~110°);
- chain atoms: sp3 C, N, O (tetrahedral), S (thioether, heavy option);
- groups: carbonyl C=O (1.23 Å, trigonal), nitrile C≡N (1.14 Å, linear),
  P=O (phosphine oxide, heavy option), a tetrahedral metal with chloride ligands
  (heavy option);
- terminal halogens F, Cl, Br, I (1.35, 1.75, 1.90, 2.10 Å).

Bond lengths follow the element pair and bond type (standard organic values,
Allen et al. 1987), with a small Gaussian spread; angles are the ideal
tetrahedral/trigonal/linear ones with a ~1.5° spread; torsions about sp3-sp3
bonds are staggered (±8°), others random. Each new fragment is tried at several
torsions at once (the three staggered ones for sp3-sp3) and placed at the first
that comes no closer than ``clash`` limits to atoms of its molecule 4+ bonds away
(self-avoiding molecules) and, in a crystal, no closer than van der Waals limits
to every symmetry/lattice image (:class:`phasenet.synth.environment.CellEnv`). No
external data is needed.

Fragments are cached templates (:class:`_Frag`: elements, bonds, radii, per
kind); the coordinates of each placement and its contact tests (all torsions, the
molecule, the image cloud, the fragment's own images) run in compiled kernels
(:mod:`phasenet.synth.kernels`: ``star_xyz``, ``orient``, ``rigid``,
``first_free``), with random numbers drawn in blocks (:class:`_Draws`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from phasenet.synth.environment import CellEnv, PackingOptions


#: Single-bond lengths (Å) by element pair and the hybridisation class of the
#: carbon partner: "3" sp3, "2" sp2/aromatic. Keyed by sorted element pair.
_BOND = {
    ("C", "C"): {"33": 1.530, "32": 1.505, "22": 1.480},
    ("C", "N"): {"3": 1.469, "2": 1.400},
    ("C", "O"): {"3": 1.430, "2": 1.360},
    ("C", "S"): {"3": 1.818, "2": 1.770},
    ("C", "F"): {"3": 1.390, "2": 1.350},
    ("C", "Cl"): {"3": 1.780, "2": 1.740},
    ("Br", "C"): {"3": 1.940, "2": 1.890},
    ("C", "I"): {"3": 2.140, "2": 2.095},
    ("C", "P"): {"3": 1.830, "2": 1.800},
    ("N", "N"): {"": 1.450},
    ("N", "O"): {"": 1.420},
    ("N", "S"): {"": 1.640},
    ("O", "S"): {"": 1.600},
    ("O", "P"): {"": 1.590},
    ("N", "P"): {"": 1.680},
    ("O", "O"): {"": 1.470},
    ("S", "S"): {"": 2.040},
}
#: X-H distances as refined against X-ray data (riding model, SHELXL defaults).
_XH = {"C3": 0.97, "C2": 0.95, "N": 0.88, "O": 0.84, "S": 1.20, "P": 1.40}
METAL_LIGAND = {"N": 2.04, "O": 1.98, "Cl": 2.24}
METALS = ("Cu", "Zn", "Ni", "Co", "Fe", "Mn")

#: Bondi van der Waals radii (Å); metals get 1.6.
VDW_RADIUS = {"H": 1.20, "C": 1.70, "N": 1.55, "O": 1.52, "F": 1.47, "S": 1.80, "Cl": 1.75,
              "Br": 1.85, "I": 1.98, "P": 1.80}
#: Covalent radii (Å, Cordero et al. 2008) for bond perception in checks.
COVALENT_RADIUS = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57, "S": 1.05, "Cl": 1.02,
                   "Br": 1.20, "I": 1.39, "P": 1.07, "Cu": 1.32, "Zn": 1.22, "Ni": 1.24,
                   "Co": 1.26, "Fe": 1.32, "Mn": 1.39}

TETRAHEDRAL = np.degrees(np.arccos(-1.0 / 3.0))  # 109.47°
HEAVY_ELEMENTS = ("S", "Cl", "Br", "I", "P", "Cu")


def vdw_radius(element: str) -> float:
    return VDW_RADIUS.get(element, 1.6)


def bond_length(e1: str, h1: str, e2: str, h2: str) -> float:
    """Ideal single-bond length of e1(hybridisation h1) - e2(h2); h is 'sp3', 'sp2', ...

    >>> round(bond_length("C", "sp3", "C", "sp3"), 3), round(bond_length("C", "ar", "Cl", "term"), 3)
    (1.53, 1.74)
    """
    if e1 in METALS or e2 in METALS:
        other = e2 if e1 in METALS else e1
        return METAL_LIGAND.get(other, 2.1)
    if e2 == "H" or e1 == "H":
        x, hx = (e1, h1) if e2 == "H" else (e2, h2)
        if x == "C":
            return _XH["C3" if hx == "sp3" else "C2"]
        return _XH.get(x, 1.0)
    key = tuple(sorted((e1, e2)))
    table = _BOND.get(key)
    if table is None:
        return COVALENT_RADIUS.get(e1, 1.0) + COVALENT_RADIUS.get(e2, 1.0)
    if "" in table:
        return table[""]
    cls = lambda h: "3" if h == "sp3" else "2"  # noqa: E731
    if key == ("C", "C"):
        return table["".join(sorted(cls(h1) + cls(h2), reverse=True))]
    hc = h1 if e1 == "C" else h2
    return table[cls(hc)]


@dataclass
class Molecule:
    """A grown molecule: Cartesian coordinates (Å), elements and the bond graph."""

    element: np.ndarray  # (n,) str
    xyz: np.ndarray  # (n, 3) float64
    bonds: np.ndarray  # (m, 2) int

    def __len__(self) -> int:
        return len(self.element)

    @property
    def n_heavy(self) -> int:
        return int(np.sum(self.element != "H"))


# --------------------------------------------------------------------------- geometry


def _unit(v):
    return v / np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def _cross(a, b):
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _perp(u, rng=None):
    """A unit vector perpendicular to u (random about u if rng is given)."""
    a = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    p = _unit(_cross(u, a))
    if rng is not None:
        q = _cross(u, p)
        t = rng.uniform(0, 2 * np.pi)
        p = np.cos(t) * p + np.sin(t) * q
    return p


def _cone(u, ref, angle_deg, torsions_deg):
    """Unit vectors at ``angle`` from u, at the given torsions about u measured from ref."""
    ref = _unit(ref - np.dot(ref, u) * u)
    q = _cross(u, ref)
    a = np.radians(angle_deg)
    t = np.radians(np.asarray(torsions_deg, dtype=float))
    return (np.cos(a) * u[None, :]
            + np.sin(a) * (np.cos(t)[:, None] * ref[None, :] + np.sin(t)[:, None] * q[None, :]))


def _two_tetrahedral(b1, b2):
    """The two remaining tetrahedral directions of an atom with bonds along b1, b2."""
    m = -_unit(b1 + b2)
    n = _unit(_cross(b1, b2))
    h = np.radians(TETRAHEDRAL / 2)
    return np.array([np.cos(h) * m + np.sin(h) * n, np.cos(h) * m - np.sin(h) * n])


# --------------------------------------------------------------------------- rigid ring templates


@dataclass(frozen=True)
class _Ring:
    xyz: np.ndarray  # (k, 3), atom 0 is the attachment atom
    hyb: str  # hybridisation of ring atoms
    slots: tuple  # per atom: (s, 3) array of free slot directions
    attach_dir: np.ndarray  # slot of atom 0 that bonds to the parent (outward)


@lru_cache(maxsize=None)
def _planar_ring(k: int, side: float) -> _Ring:
    r = side / (2 * np.sin(np.pi / k))
    ang = 2 * np.pi * np.arange(k) / k
    xyz = np.stack([r * np.cos(ang), r * np.sin(ang), np.zeros(k)], axis=1)
    radial = xyz / r
    return _Ring(xyz - xyz[0], "ar", tuple(radial[i:i + 1] for i in range(k)), radial[0])


@lru_cache(maxsize=None)
def _chair() -> _Ring:
    r, h = 1.44, 0.25
    ang = np.pi / 3 * np.arange(6)
    xyz = np.stack([r * np.cos(ang), r * np.sin(ang), h * (-1.0) ** np.arange(6)], axis=1)
    slots = []
    for i in range(6):
        b1 = _unit(xyz[(i - 1) % 6] - xyz[i])
        b2 = _unit(xyz[(i + 1) % 6] - xyz[i])
        two = _two_tetrahedral(b1, b2)
        # equatorial first: the one less parallel to the ring axis
        order = np.argsort(np.abs(two[:, 2]))
        slots.append(two[order])
    return _Ring(xyz - xyz[0], "sp3", tuple(slots), slots[0][0])


# --------------------------------------------------------------------------- fragment templates

_HYB_CODE = {"sp3": 0, "sp2": 1, "sp": 2}  # for synth_kernels.star_xyz
_N_DIRS = {"sp3": 3, "sp2": 2, "sp": 1}  # bond directions an atom has besides its parent
_WITH_H = ("C", "N", "O", "S", "P")  # elements whose free slots carry hydrogens


@lru_cache(maxsize=None)
def _bond_length(e1: str, h1: str, e2: str, h2: str) -> float:
    """:func:`bond_length`, cached: growth asks for the same few pairs all the time."""
    return bond_length(e1, h1, e2, h2)


class _Frag:
    """A fragment as it is placed: elements, hybridisations, bonds between its rows
    (row 0 bonds to the parent), per-atom arrays for the contact tests (radius, H
    flag, ``step``: bonds from the parent, 1 for ``attach_rows``, else 2) and the
    row each hydrogen is bonded to. Built once per kind and cached (the
    ``_*_frag`` functions); coordinates are made at each placement."""

    def __init__(self, els, hybs, bonds, attach_rows):
        k = len(els)
        self.els, self.hybs = list(els), list(hybs)
        self.is_h = np.array([e == "H" for e in els])
        self.rad = np.array([vdw_radius(e) for e in els])
        self.rad_max = float(self.rad.max())
        self.step = np.full(k, 2, dtype=np.int64)
        self.step[list(attach_rows)] = 1
        self.bonds = np.array(bonds, dtype=np.int64).reshape(-1, 2)
        self.hpar = np.arange(k, dtype=np.int64)  # the parent row of a hydrogen (else its own)
        for i, j in bonds:
            if els[j] == "H":
                self.hpar[j] = i
            elif els[i] == "H":
                self.hpar[i] = j
        self.h_rows = [r for r, e in enumerate(els) if e == "H"]
        self.n_heavy = k - len(self.h_rows)


@lru_cache(maxsize=None)
def _star_frag(el: str, hyb: str, n_slots: int, sub: tuple = (), extra: tuple = ()) -> _Frag:
    """Atom ``el`` (hybridisation ``hyb``) with ``n_slots`` further bonds: the
    substituents ``sub`` ((element, bond length)) on the first slots, hydrogens on
    the others (C, N, O, S, P only), then ``extra`` atoms on substituents ((row,
    element, bond length)). ``slot_len``: ideal lengths of the ``n_out`` slot bonds."""
    els, hybs, slot_len = [el], [hyb], []
    for k in range(min(n_slots, _N_DIRS.get(hyb, 0))):
        if k < len(sub):
            els.append(sub[k][0])
            slot_len.append(sub[k][1])
        elif el in _WITH_H:
            els.append("H")
            slot_len.append(_bond_length(el, hyb, "H", "term"))
        else:
            continue
        hybs.append("term")
    bonds = [(0, k) for k in range(1, len(els))]
    n_out = len(els) - 1
    for row, e2, _ in extra:
        els.append(e2)
        hybs.append("term")
        bonds.append((row, len(els) - 1))
    f = _Frag(els, hybs, bonds, [0])
    f.hyb_code, f.n_out, f.slot_len, f.extra = _HYB_CODE.get(hyb, 3), n_out, np.array(slot_len), extra
    return f


@lru_cache(maxsize=None)
def _ring_frag(kind: str, hetero: int, attached: bool) -> _Frag:
    """Ring ``kind`` with its heteroatom at row ``hetero`` (0: none) and hydrogens on
    the free slots (all but row 0's first one, the bond to the parent, when
    ``attached``). Coordinates in the ring frame: ``base + unit * length`` per row
    (ring atoms: their position, length 0; hydrogens: their ring atom, slot
    direction, ideal X-H length)."""
    if kind == "chair":
        ring = _chair()
    else:
        k = 6 if kind in ("benzene", "pyridine") else 5
        ring = _planar_ring(k, 1.39 if k == 6 else 1.38)
    k = len(ring.xyz)
    els = ["C"] * k
    if hetero:
        els[hetero] = "O" if kind == "furan" else "N"
    all_el, all_hyb, bonds = list(els), [ring.hyb] * k, []
    base, unit, length = list(ring.xyz), [np.zeros(3)] * k, [0.0] * k
    for i in range(k):
        bonds.append((i, (i + 1) % k))
        slots = ring.slots[i]
        if i == 0 and attached:
            slots = slots[1:]
        if els[i] == "O" or (els[i] == "N" and kind == "pyridine"):
            slots = slots[:0]
        for v in slots:
            all_el.append("H")
            all_hyb.append("term")
            base.append(ring.xyz[i])
            unit.append(v)
            length.append(_bond_length(els[i], ring.hyb, "H", "term"))
            bonds.append((i, len(all_el) - 1))
    f = _Frag(all_el, all_hyb, bonds, range(k))
    f.base, f.unit, f.length = np.array(base), np.array(unit), np.array(length)
    f.ring_hyb, f.attach_dir, f.centroid = ring.hyb, np.ascontiguousarray(ring.attach_dir), ring.xyz.mean(axis=0)
    return f


@lru_cache(maxsize=None)
def _seed_frag(el: str, nh: int) -> _Frag:
    """A small seed molecule: ``el`` with ``nh`` hydrogens (CH4, NH3, H2O) on the first
    bonds of an ideal tetrahedron; ``local``: coordinates about ``el`` at the origin."""
    f = _Frag([el] + ["H"] * nh, ["sp3"] + ["term"] * nh, [(0, k) for k in range(1, nh + 1)], [0])
    z = np.array([0.0, 0.0, 1.0])
    dirs = np.vstack([z, _cone(z, np.array([1.0, 0.0, 0.0]), TETRAHEDRAL, [0, 120, 240])])[:nh]
    f.local = np.vstack([np.zeros(3), dirs * _bond_length(el, "sp3", "H", "term")])
    return f


# --------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class MoleculeOptions:
    """How molecules grow. ``heavy_fraction`` is the expected fraction of non-H atoms
    drawn from ``heavy_elements`` (0: C, N, O, H only)."""

    heavy_fraction: float = 0.0
    heavy_elements: tuple[str, ...] = HEAVY_ELEMENTS
    p_ring: float = 0.35  # chance a growth step adds a ring (if the budget allows)
    p_ring_seed: float = 0.6  # chance the molecule starts from a ring
    bond_sigma: float = 0.008  # Å, spread of bond lengths
    angle_sigma: float = 1.5  # degrees, spread of bond angles
    # intramolecular non-bonded limits (atoms 4+ bonds apart), Å
    clash_heavy: float = 2.9
    clash_h: float = 2.3
    clash_hh: float = 1.95
    n_torsions: int = 6  # torsions tried at once per fragment (3 staggered ones for sp3-sp3)

    def __post_init__(self):
        if not 0.0 <= self.heavy_fraction <= 1.0:
            raise ValueError(f"heavy_fraction must be in [0, 1], got {self.heavy_fraction}")
        allowed = set(HEAVY_ELEMENTS) | set(METALS) | {"F"}
        bad = [e for e in self.heavy_elements if e not in allowed]
        if bad:
            raise ValueError(f"heavy elements {bad} not supported; choose from {sorted(allowed)}")
        if self.heavy_fraction > 0 and not self.heavy_elements:
            raise ValueError("heavy_fraction > 0 needs at least one heavy element")


class _Draws:
    """Random numbers for growth, taken from ``rng`` in blocks (one generator call per
    few hundred numbers instead of one per draw): uniform [0, 1) and standard normal
    numbers, singly or as arrays. Offers the few ``numpy.random.Generator`` methods
    the geometry helpers use (``random``, ``uniform``, ``normal``). Deterministic
    in the generator's state, like the generator itself."""

    def __init__(self, rng, block: int = 256):
        self.rng, self.block = rng, block
        self._u, self._ul, self._iu = np.empty(0), [], 0
        self._g, self._gl, self._ig = np.empty(0), [], 0

    def _refill_u(self, k):
        self._u = self.rng.random(max(self.block, k))
        self._ul, self._iu = self._u.tolist(), 0

    def _refill_g(self, k):
        self._g = self.rng.standard_normal(max(self.block, k))
        self._gl, self._ig = self._g.tolist(), 0

    def random(self) -> float:
        if self._iu >= len(self._ul):
            self._refill_u(1)
        self._iu += 1
        return self._ul[self._iu - 1]

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * self.random()

    def uniforms(self, k: int) -> np.ndarray:
        """k uniform [0, 1) numbers (a read-only view: do not modify)."""
        if self._iu + k > len(self._ul):
            self._refill_u(k)
        self._iu += k
        return self._u[self._iu - k:self._iu]

    def normals(self, k: int) -> np.ndarray:
        """k standard normal numbers (a read-only view: do not modify)."""
        if self._ig + k > len(self._gl):
            self._refill_g(k)
        self._ig += k
        return self._g[self._ig - k:self._ig]

    def normal(self, loc: float = 0.0, scale: float = 1.0, size=None):
        if size is None:
            if self._ig >= len(self._gl):
                self._refill_g(1)
            self._ig += 1
            return loc + scale * self._gl[self._ig - 1]
        return loc + scale * self.normals(int(np.prod(size))).reshape(size)


_ZERO3 = np.zeros(3)
_ZERO1 = np.zeros(1)
_NO_BONDS = np.zeros((0, 2), dtype=np.int64)
_MAX_DEGREE = 6


class MoleculeBuilder:
    """Grows a molecule that is complete at every step: each free valence carries a
    hydrogen, and growing replaces a hydrogen by a fragment along its bond.

    Every fragment is tried at several torsions about its bond at once (staggered
    ones for sp3-sp3 bonds); the candidates are tested together against ``env``: the
    molecule itself (intramolecular limits by topological distance) and, in a
    crystal, all symmetry and lattice images of the atoms placed so far (van der
    Waals limits). Without ``env`` the molecule grows in vacuum.

    State: per-atom arrays (coordinates, alive, H, closed, radius, molecule, the
    parent of each hydrogen) and the bond graph as adjacency rows ``nb``/``deg``,
    all read by the compiled kernels (:mod:`phasenet.synth.kernels`: fragment
    coordinates, the placement test, bond bookkeeping). Fragments come from cached
    templates (:class:`_Frag`); random numbers from :class:`_Draws`.
    """

    def __init__(self, rng, options: MoleculeOptions, env=None, origin=None):
        # numba is loaded here, on first use, not when this module is imported
        from phasenet.synth import kernels

        self.kernels = kernels
        self.rng = rng
        self.draw = _Draws(rng)
        self.o = options
        if env is None:
            env = CellEnv((1000.0, 1000.0, 1000.0, 90.0, 90.0, 90.0), "P 1", PackingOptions())
            origin = np.full(3, 500.0) if origin is None else origin
        self.env = env
        self.origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
        self.el: list[str] = []
        self.hyb: list[str] = []
        cap = 128
        self.xyz = np.zeros((cap, 3))
        self.alive = np.zeros(cap, dtype=bool)
        self.is_h = np.zeros(cap, dtype=bool)
        self.closed = np.zeros(cap, dtype=bool)  # hydrogens that can no longer be replaced
        self.rad = np.zeros(cap)
        self.mol = np.zeros(cap, dtype=np.int64)  # molecule of each atom (Z' > 1)
        self.hpar = np.zeros(cap, dtype=np.int64)  # the atom a hydrogen is bonded to
        self.nb = np.zeros((cap, _MAX_DEGREE), dtype=np.int64)  # bonded atoms, deg[i] of them
        self.deg = np.zeros(cap, dtype=np.int64)
        self.n_mol = 0
        self.n_heavy = 0  # non-H atoms (never removed)
        self.rad_max = 0.0

    @property
    def n(self) -> int:
        return len(self.el)

    def _reserve(self, size: int) -> None:
        extra = size - len(self.xyz)
        if extra <= 0:
            return
        for name in ("xyz", "alive", "is_h", "closed", "rad", "mol", "hpar", "nb", "deg"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros((extra,) + old.shape[1:], dtype=old.dtype)]))

    def _add(self, frag: _Frag, xyz, mol) -> int:
        i0, k = self.n, len(frag.els)
        if i0 + k > len(self.xyz):
            self._reserve(i0 + k + 128)
        sl = slice(i0, i0 + k)
        self.xyz[sl] = xyz
        self.alive[sl] = True
        self.is_h[sl] = frag.is_h
        self.rad[sl] = frag.rad
        self.mol[sl] = mol
        self.hpar[sl] = frag.hpar + i0
        self.rad_max = max(self.rad_max, frag.rad_max)
        self.env.add(i0, xyz, frag.rad, frag.is_h)
        self.el += frag.els
        self.hyb += frag.hybs
        return i0

    def _place(self, parent, d, frag: _Frag, xyz0, staggered=False):
        """Try the fragment (coordinates ``xyz0``) at several torsions about the bond
        ``d`` to ``parent`` (without a parent: as given) and add the first that fits
        (:func:`phasenet.synth.kernels.first_free`). Returns the indices of its
        hydrogens, or None."""
        env, o = self.env, self.o
        if parent is None:
            p0, d, tors, pi = _ZERO3, _ZERO3, _ZERO1, -1
        else:
            p0, pi = self.xyz[parent], parent
            tors = _ZERO1 if len(frag.els) == 1 else self._torsions(staggered)
        pick, xyz = self.kernels.first_free(
            xyz0, frag.rad, frag.is_h, frag.step, p0, d, tors, pi, self.n, self.nb, self.deg,
            self.alive, self.rad, self.is_h, self.mol, self.rad_max, env.cart, env.atom, env.kn,
            env.nc, env.m, env.minv, env.rot, env.trans, env.shifts, env.shifts_cart, env.reach,
            env.tol, env.htol, o.clash_heavy, o.clash_h, o.clash_hh)
        if pick < 0:
            return None
        if parent is None:
            self.n_mol += 1
        i0 = self._add(frag, xyz, self.n_mol - 1 if parent is None else self.mol[parent])
        self.kernels.link(self.nb, self.deg, frag.bonds, i0, pi)
        self.n_heavy += frag.n_heavy
        return [i0 + r for r in frag.h_rows]

    def _torsions(self, staggered: bool) -> np.ndarray:
        """Rotations (radians) tried about the new bond; the first is 0 (as built)."""
        dr = self.draw
        if staggered:  # the other two staggered ones (± 8°), in random order
            g = dr.normals(2)
            t1 = 2.0 * np.pi / 3.0 + np.radians(8.0 * g[0])
            t2 = 4.0 * np.pi / 3.0 + np.radians(8.0 * g[1])
            return np.array([0.0, t1, t2] if dr.random() < 0.5 else [0.0, t2, t1])
        t = np.empty(self.o.n_torsions)
        t[0] = 0.0
        t[1:] = 2.0 * np.pi * dr.uniforms(self.o.n_torsions - 1)
        return t

    def _star(self, parent, d, el, hyb, n_slots, sub=(), extra=()):
        """Atom ``el`` bonded to ``parent`` along ``d``, with its substituents: ``sub``
        ((element, length)) on the first slots, hydrogens on the others, ``extra``
        hydrogens on substituents ((row, element, length))."""
        f = _star_frag(el, hyb, n_slots, tuple(sub), tuple(extra))
        dr, sigma = self.draw, self.o.bond_sigma
        ph = self.hyb[parent]
        staggered = hyb == "sp3" and ph == "sp3"
        g = dr.normals(5 + f.n_out)
        length = _bond_length(self.el[parent], ph, el, hyb) + sigma * g[0]
        xyz = self.kernels.star_xyz(self.xyz[parent], d, length, f.hyb_code, f.n_out, staggered, parent, self.nb,
                          self.deg, self.xyz, f.slot_len + sigma * g[5:], dr.uniforms(3), g[1:5],
                          self.o.angle_sigma)
        if extra:
            pts = [xyz]
            for row, _, l2 in extra:
                b = _unit(xyz[row] - xyz[0])
                v = _cone(b, _perp(b, dr), 180.0 - TETRAHEDRAL, [0.0])[0]
                pts.append((xyz[row] + v * l2)[None])
            xyz = np.concatenate(pts)
        return self._place(parent, d, f, xyz, staggered)

    def _ring(self, parent, d, kind):
        dr = self.draw
        hetero = 0
        if kind == "pyridine":
            hetero = 1 + int(dr.random() * 5)
        elif kind in ("furan", "pyrrole"):
            hetero = 1 + int(dr.random() * 4)
        f = _ring_frag(kind, hetero, parent is not None)
        local = f.base + f.unit * (f.length + self.o.bond_sigma * dr.normals(len(f.els)))[:, None]
        if parent is None:
            return self._place(None, None, f, self.kernels.rigid(local, dr.normals(4), self.origin - f.centroid))
        length = _bond_length(self.el[parent], self.hyb[parent], "C", f.ring_hyb) + dr.normal(0, self.o.bond_sigma)
        xyz = self.kernels.orient(local, f.attach_dir, -d, self.xyz[parent] + d * length)
        return self._place(parent, d, f, xyz)

    def _pick_fragment(self, budget: int, parent: int):
        rand = self.draw.random
        o = self.o
        pel = self.el[parent]
        if o.heavy_fraction > 0 and rand() < o.heavy_fraction:
            choices = []
            for e in o.heavy_elements:
                if e in ("Cl", "Br", "I", "F") and pel == "C":
                    choices.append(("term", e))
                elif e == "S" and pel == "C":
                    choices.append(("chain", "S"))
                elif e == "P" and budget >= 4 and pel == "C":
                    choices.append(("group", "po3"))
                elif e in METALS and budget >= 4 and pel in ("N", "O"):
                    choices.append(("group", "metal"))
            if choices:
                return choices[int(rand() * len(choices))]
        if budget >= 6 and rand() < o.p_ring:
            return ("ring", _RING_KINDS[int(rand() * len(_RING_KINDS))])
        r = rand()
        if pel != "C":  # no N-N, N-O, O-O bonds
            return ("chain", "C")
        if r < 0.15 and budget >= 2:
            return ("group", "carbonyl")
        if r < 0.19 and budget >= 2:
            return ("group", "nitrile")
        if r < 0.33:
            return ("chain", "N")
        if r < 0.48:
            return ("chain", "O")
        return ("chain", "C")

    def _grow_step(self, h: int, fragment):
        """Replace hydrogen ``h`` by a fragment; returns its hydrogens' indices or None."""
        parent = int(self.hpar[h])
        v = self.xyz[h] - self.xyz[parent]
        d = v / np.sqrt(v @ v)
        kind, what = fragment
        self.alive[h] = False
        self.kernels.unlink(self.nb, self.deg, h)
        if kind == "ring":
            ok = self._ring(parent, d, what)
        elif kind == "term":
            ok = self._star(parent, d, what, "term", 0)
        elif kind == "chain":
            ok = self._star(parent, d, what, "sp3", {"C": 3, "N": 2, "O": 1, "S": 1}[what])
        elif what == "carbonyl":
            ok = self._star(parent, d, "C", "sp2", 2, sub=(("O", 1.23),))
        elif what == "nitrile":
            ok = self._star(parent, d, "C", "sp", 1, sub=(("N", 1.14),))
        elif what == "po3":  # phosphonic acid P(=O)(OH)2
            ok = self._star(parent, d, "P", "sp3", 3, sub=(("O", 1.49), ("O", 1.55), ("O", 1.55)),
                            extra=((2, "H", 0.84), (3, "H", 0.84)))
        else:  # metal: tetrahedral MCl3 on an N or O donor
            metals = [e for e in self.o.heavy_elements if e in METALS] or ["Cu"]
            ok = self._star(parent, d, str(metals[int(self.draw.random() * len(metals))]), "sp3", 3,
                            sub=(("Cl", 2.24),) * 3)
        if ok is None:  # put the hydrogen back
            self.alive[h] = True
            self.kernels.link(self.nb, self.deg, _NO_BONDS, h, parent)
        return ok

    def heavy_count(self) -> int:
        return self.n_heavy

    def _open_sites(self) -> list[int]:
        """Hydrogens that may still be replaced, ascending."""
        n = self.n
        return np.flatnonzero(self.alive[:n] & self.is_h[:n] & ~self.closed[:n]).tolist()

    def seed(self, n_heavy: int, tries: int = 1, origins=None, small: bool = False) -> bool:
        """Start a new molecule with a ring, or CH4 (H2O, NH3 too when ``small``), at
        ``origin`` (or at the next of ``origins``, a callable, each try); False if it
        never fits."""
        dr = self.draw
        for _ in range(tries):
            if origins is not None:
                self.origin = origins()
            if not small and dr.random() < self.o.p_ring_seed and n_heavy >= 6:
                if self._ring(None, None, _SEED_RINGS[int(dr.random() * len(_SEED_RINGS))]) is not None:
                    return True
                continue
            el = "C" if not small else "CCON"[int(dr.random() * 4)]
            nh = {"C": 4, "N": 3, "O": 2}[el]
            f = _seed_frag(el, nh)  # an ideal tetrahedron (or part), uniformly random orientation
            if self._place(None, None, f, self.kernels.rigid(f.local, dr.normals(4), self.origin)) is not None:
                return True
        return False

    def grow(self, n_heavy: int, max_failures: int = 400) -> None:
        """Grow to ``n_heavy`` non-H atoms or until no hydrogen can be replaced.

        A hydrogen whose fragment does not fit is tried once more with the smallest
        fragment (OH on C, CH3 on N/O); if that fails too the site is closed for good
        (the surroundings only ever fill up), so growth ends when the molecule is
        jammed, without a long tail of hopeless attempts."""
        if self.n == 0 and not self.seed(n_heavy):
            return
        failures = 0
        sites = self._open_sites()
        while self.n_heavy < n_heavy and failures < max_failures:
            if not sites:
                break
            h = sites[int(self.draw.random() * len(sites))]
            pel = self.el[self.hpar[h]]
            if pel not in ("C", "N", "O"):
                self.closed[h] = True
                sites.remove(h)
                continue
            budget = n_heavy - self.n_heavy
            fragment = self._pick_fragment(budget, int(self.hpar[h]))
            new = self._grow_step(h, fragment)
            if new is None:
                failures += 1
                smallest = ("chain", "O" if pel == "C" else "C")
                if fragment != smallest:
                    new = self._grow_step(h, smallest)
                if new is None:
                    self.closed[h] = True
                    self.close_blocked()
                    sites = self._open_sites()
            if new is not None:
                sites.remove(h)
                sites += new

    def close_blocked(self, length: float = 1.40, radius: float = 1.52) -> None:
        """Close, all at once, every open hydrogen where even the first atom of a
        fragment (at ``length`` along the X-H bond, van der Waals ``radius``) would
        touch an image or a non-neighbouring part of its own molecule: one
        vectorised test of all sites against the whole image cloud, instead of a
        failed attempt per site."""
        env, o = self.env, self.o
        self.kernels.close_sites(self.n, self.alive, self.is_h, self.closed, self.hpar, self.xyz, self.mol, self.rad,
                       env.cart, env.atom, env.kn, env.nc, env.m, env.minv, length, radius, env.tol,
                       env.htol, o.clash_heavy, o.clash_h)

    def molecule(self) -> Molecule:
        n = self.n
        keep = np.flatnonzero(self.alive[:n])
        new = -np.ones(n, dtype=np.int64)
        new[keep] = np.arange(len(keep))
        deg = self.deg[:n]
        i = new[np.repeat(np.arange(n), deg)]
        j = new[self.nb[:n][np.arange(self.nb.shape[1])[None, :] < deg[:, None]]]
        key = np.unique(np.minimum(i, j) * n + np.maximum(i, j))  # each bond once, sorted
        bonds = np.stack([key // n, key % n], axis=1) if n else np.zeros((0, 2), dtype=np.int64)
        return Molecule(np.array([self.el[i] for i in keep]), self.xyz[keep].copy(),
                        bonds.astype(np.int64).reshape(-1, 2))


_RING_KINDS = ("benzene", "benzene", "pyridine", "chair", "furan", "pyrrole")
_SEED_RINGS = ("benzene", "benzene", "pyridine", "chair")


def grow_molecule(rng: np.random.Generator, n_heavy: int, options: MoleculeOptions | None = None,
                  max_tries: int = 20) -> Molecule:
    """A connected molecule with about ``n_heavy`` non-hydrogen atoms (exactly, unless
    growth got stuck; the caller checks), in vacuum, centred on its centroid."""
    options = options or MoleculeOptions()
    if n_heavy < 1:
        raise ValueError(f"n_heavy must be >= 1, got {n_heavy}")
    best = None
    for _ in range(max_tries):
        b = MoleculeBuilder(rng, options)
        b.grow(n_heavy)
        mol = b.molecule()
        if best is None or mol.n_heavy > best.n_heavy:
            best = mol
        if mol.n_heavy == n_heavy:
            break
    if best is None:
        raise RuntimeError(f"could not grow a molecule of {n_heavy} non-H atoms")
    best.xyz -= best.xyz.mean(axis=0)
    return best
