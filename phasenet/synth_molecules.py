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
to every symmetry/lattice image (:class:`phasenet.synth_packing.CellEnv`). No
external data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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


def rotation_matrix(axis, angle):
    axis = _unit(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _align(a, b):
    """Rotation matrix taking unit vector a onto unit vector b."""
    v = _cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-9:
        if c > 0:
            return np.eye(3)
        return rotation_matrix(_perp(a), np.pi)
    return rotation_matrix(v, np.arctan2(np.linalg.norm(v), c))


def random_rotation(rng) -> np.ndarray:
    """Uniformly random rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


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


class _Builder:
    """Grows a molecule that is complete at every step: each free valence carries a
    hydrogen, and growing replaces a hydrogen by a fragment along its bond.

    Every fragment is tried at several torsions about its bond at once (staggered
    ones for sp3-sp3 bonds); the candidates are tested together against ``env``: the
    molecule itself (intramolecular limits by topological distance) and, in a
    crystal, all symmetry and lattice images of the atoms placed so far (van der
    Waals limits). Without ``env`` the molecule grows in vacuum.
    """

    def __init__(self, rng, options: MoleculeOptions, env=None, origin=None):
        self.rng = rng
        self.o = options
        if env is None:
            from phasenet.synth_packing import CellEnv, PackingOptions

            env = CellEnv((1000.0, 1000.0, 1000.0, 90.0, 90.0, 90.0), "P 1", PackingOptions())
            origin = np.full(3, 500.0) if origin is None else origin
        self.env = env
        self.origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
        self.el: list[str] = []
        self.hyb: list[str] = []
        self.xyz = np.zeros((128, 3))
        self.alive = np.zeros(128, dtype=bool)
        self.is_h = np.zeros(128, dtype=bool)
        self.closed = np.zeros(128, dtype=bool)  # hydrogens that can no longer be replaced
        self.rad = np.zeros(128)
        self.mol = np.zeros(128, dtype=np.int64)  # molecule of each atom (Z' > 1)
        self.n_mol = 0
        self.nbr: list[list[int]] = []
        self.rad_max = 0.0

    @property
    def n(self) -> int:
        return len(self.el)

    def _add(self, el, hyb, xyz, mol=None) -> list[int]:
        i0, k = self.n, len(el)
        if i0 + k > len(self.xyz):
            grow = i0 + k + 128
            self.xyz = np.concatenate([self.xyz, np.zeros((grow, 3))])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
            self.is_h = np.concatenate([self.is_h, np.zeros(grow, dtype=bool)])
            self.closed = np.concatenate([self.closed, np.zeros(grow, dtype=bool)])
            self.rad = np.concatenate([self.rad, np.zeros(grow)])
            self.mol = np.concatenate([self.mol, np.zeros(grow, dtype=np.int64)])
        xyz = np.asarray(xyz)
        is_h = np.array([e == "H" for e in el])
        rad = np.array([vdw_radius(e) for e in el])
        self.xyz[i0:i0 + k] = xyz
        self.alive[i0:i0 + k] = True
        self.is_h[i0:i0 + k] = is_h
        self.rad[i0:i0 + k] = rad
        self.mol[i0:i0 + k] = self.n_mol if mol is None else mol
        self.rad_max = max(self.rad_max, float(rad.max()))
        self.env.add(i0, xyz, rad, is_h)
        self.el += list(el)
        self.hyb += list(hyb)
        self.nbr += [[] for _ in el]
        return list(range(i0, i0 + k))

    def _bond(self, i, j):
        self.nbr[i].append(j)
        self.nbr[j].append(i)

    def _remove(self, i):
        self.alive[i] = False
        for j in self.nbr[i]:
            self.nbr[j].remove(i)
        self.nbr[i] = []

    def _topo(self, start: int, depth: int) -> dict[int, int]:
        dist = {start: 0}
        frontier = [start]
        for d in range(1, depth + 1):
            nxt = []
            for a in frontier:
                for b in self.nbr[a]:
                    if b not in dist:
                        dist[b] = d
                        nxt.append(b)
            frontier = nxt
        return dist

    def _first_free(self, cands, is_h, rad, step, parent, axis_point, axis) -> int:
        """Index of a candidate (P, k, 3) clear of the molecule and of all images, or -1.

        ``step``: bonds from the parent (1 for atoms bonded to it, 2 for theirs)."""
        o = self.o
        env = self.env
        c0 = cands[0]
        if axis is None:
            centre = c0.mean(axis=0)
        else:  # candidates differ by rotations about the axis: a common centre on it
            centre = axis_point + axis * float((c0.mean(axis=0) - axis_point) @ axis)
        radius = float(np.sqrt(((c0 - centre) ** 2).sum(axis=1).max()))
        reach = radius + float(rad.max()) + max(self.rad_max, 1.0)
        if reach > env.reach:
            return -1
        from phasenet import synth_kernels as _k

        n = self.n
        if n:
            dist_p = np.full(n, 9, dtype=np.int64)
            if parent is not None:
                for a, dd in self._topo(parent, 2).items():
                    dist_p[a] = dd
            pmol = int(self.mol[parent]) if parent is not None else -1
            w, cw = env.wrap(centre)
            ok = _k.cloud_ok(cands, rad, is_h, step, env.cart, env.atom, env.kn, env.nc, self.alive,
                             self.rad, self.is_h, self.mol, pmol, dist_p, centre, cw, w, reach,
                             env.tol, env.htol, o.clash_heavy, o.clash_h, o.clash_hh)
        else:
            ok = np.ones(len(cands), dtype=bool)
        if ok.any():
            rots, trans = env.own_images(centre, radius)
            if len(rots):
                ok &= _k.own_ok(cands, rad, is_h, rots, trans, env.m, env.minv, env.tol, env.htol)
        hit = np.flatnonzero(ok)
        return int(hit[0]) if len(hit) else -1

    def _frame(self, back, hyb, n_slots, parent):
        """Directions of the ``n_slots`` further bonds of an atom bonded along ``back``
        (unit vector from the atom towards its parent)."""
        if n_slots == 0:
            return np.zeros((0, 3))
        rng = self.rng
        ref = None
        if parent is not None:
            for j in self.nbr[parent]:
                v = self.xyz[j] - self.xyz[parent]
                if abs(np.dot(v, back)) < 0.98 * np.linalg.norm(v):
                    ref = v
                    break
        if ref is None:
            ref, t0 = _perp(back, rng), 0.0
        elif hyb == "sp3" and self.hyb[parent] == "sp3":
            t0 = 60.0 + 120.0 * rng.integers(3) + rng.normal(0, 8.0)  # staggered
        else:
            t0 = rng.uniform(0, 360)
        if hyb == "sp3":
            ang = TETRAHEDRAL + rng.normal(0, self.o.angle_sigma, 3)
            tors = t0 + 120.0 * np.arange(3)
        elif hyb == "sp2":
            ang = 120.0 + rng.normal(0, self.o.angle_sigma, 2)
            tors = t0 + 180.0 * np.arange(2)
        else:
            return -back[None, :]
        ref = _unit(ref - np.dot(ref, back) * back)
        q = _cross(back, ref)
        a, t = np.radians(ang), np.radians(tors)
        dirs = (np.cos(a)[:, None] * back[None, :]
                + np.sin(a)[:, None] * (np.cos(t)[:, None] * ref[None, :] + np.sin(t)[:, None] * q[None, :]))
        return dirs[:n_slots]

    def _length(self, e1, h1, e2, h2):
        return bond_length(e1, h1, e2, h2) + self.rng.normal(0, self.o.bond_sigma)

    def _atom_with_h(self, parent, d, el, hyb, n_slots, length=None, sub=None):
        """Coordinates of a new atom bonded to ``parent`` along ``d`` plus its substituents:
        hydrogens on its free slots, or the (element, length) given in ``sub`` for the
        first slots. Returns (elements, hybs, xyz (k, 3))."""
        if length is None:
            length = self._length(self.el[parent], self.hyb[parent], el, hyb)
        pos = self.xyz[parent] + d * length
        dirs = self._frame(-d, hyb, n_slots, parent)
        els, hybs, pts = [el], [hyb], [pos]
        sub = list(sub or [])
        for k, v in enumerate(dirs):
            if k < len(sub):
                e2, l2 = sub[k]
                els.append(e2)
                hybs.append("term")
                pts.append(pos + v * (l2 + self.rng.normal(0, self.o.bond_sigma)))
            elif el in ("C", "N", "O", "S", "P"):
                els.append("H")
                hybs.append("term")
                pts.append(pos + v * self._length(el, hyb, "H", "term"))
        return els, hybs, np.array(pts)

    def _torsions(self, staggered: bool) -> np.ndarray:
        """Rotations (radians) tried about the new bond; the first is 0 (as built)."""
        rng = self.rng
        if staggered:
            t = np.radians(120.0 * np.arange(3) + np.concatenate([[0.0], rng.normal(0, 8.0, 2)]))
            return t[np.concatenate([[0], 1 + rng.permutation(2)])]
        return np.concatenate([[0.0], rng.uniform(0, 2 * np.pi, self.o.n_torsions - 1)])

    def _place(self, parent, d, els, hybs, xyz, internal_bonds, attach_rows, staggered=False):
        """Try the fragment at several torsions about ``d`` (or, without a parent, at
        random places and orientations); add the first that fits; bond attach rows to
        the parent. Returns the new indices or None."""
        is_h = np.array([e == "H" for e in els])
        rad = np.array([vdw_radius(e) for e in els])
        step = np.full(len(els), 2)
        step[list(attach_rows)] = 1
        if parent is None:
            cands = xyz[None]
            pick = self._first_free(cands, is_h, rad, step, None, None, None)
        else:
            p0 = self.xyz[parent]
            if len(els) == 1:
                cands = xyz[None]
            else:
                t = self._torsions(staggered)
                rots = _rotations(d, t)  # (P, 3, 3)
                cands = np.einsum("pij,kj->pki", rots, xyz - p0) + p0
            pick = self._first_free(cands, is_h, rad, step, parent, p0, d)
        if pick < 0:
            return None
        return self._commit(parent, els, hybs, cands[pick], internal_bonds)

    def _commit(self, parent, els, hybs, xyz, internal_bonds):
        if parent is None:
            self.n_mol += 1
        idx = self._add(els, hybs, xyz, self.n_mol - 1 if parent is None else self.mol[parent])
        for i, j in internal_bonds:
            self._bond(idx[i], idx[j])
        if parent is not None:
            self._bond(parent, idx[0])
        return idx

    def _star(self, parent, d, el, hyb, n_slots, length=None, sub=None, extra=()):
        els, hybs, xyz = self._atom_with_h(parent, d, el, hyb, n_slots, length, sub)
        bonds = [(0, k) for k in range(1, len(els))]
        if extra:  # hydrogens on substituents: (substituent row, element, length)
            pts = list(xyz)
            for row, e2, l2 in extra:
                b = _unit(xyz[row] - xyz[0])
                v = _cone(b, _perp(b, self.rng), 180.0 - TETRAHEDRAL, [0.0])[0]
                pts.append(xyz[row] + v * l2)
                els.append(e2)
                hybs.append("term")
                bonds.append((row, len(pts) - 1))
            xyz = np.array(pts)
        staggered = hyb == "sp3" and self.hyb[parent] == "sp3"
        return self._place(parent, d, els, hybs, xyz, bonds, [0], staggered)

    def _ring(self, parent, d, kind):
        rng = self.rng
        if kind == "chair":
            ring = _chair()
            els = ["C"] * 6
        else:
            k = 6 if kind in ("benzene", "pyridine") else 5
            ring = _planar_ring(k, 1.39 if k == 6 else 1.38)
            els = ["C"] * k
            if kind == "pyridine":
                els[int(rng.integers(1, 6))] = "N"
            elif kind in ("furan", "pyrrole"):
                els[int(rng.integers(1, 5))] = "O" if kind == "furan" else "N"
        k = len(els)
        if parent is None:
            rot, origin = random_rotation(rng), self.origin - ring.xyz.mean(axis=0)
        else:
            rot = _align(ring.attach_dir, -d)
            origin = self.xyz[parent] + d * self._length(self.el[parent], self.hyb[parent], "C", ring.hyb)
        xyz = ring.xyz @ rot.T + origin
        all_el, all_hyb, pts, bonds = list(els), [ring.hyb] * k, list(xyz), []
        for i in range(k):
            bonds.append((i, (i + 1) % k))
            slots = ring.slots[i]
            if i == 0 and parent is not None:
                slots = slots[1:]
            if els[i] == "O" or (els[i] == "N" and kind == "pyridine"):
                slots = slots[:0]
            for v in slots:
                pts.append(xyz[i] + (v @ rot.T) * self._length(els[i], ring.hyb, "H", "term"))
                all_el.append("H")
                all_hyb.append("term")
                bonds.append((i, len(pts) - 1))
        return self._place(parent, d, all_el, all_hyb, np.array(pts), bonds, range(k))

    def _pick_fragment(self, budget: int, parent: int):
        rng = self.rng
        o = self.o
        pel = self.el[parent]
        if o.heavy_fraction > 0 and rng.random() < o.heavy_fraction:
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
                return choices[rng.integers(len(choices))]
        if budget >= 6 and rng.random() < o.p_ring:
            return ("ring", _RING_KINDS[int(rng.integers(len(_RING_KINDS)))])
        r = rng.random()
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

    def _grow_step(self, h: int, budget: int, fragment=None):
        """Replace hydrogen ``h`` by a fragment; returns the new indices or None."""
        parent = self.nbr[h][0]
        d = _unit(self.xyz[h] - self.xyz[parent])
        kind, what = fragment or self._pick_fragment(budget, parent)
        self._remove(h)
        if kind == "ring":
            ok = self._ring(parent, d, what)
        elif kind == "term":
            ok = self._star(parent, d, what, "term", 0)
        elif kind == "chain":
            ok = self._star(parent, d, what, "sp3", {"C": 3, "N": 2, "O": 1, "S": 1}[what])
        elif what == "carbonyl":
            ok = self._star(parent, d, "C", "sp2", 2, sub=[("O", 1.23)])
        elif what == "nitrile":
            ok = self._star(parent, d, "C", "sp", 1, sub=[("N", 1.14)])
        elif what == "po3":  # phosphonic acid P(=O)(OH)2
            ok = self._star(parent, d, "P", "sp3", 3, sub=[("O", 1.49), ("O", 1.55), ("O", 1.55)],
                            extra=[(2, "H", 0.84), (3, "H", 0.84)])
        else:  # metal: tetrahedral MCl3 on an N or O donor
            metals = [e for e in self.o.heavy_elements if e in METALS] or ["Cu"]
            ok = self._star(parent, d, str(metals[int(self.rng.integers(len(metals)))]), "sp3", 3,
                            sub=[("Cl", 2.24)] * 3)
        if ok is None:  # put the hydrogen back
            self.alive[h] = True
            self._bond(parent, h)
        return ok

    def heavy_count(self) -> int:
        n = self.n
        return int((self.alive[:n] & ~self.is_h[:n]).sum())

    def seed(self, n_heavy: int, tries: int = 1, origins=None, small: bool = False) -> bool:
        """Start a new molecule with a ring, or CH4 (H2O, NH3 too when ``small``), at
        ``origin`` (or at the next of ``origins``, a callable, each try); False if it
        never fits."""
        rng = self.rng
        for _ in range(tries):
            if origins is not None:
                self.origin = origins()
            if not small and rng.random() < self.o.p_ring_seed and n_heavy >= 6:
                if self._ring(None, None, _SEED_RINGS[int(rng.integers(len(_SEED_RINGS)))]) is not None:
                    return True
                continue
            el = "C" if not small else "CCON"[int(rng.integers(4))]
            nh = {"C": 4, "N": 3, "O": 2}[el]
            z = random_rotation(rng)[:, 2]
            dirs = np.vstack([z, _cone(z, _perp(z, rng), TETRAHEDRAL, [0, 120, 240])])[:nh]
            xyz = np.vstack([self.origin, self.origin + dirs * bond_length(el, "sp3", "H", "term")])
            if self._place(None, None, [el] + ["H"] * nh, ["sp3"] + ["term"] * nh, xyz,
                           [(0, k) for k in range(1, nh + 1)], [0]) is not None:
                return True
        return False

    def grow(self, n_heavy: int, max_failures: int = 400) -> None:
        """Grow to ``n_heavy`` non-H atoms or until no hydrogen can be replaced.

        A hydrogen whose fragment does not fit is tried once more with the smallest
        fragment (OH on C, CH3 on N/O); if that fails too the site is closed for good
        (the surroundings only ever fill up), so growth ends when the molecule is
        jammed, without a long tail of hopeless attempts."""
        rng = self.rng
        if self.n == 0 and not self.seed(n_heavy):
            return
        failures = 0
        count = self.heavy_count()
        while count < n_heavy and failures < max_failures:
            n = self.n
            hs = np.flatnonzero(self.alive[:n] & self.is_h[:n] & ~self.closed[:n])
            if not len(hs):
                break
            h = int(hs[rng.integers(len(hs))])
            pel = self.el[self.nbr[h][0]]
            if pel not in ("C", "N", "O"):
                self.closed[h] = True
                continue
            fragment = self._pick_fragment(n_heavy - count, self.nbr[h][0])
            ok = self._grow_step(h, n_heavy - count, fragment)
            if ok is None:
                failures += 1
                smallest = ("chain", "O" if pel == "C" else "C")
                if fragment != smallest:
                    ok = self._grow_step(h, n_heavy - count, smallest)
                if ok is None:
                    self.closed[h] = True
                    self._close_blocked()
            if ok is not None:
                count = self.heavy_count()

    def _close_blocked(self, length: float = 1.40, radius: float = 1.52) -> None:
        """Close, all at once, every open hydrogen where even the first atom of a
        fragment (at ``length`` along the X-H bond, van der Waals ``radius``) would
        touch an image or a non-neighbouring part of its own molecule: one
        vectorised test of all sites against the whole image cloud, instead of a
        failed attempt per site."""
        n = self.n
        hs = np.flatnonzero(self.alive[:n] & self.is_h[:n] & ~self.closed[:n])
        if not len(hs):
            return
        from phasenet import synth_kernels as _k

        env = self.env
        parents = np.array([self.nbr[h][0] if self.nbr[h] else h for h in hs])
        d = self.xyz[hs] - self.xyz[parents]
        d /= np.sqrt(np.einsum("ij,ij->i", d, d))[:, None]
        q = self.xyz[parents] + length * d  # (S, 3)
        w = np.floor(q @ env.minv.T)
        cw = q - w @ env.m.T
        o = self.o
        blocked = _k.blocked(q, w, cw, self.mol[parents], self.xyz[parents], env.cart, env.atom, env.kn,
                             env.nc, self.alive, self.rad, self.is_h, self.mol, self.xyz, radius,
                             env.tol, env.htol, o.clash_heavy, o.clash_h)
        self.closed[hs[blocked]] = True

    def molecule(self) -> Molecule:
        keep = np.flatnonzero(self.alive[:self.n])
        new = -np.ones(self.n, dtype=np.int64)
        new[keep] = np.arange(len(keep))
        bonds = sorted({(min(new[i], new[j]), max(new[i], new[j]))
                        for i in keep for j in self.nbr[i]})
        return Molecule(np.array([self.el[i] for i in keep]), self.xyz[keep].copy(),
                        np.array(bonds, dtype=np.int64).reshape(-1, 2))


_RING_KINDS = ("benzene", "benzene", "pyridine", "chair", "furan", "pyrrole")
_SEED_RINGS = ("benzene", "benzene", "pyridine", "chair")


def _rotations(axis, angles) -> np.ndarray:
    """(P, 3, 3) rotations by ``angles`` about the unit vector ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    s, c = np.sin(angles)[:, None, None], np.cos(angles)[:, None, None]
    return np.eye(3)[None] + s * k[None] + (1 - c) * (k @ k)[None]


def grow_molecule(rng: np.random.Generator, n_heavy: int, options: MoleculeOptions | None = None,
                  max_tries: int = 20) -> Molecule:
    """A connected molecule with about ``n_heavy`` non-hydrogen atoms (exactly, unless
    growth got stuck; the caller checks), in vacuum, centred on its centroid."""
    options = options or MoleculeOptions()
    if n_heavy < 1:
        raise ValueError(f"n_heavy must be >= 1, got {n_heavy}")
    best = None
    for _ in range(max_tries):
        b = _Builder(rng, options)
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
