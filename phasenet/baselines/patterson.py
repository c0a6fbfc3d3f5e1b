"""Patterson maps, their peaks and Harker sections, and heavy-atom phasing.

The Patterson function P(u) = Σ_h C(h) cos(2π h·u) is computed by FFT over the
whole unit cell from intensities on any reflection list: the reflections are
first expanded with the Laue group of the space group (``symmetry=True``: h R
for every rotation R, Friedel mates included), so measured data that cover only
the asymmetric unit give the full, symmetric map. Coefficients C(h):

- ``sharpen=False, remove_origin=False``: I(h), the plain Patterson;
- ``remove_origin=True``: I(h) − ⟨I⟩ of its resolution shell (origin peak removed);
- ``sharpen=True``: |E(h)|² = I / (ε ⟨I/ε⟩_shell), and with origin removal the
  classic |E|² − 1 (sharp, origin-free; the default).

Heavy-atom phasing (:func:`heavy_atom_phases`): the heaviest element of the
known composition is located by a Harker search (symmetry minimum function:
for each trial position x, the lowest Patterson value over its Harker vectors
x − (R x + s); in P-1 this is simply P(2x)), further atoms of that element by
their cross vectors to the ones placed, then phases are computed from the
placed atoms alone. It is applicable when the heaviest element has Z ≥
``min_z`` (15, phosphorus) and carries a fraction ``n Z² / Σ n Z²`` (non-H atoms)
of at least ``min_ratio`` (0.1) of the scattering power; otherwise it is
reported as not applicable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

import gemmi

from phasenet.evaluation.maps import PEAK_MATCH_DISTANCE, density_map, find_peaks, min_distances
from phasenet.baselines.recycling import RecyclingOptions, RecyclingResult, recycle
from phasenet.physics.wilson import default_shell_count, normalise_amplitudes, shells_of_equal_count
from phasenet.reflections import d_spacings, friedel_representative, hkl_keys, reciprocal_s2, resolution_mask
from phasenet.structure import AtomicModel, Structure
from phasenet.physics.structure_factors import structure_factors
from phasenet.symmetry import symmetry
from phasenet.baselines.registry import NotApplicable, PhasingMethod


# ---------------------------------------------------------------------------
# the map


@dataclass(frozen=True)
class PattersonOptions:
    sharpen: bool = True  # |E|² coefficients instead of I
    remove_origin: bool = True  # subtract the shell mean (|E|² − 1 with sharpen)
    symmetry: bool = True  # expand the reflections with the Laue group first
    d_min: float | None = None  # resolution cut (Å); None: all reflections given
    grid_step: float | None = None  # Å between grid points; None: d_min / 3
    n_shells: int = 20  # resolution shells for the shell means


@dataclass(frozen=True)
class PattersonMap:
    values: np.ndarray  # (n1, n2, n3) over the unit cell, fractional grid i/n
    cell: tuple  # a b c alpha beta gamma
    symops: tuple[str, ...]  # of the crystal (the map has their Patterson symmetry)
    d_min: float
    options: PattersonOptions = field(default_factory=PattersonOptions)

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)

    def value_at(self, frac: np.ndarray) -> np.ndarray:
        """Trilinear interpolation at fractional positions (k, 3) (periodic)."""
        return _interpolate(self.values, frac)

    def peaks(self, n_peaks: int = 50, unique: bool = True) -> "pd.DataFrame":  # noqa: F821
        """The strongest peaks: x y z (fractional), height, relative height (% of the
        highest non-origin peak), length (Å, shortest lattice-equivalent vector) and
        multiplicity (images under the Patterson symmetry). ``unique`` keeps one
        peak of each symmetry-equivalent set."""
        return patterson_peaks(self, n_peaks=n_peaks, unique=unique)

    def harker_sections(self) -> list[dict]:
        return harker_sections(self.symops)

    def section(self, axis: int | str, value: float) -> np.ndarray:
        """The 2-D slice at fractional coordinate ``value`` along ``axis`` (0/1/2 or 'u'/'v'/'w')."""
        ax = _axis(axis)
        n = self.values.shape[ax]
        pos = (value % 1.0) * n
        lo = int(np.floor(pos)) % n
        frac = pos - np.floor(pos)
        a = np.take(self.values, lo, axis=ax)
        b = np.take(self.values, (lo + 1) % n, axis=ax)
        return (1 - frac) * a + frac * b

    def plot_section(self, path, axis: int | str, value: float, title: str | None = None,
                     peaks: "pd.DataFrame | None" = None):  # noqa: F821
        """Write the slice as a PNG image (fractional axes; cell angles not drawn)."""
        return plot_section(self, path, axis, value, title=title, peaks=peaks)


def _axis(axis) -> int:
    if isinstance(axis, str):
        if axis not in ("u", "v", "w", "x", "y", "z"):
            raise ValueError(f"axis must be 0, 1, 2 or u, v, w; got {axis!r}")
        return "uvw".index(axis) if axis in "uvw" else "xyz".index(axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1, 2 or u, v, w; got {axis!r}")
    return int(axis)


def _interpolate(values: np.ndarray, frac: np.ndarray) -> np.ndarray:
    shape = np.array(values.shape)
    p = (np.atleast_2d(frac) % 1.0) * shape
    i0 = np.floor(p).astype(np.int64)
    f = p - i0
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1 - f[:, 2]
                idx = (i0 + np.array([dx, dy, dz])) % shape
                out += wx * wy * wz * values[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def expand_to_p1(hkl: np.ndarray, values: np.ndarray, symops) -> tuple[np.ndarray, np.ndarray]:
    """Laue-group expansion: every h R (and Friedel mate) once, as one reflection of each
    Friedel pair; equivalent reflections given twice are averaged."""
    ops = symmetry(symops)
    rots = np.unique(ops.rotations, axis=0)
    hkl = np.asarray(hkl, dtype=np.int64)
    eq = np.einsum("ni,mij->mnj", hkl, rots).reshape(-1, 3)
    vals = np.tile(np.asarray(values, dtype=float), len(rots))
    rep, _ = friedel_representative(eq)
    keys = hkl_keys(rep)
    # average over distinct input reflections mapping onto the same index
    src = np.tile(np.arange(len(hkl)), len(rots))
    pair = np.unique(np.stack([keys, src], axis=1), axis=0, return_index=True)[1]
    keys, vals, rep = keys[pair], vals[pair], rep[pair]
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    mean = np.bincount(inverse, weights=vals) / np.bincount(inverse)
    return rep[first], mean


def shell_index(s2: np.ndarray, n_shells: int) -> np.ndarray:
    """Resolution shells of about equal counts (:func:`phasenet.physics.wilson.shells_of_equal_count`,
    at most as many as :func:`~phasenet.physics.wilson.default_shell_count` allows)."""
    return shells_of_equal_count(s2, min(int(n_shells), default_shell_count(len(s2))))


def normalised_intensities(hkl, intensity, cell, symops, n_shells: int = 20) -> np.ndarray:
    """|E|² = I / (ε ⟨I/ε⟩_shell): :func:`phasenet.physics.wilson.normalise_amplitudes` on
    equal-count shells (the one answer-free normalisation; 0 for absences and 000)."""
    hkl = np.asarray(hkl)
    n = min(int(n_shells), default_shell_count(len(hkl)))
    return normalise_amplitudes(hkl, np.asarray(intensity, dtype=float), cell, symops,
                                n_shells=n, intensities=True).e2


def patterson_coefficients(hkl, intensity, cell, symops, options: PattersonOptions):
    """(hkl, C) after resolution cut, symmetry expansion, sharpening and origin removal."""
    hkl = np.asarray(hkl, dtype=np.int64)
    i = np.asarray(intensity, dtype=float)
    if hkl.ndim != 2 or hkl.shape[1] != 3 or len(hkl) != len(i):
        raise ValueError(f"hkl must be (R, 3) and intensity (R,); got {hkl.shape} and {i.shape}")
    keep = np.isfinite(i) & ~(hkl == 0).all(axis=1)
    if options.d_min is not None:
        keep &= resolution_mask(hkl, cell, options.d_min)
    hkl, i = hkl[keep], i[keep]
    if options.symmetry:
        hkl, i = expand_to_p1(hkl, i, symops)
    absent = symmetry(symops).systematic_absences(hkl)
    hkl, i = hkl[~absent], np.maximum(i[~absent], 0.0)
    if len(hkl) < 10:
        raise ValueError(f"only {len(hkl)} reflections left for the Patterson map")
    if options.sharpen:
        c = normalised_intensities(hkl, i, cell, symops, options.n_shells)
    else:
        c = i
    if options.remove_origin:
        shell = shell_index(reciprocal_s2(hkl, cell), options.n_shells)
        c = c - (np.bincount(shell, weights=c) / np.maximum(np.bincount(shell), 1))[shell]
    return hkl, c


def patterson_map(hkl, intensity, cell, symops, options: PattersonOptions | None = None) -> PattersonMap:
    """The Patterson map of intensities on reflections ``hkl`` in a cell with the given symmetry."""
    options = options or PattersonOptions()
    cell = tuple(float(x) for x in cell)
    symops = tuple(symops) if isinstance(symops, (tuple, list)) else symmetry(symops).triplets
    hkl, c = patterson_coefficients(hkl, intensity, cell, symops, options)
    d_min = float(d_spacings(hkl, cell).min())
    step = options.grid_step or d_min / 3.0
    hmax = np.abs(hkl).max(axis=0)
    grid = []
    for k in range(3):
        n = max(2 * int(hmax[k]) + 2, int(np.ceil(cell[k] / step)))
        grid.append(n + n % 2)
    values = density_map(hkl, c, np.zeros(len(c)), cell, grid=tuple(grid))
    scale = np.abs(values).max()
    return PattersonMap(values=values / scale * 100.0 if scale > 0 else values, cell=cell,
                        symops=symops, d_min=d_min, options=options)


def patterson_from_dataset(path, index: int, source: str = "calc",
                           options: PattersonOptions | None = None) -> PattersonMap:
    """Patterson map of structure ``index`` of a dataset: ``source`` 'calc' (intensity_calc),
    'obs' (intensity_obs, measured reflections only) or 'input' (the normalised model input)."""
    from phasenet.io.hdf5 import DatasetReader

    keys = {"calc": "intensity_calc", "obs": "intensity_obs", "input": "intensity"}
    if source not in keys:
        raise ValueError(f"source must be one of {sorted(keys)}, got {source!r}")
    with DatasetReader(path) as ds:
        i = ds.row(keys[source], index).astype(float)
        hkl, cell, ops = ds.hkl, ds.cell(index), ds.symops(index)
    if not np.isfinite(i).any():
        raise ValueError(f"{path}: structure {index} has no {keys[source]} values")
    return patterson_map(hkl, i, cell, list(ops), options)


def patterson_from_cif(path, options: PattersonOptions | None = None, block: str | None = None) -> PattersonMap:
    """Patterson map from the measured reflections of a CIF (embedded or paired .hkl/.fcf)."""
    from phasenet.io.cif import read_cif

    items = [s for s in read_cif(path) if isinstance(s, Structure)]
    if block is not None:
        items = [s for s in items if s.block == block]
    if not items:
        raise ValueError(f"{path}: no structure block{f' {block!r}' if block else ''} could be read")
    s = items[0]
    if s.observations is None:
        raise ValueError(f"{path}: block {s.block!r} has no measured reflections")
    i, _ = s.observations.intensities()
    return patterson_map(s.observations.hkl, i, s.cell, s.symops, options)


# ---------------------------------------------------------------------------
# peaks and Harker sections


def _patterson_images(u: np.ndarray, symops) -> np.ndarray:
    """(m, 3) images of one vector under the Patterson group (rotations, ±, centring)."""
    ops = symmetry(symops)
    centring = ops.translations[(ops.rotations == np.eye(3, dtype=int)).all(axis=(1, 2))]
    rots = np.unique(ops.rotations, axis=0)
    im = np.einsum("mij,j->mi", rots, u)
    im = np.concatenate([im, -im])
    return ((im[:, None, :] + centring[None]).reshape(-1, 3)) % 1.0


def _distinct_count(frac: np.ndarray, cell, tol: float = 0.05) -> int:
    keep = []
    for p in frac:
        if not keep or min_distances(p[None], np.array(keep), cell)[0] > tol:
            keep.append(p)
    return len(keep)


def patterson_peaks(pmap: PattersonMap, n_peaks: int = 50, unique: bool = True):
    import pandas as pd

    pos, height = find_peaks(pmap.values, n_peaks=None if unique else n_peaks)
    origin_free = min_distances(pos, np.zeros((1, 3)), pmap.cell) > 1.0
    top = height[origin_free].max() if origin_free.any() else height.max()
    rows, taken = [], np.zeros(len(pos), dtype=bool)
    for k in range(len(pos)):
        if taken[k]:
            continue
        images = _patterson_images(pos[k], pmap.symops)
        mult = _distinct_count(images, pmap.cell)
        if unique:
            rest = np.flatnonzero(~taken)
            near = min_distances(pos[rest], images, pmap.cell) < max(0.3, pmap.d_min / 3)
            taken[rest[near]] = True
        rows.append(dict(x=pos[k, 0], y=pos[k, 1], z=pos[k, 2], height=height[k],
                         relative_height=100.0 * height[k] / top if top > 0 else np.nan,
                         length=float(min_distances(pos[k][None], np.zeros((1, 3)), pmap.cell)[0]),
                         multiplicity=mult))
        if len(rows) >= n_peaks:
            break
    return pd.DataFrame(rows, columns=["x", "y", "z", "height", "relative_height", "length", "multiplicity"])


def harker_sections(symops) -> list[dict]:
    """Planes (perpendicular to a cell axis) that hold Harker vectors x − (R x + s).

    Each: {'axis': 'u'|'v'|'w', 'value': fractional position, 'operator': xyz triplet}.
    Operators whose Harker vectors fill a plane not perpendicular to an axis, a line
    (mirrors, glides) or all of space (inversion) give no section.
    """
    ops = symmetry(symops)
    out, seen = [], set()
    for r, s in zip(ops.rotations, ops.translations):
        m = np.eye(3) - r
        if np.linalg.matrix_rank(m) != 2:
            continue
        _, _, vt = np.linalg.svd(m.T)
        n = vt[-1]
        ax = int(np.argmax(np.abs(n)))
        if np.sum(np.abs(n) > 1e-8) != 1:
            continue
        value = float((-s[ax]) % 1.0)
        key = (ax, round(value, 6))
        if key in seen:
            continue
        seen.add(key)
        op = gemmi.Op()
        op.rot = [[int(x) * gemmi.Op.DEN for x in row] for row in r]
        op.tran = [int(round(x * gemmi.Op.DEN)) for x in s]
        out.append({"axis": "uvw"[ax], "value": value, "operator": op.triplet()})
    return out


def plot_section(pmap: PattersonMap, path, axis, value, title=None, peaks=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax_i = _axis(axis)
    sec = pmap.section(ax_i, value)
    others = [k for k in range(3) if k != ax_i]
    names = "uvw"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(sec.T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="P (% of max)")
    if peaks is not None and len(peaks):
        p = peaks[["x", "y", "z"]].to_numpy()
        near = np.abs(((p[:, ax_i] - value + 0.5) % 1.0) - 0.5) * pmap.grid[ax_i] < 1.0
        ax.scatter(p[near, others[0]], p[near, others[1]], s=30, facecolors="none", edgecolors="r")
    ax.set_xlabel(names[others[0]])
    ax.set_ylabel(names[others[1]])
    ax.set_title(title or f"Patterson section {names[ax_i]} = {value:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# heavy-atom method


@dataclass(frozen=True)
class HeavyAtomOptions:
    min_z: int = field(default=15, metadata={"help": "the heaviest element must be at least this Z (15: P)"})
    min_ratio: float = field(default=0.1, metadata={
        "help": "n Z² of the heaviest element / Σ n Z² of all non-H atoms of the cell, at least"})
    max_atoms: int = field(default=4, metadata={"help": "heavy atoms placed per asymmetric unit at most"})
    n_candidates: int = field(default=20, metadata={"help": "Harker-search peaks tried for each atom"})
    min_separation: float = field(default=2.0, metadata={"help": "Å between placed heavy atoms (and their images)"})
    special_positions: bool = field(default=True, metadata={
        "help": "Harker vectors in the origin peak left out of the minimum function, sites counted with "
                "their multiplicity and kept on their special positions (False: the method before issue 12)"})
    origin_radius: float = field(default=1.0, metadata={
        "help": "Harker vectors shorter than max(this, d_min/2) Å fall in the origin peak; a site that "
                "close to an image of itself is on a special position"})
    recycling: RecyclingOptions = field(default_factory=RecyclingOptions, metadata={
        "help": "E-Fourier recycling after the heavy atoms (cycles=0: heavy-atom phases as they come)"})
    patterson: PattersonOptions = field(default_factory=lambda: PattersonOptions(sharpen=False))


@dataclass(frozen=True)
class HeavyAtomPlan:
    element: str
    z: int
    n_asu: float  # atoms of that element per asymmetric unit (n_cell / operators; rows without symmetry)
    ratio: float  # its share of Σ n Z² over the non-H atoms of the unit cell
    applicable: bool
    reason: str
    n_cell: float = float("nan")  # atoms of that element in the unit cell (NaN: symmetry not given)
    composition: dict = field(default_factory=dict)  # atoms of each element in the unit cell


def cell_counts(atoms: AtomicModel, symops=None, cell=None) -> np.ndarray:
    """Atoms in the unit cell that each row of ``atoms`` stands for (occupancy × site multiplicity).

    With positions (and ``cell``): from the expansion to the unit cell, so a site on an
    inversion centre of P2₁/c counts 2, not 4. Without positions (the composition a
    phasing method sees, :func:`phasenet.baselines.registry.problem_for`): the occupancy
    there is already per general position, × the number of operators. Without ``symops``:
    the occupancies of the rows (the asymmetric unit as listed).
    """
    occ = np.asarray(atoms.occupancy, dtype=float)
    if symops is None:
        return occ
    n_ops = len(symmetry(symops).rotations)
    frac = np.asarray(atoms.frac, dtype=float)
    if cell is None or not np.isfinite(frac).all() or not len(frac):
        return occ * n_ops
    from phasenet.physics.structure_factors import expand_to_unit_cell

    s = Structure(source="", block="", cell=tuple(cell), symops=symmetry(symops).triplets, space_group="",
                  sg_number=0, atoms=atoms)
    mult = np.bincount(expand_to_unit_cell(s).asu_index, minlength=len(occ))
    return occ * mult


def heavy_atom_plan(atoms: AtomicModel, options: HeavyAtomOptions | None = None, symops=None,
                    cell=None) -> HeavyAtomPlan:
    """Decide from the composition alone whether the heavy-atom method applies.

    With ``symops`` the scattering shares are over the unit cell (site multiplicities,
    :func:`cell_counts`); without, over the rows of the asymmetric unit as listed.
    """
    options = options or HeavyAtomOptions()
    el = np.asarray(atoms.element, dtype=str)
    if not options.special_positions:
        symops = None
    count = cell_counts(atoms, symops, cell)
    non_h = ~np.isin(el, ["H", "D"])
    if not non_h.any():
        return HeavyAtomPlan("", 0, 0.0, 0.0, False, "no non-hydrogen atoms")
    z = np.array([gemmi.Element(e).atomic_number for e in el])
    zmax = int(z[non_h].max())
    heavy = non_h & (z == zmax)
    name = gemmi.Element(zmax).name
    ratio = float((count[heavy] * zmax**2).sum() / (count[non_h] * z[non_h] ** 2).sum())
    n_cell = float(count[heavy].sum()) if symops is not None else float("nan")
    n = n_cell / len(symmetry(symops).rotations) if symops is not None else float(count[heavy].sum())
    comp: dict[str, float] = {}
    for e, c in zip(el, count):
        comp[gemmi.Element(e).name] = comp.get(gemmi.Element(e).name, 0.0) + float(c)
    common = dict(n_cell=n_cell, composition=comp)
    if zmax < options.min_z:
        return HeavyAtomPlan(name, zmax, n, ratio, False,
                             f"no heavy atom: heaviest element {name} (Z={zmax}) < Z {options.min_z}", **common)
    if ratio < options.min_ratio:
        return HeavyAtomPlan(name, zmax, n, ratio, False,
                             f"{name} carries {ratio:.2f} of Σ Z² (< {options.min_ratio})", **common)
    return HeavyAtomPlan(name, zmax, n, ratio, True, "", **common)


def _harker_ops(symops):
    ops = symmetry(symops)
    keep = ~(ops.rotations == np.eye(3, dtype=int)).all(axis=(1, 2))
    return ops.rotations[keep].astype(float), ops.translations[keep]


def _orth(cell) -> np.ndarray:
    return np.array(gemmi.UnitCell(*[float(x) for x in cell[:6]]).orth.mat.tolist())


def origin_radius(pmap: PattersonMap, options: HeavyAtomOptions | None = None) -> float:
    """Å: Harker vectors shorter than this fall in the origin peak (max(origin_radius, d_min/2))."""
    options = options or HeavyAtomOptions()
    return max(options.origin_radius, 0.5 * pmap.d_min)


def harker_search_map(pmap: PattersonMap, grid: tuple[int, int, int] | None = None,
                      exclude_origin: float | None = None) -> np.ndarray:
    """Symmetry minimum function S(x) = min over operators of P(x − R x − s) on a grid of x.

    ``exclude_origin`` (Å): Harker vectors shorter than this are left out of the minimum.
    A site on a 2-fold axis or an inversion centre has such a vector (or one equal to a
    centring vector, where the Patterson repeats its origin peak) for the operators that
    fix it; in the origin-removed map P is ~0 there, which would cap S at 0 and
    hide the site. Where every vector is left out (a site fixed by the whole group, e.g.
    an inversion centre of P-1) the Patterson says nothing: S is the map's highest value
    elsewhere, and the composition and the intensities decide (:func:`locate_heavy_atoms`).
    ``None``: the plain minimum over all vectors (the method before issue 12).
    """
    rots, trans = _harker_ops(pmap.symops)
    if not len(rots):
        raise NotApplicable("P1: no Harker vectors (a single atom can sit anywhere)")
    if grid is None:  # Harker vectors 2x etc. sample P twice as coarsely: use a finer grid
        f = 2 if np.prod(pmap.grid) * 8 <= 600_000 else 1
        grid = tuple(f * n for n in pmap.grid)
    g = [np.arange(n) / n for n in grid]
    x = np.stack(np.meshgrid(*g, indexing="ij"), axis=-1).reshape(-1, 3)
    s = np.full(len(x), np.inf)
    orth = _orth(pmap.cell)
    centring = symmetry(pmap.symops).centring  # the Patterson repeats its origin peak at these
    for r, t in zip(rots, trans):
        v = x - x @ r.T - t
        p = pmap.value_at(v)
        if exclude_origin is not None:
            for c in centring:
                w = v - c
                w -= np.round(w)
                p = np.where(np.linalg.norm(w @ orth.T, axis=1) < exclude_origin, np.inf, p)
        s = np.minimum(s, p)
    finite = np.isfinite(s)
    if not finite.all():
        s[~finite] = s[finite].max() if finite.any() else float(pmap.values.max())
    return s.reshape(grid)


@dataclass(frozen=True)
class SiteSymmetry:
    frac: np.ndarray  # (3,) on the special position (the mean of the images that coincide)
    multiplicity: int  # atoms in the unit cell
    projector: tuple  # (A (3, 3), b (3,)): y -> A y + b keeps a position on this site's special position


def site_symmetry(x: np.ndarray, symops, cell, tol: float) -> SiteSymmetry:
    """The images of ``x`` within ``tol`` Å of it make its site symmetry: the position is
    moved onto the special position (their mean) and its multiplicity is the number of
    operators over the number that fix it."""
    ops = symmetry(symops)
    x = np.asarray(x, dtype=float) % 1.0
    rots = ops.rotations.astype(float)
    im = np.einsum("mij,j->mi", rots, x) + ops.translations
    shift = np.round(x[None] - im)  # lattice vector bringing each image next to x
    d = np.linalg.norm((im + shift - x[None]) @ _orth(cell).T, axis=1)
    fix = d < tol
    a = rots[fix].mean(axis=0)
    b = (ops.translations[fix] + shift[fix]).mean(axis=0)
    return SiteSymmetry(frac=(a @ x + b) % 1.0, multiplicity=int(round(len(rots) / fix.sum())), projector=(a, b))


@dataclass(frozen=True)
class HeavyAtomSolution:
    element: str
    frac: np.ndarray  # (k, 3) placed atoms (asymmetric unit)
    scores: np.ndarray  # (k,) Patterson support of each
    plan: HeavyAtomPlan
    multiplicity: np.ndarray | None = None  # (k,) atoms in the unit cell of each site
    recycling: RecyclingResult | None = None  # the expansion, where it ran


def _sym_images(x: np.ndarray, symops) -> np.ndarray:
    ops = symmetry(symops)
    return (np.einsum("mij,j->mi", ops.rotations, x) + ops.translations) % 1.0


def _point_f(hkl: np.ndarray, xs: np.ndarray, symops) -> np.ndarray:
    """G(h) = Σ over atoms xs (k, 3) and operators of exp(2πi h·(R x + s)): equal point atoms."""
    ops = symmetry(symops)
    pos = (np.einsum("mij,kj->kmi", ops.rotations, xs) + ops.translations[None]).reshape(-1, 3)
    return np.exp(2j * np.pi * (hkl @ pos.T)).sum(axis=1)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else -1.0


def _distinct_modulo_origin(cand, score, symops, cell, n_max, tol=0.5):
    """Keep candidates not equivalent (symmetry, permissible origin shift, inversion) to a stronger one."""
    ops = symmetry(symops)
    shifts = ops.origin_shifts()
    if len(shifts) > 64:  # polar directions: any shift along them is allowed anyway
        return cand[:n_max], score[:n_max]
    signs = (1.0,) if ops.is_centrosymmetric else (1.0, -1.0)
    kept, kept_images = [], []
    for i, c in enumerate(cand):
        if kept_images and min_distances(c[None], np.concatenate(kept_images), cell)[0] < tol:
            continue
        kept.append(i)
        img = _sym_images(c, symops)
        kept_images.append(np.concatenate([(sg * img[:, None, :] + shifts[None]).reshape(-1, 3) % 1.0
                                           for sg in signs]))
        if len(kept) >= n_max:
            break
    kept = np.array(kept, dtype=np.int64)
    return cand[kept], score[kept]


def locate_heavy_atoms(pmap: PattersonMap, element: str, n_atoms: int, hkl=None, e2=None,
                       options: HeavyAtomOptions | None = None, n_cell: float | None = None) -> HeavyAtomSolution:
    """Place up to ``n_atoms`` atoms from the Patterson map.

    Candidates for the first atom are the peaks of the Harker search (symmetry
    minimum function); for each further atom, candidates are Harker-search peaks at
    every permissible origin shift (and inversion, for non-centrosymmetric groups)
    with their cross vectors to the atoms placed. Among the candidates with the best
    Patterson support, the one whose point-atom |G(h)|² correlates best with the
    observed |E(h)|² (``hkl``, ``e2``) is taken; without ``e2`` the Patterson support
    alone decides.

    With ``options.special_positions`` (the default) Harker vectors in the origin peak
    are left out of the minimum function (:func:`harker_search_map`), a candidate within
    :func:`origin_radius` of an image of itself is moved onto its special position (and
    refined only along it), and with ``n_cell`` (atoms of the element in the unit cell,
    from the composition) a site is taken only if its multiplicity fits in what is left:
    one Pt in a P-1 cell can only sit on an inversion centre. Placing stops when the
    sites hold ``n_cell`` atoms.
    """
    options = options or HeavyAtomOptions()
    symops = pmap.symops
    ops = symmetry(symops)
    rots, trans = ops.rotations.astype(float), ops.translations
    use_cc = hkl is not None and e2 is not None
    if use_cc:
        hkl = np.asarray(hkl, dtype=float)
        e2 = np.asarray(e2, dtype=float)
    special = options.special_positions
    radius = origin_radius(pmap, options)
    n_left = [float(n_cell) if (special and n_cell is not None and np.isfinite(n_cell)) else np.inf]

    def site(x):
        return site_symmetry(x, symops, pmap.cell, radius) if special else None

    def fits(x) -> bool:
        return not special or site(x).multiplicity <= n_left[0] + 0.25

    def snap(x):
        return site(x).frac if special else x % 1.0

    def refine(xs):
        """Move the last atom of a set to the nearby maximum of the |G|²–|E|² correlation
        (along its special position, if it is on one)."""
        from scipy.optimize import minimize

        fixed = xs[:-1]
        step = 0.15 / np.array(pmap.cell[:3])
        a, b = site(xs[-1]).projector if special else (np.eye(3), np.zeros(3))

        def neg(x):
            return -_cc(np.abs(_point_f(hkl, np.vstack([fixed, (a @ x + b)[None]]), symops)) ** 2, e2)

        x0 = xs[-1]
        res = minimize(neg, x0, method="Nelder-Mead",
                       options=dict(initial_simplex=np.vstack([x0, x0 + np.diag(step)]),
                                    xatol=1e-4, fatol=1e-5, maxiter=150))
        return np.vstack([fixed, ((a @ res.x + b) % 1.0)[None]]), -float(res.fun)

    def pick(sets, support):
        """Best of candidate atom sets (list of (k,3) arrays): (index, refined set)."""
        order = np.argsort(-np.asarray(support), kind="stable")[: options.n_candidates]
        if not use_cc:
            return int(order[0]), sets[int(order[0])]
        best = None
        for i in order:
            xs, cc = refine(sets[i])
            if best is None or cc > best[0]:
                best = (cc, int(i), xs)
        return best[1], best[2]

    def placed_count(x):
        return site(x).multiplicity if special else len(rots)

    p1 = len(_harker_ops(symops)[0]) == 0
    if p1:
        peaks = pmap.peaks(n_peaks=options.n_candidates + 1)
        cand = peaks[peaks.length > 1.0][["x", "y", "z"]].to_numpy()
        cand_score = pmap.value_at(cand) if len(cand) else np.zeros(0)
        placed, scores = [np.zeros(3)], [float(pmap.values.max())]
        variants = np.zeros((1, 3))
        signs = (1.0, -1.0)
    else:
        smf = harker_search_map(pmap, exclude_origin=radius if special else None)
        cand, cand_score = find_peaks(smf, n_peaks=20 * options.n_candidates)
        if special:
            cand = np.array([snap(c) for c in cand]).reshape(-1, 3)
            ok = np.array([fits(c) for c in cand], dtype=bool)
            if ok.any():  # the composition's cell count rules out sites of higher multiplicity
                cand, cand_score = cand[ok], cand_score[ok]
        cand, cand_score = _distinct_modulo_origin(cand, cand_score, symops, pmap.cell, options.n_candidates)
        k, xs = pick([c[None] for c in cand], cand_score)
        placed, scores = [xs[-1]], [float(cand_score[k])]
        variants = ops.origin_shifts()
        signs = (1.0,) if ops.is_centrosymmetric else (1.0, -1.0)
        if len(variants) > 512:
            variants = variants[:: len(variants) // 512 + 1]
    n_left[0] -= placed_count(placed[0])
    while len(placed) < n_atoms and len(cand) and n_left[0] > 0.5:
        options_x, options_s = [], []
        for c, cs in zip(cand, cand_score):
            if not fits(c):
                continue
            for sgn in signs:
                xs = (sgn * c[None, :] + variants) % 1.0  # (V, 3)
                ok = np.ones(len(xs), dtype=bool)
                cross = np.full(len(xs), np.inf)
                for x0 in placed:
                    ok &= min_distances(xs, _sym_images(x0, symops), pmap.cell) >= options.min_separation
                    for r, t in zip(rots, trans):  # cross vectors x0 − (R x + s)
                        cross = np.minimum(cross, pmap.value_at(x0[None, :] - (xs @ r.T + t)))
                total = np.minimum(cross, cs)
                total[~ok] = -np.inf
                k = int(np.argmax(total))
                options_x.append(xs[k])
                options_s.append(float(total[k]))
        options_s = np.array(options_s)
        if not len(options_s) or not (options_s > 0).any():
            break
        good = np.flatnonzero(options_s > 0)
        k, xs = pick([np.array(placed + [options_x[i]]) for i in good], options_s[good])
        placed.append(xs[-1])
        scores.append(float(options_s[good[k]]))
        n_left[0] -= placed_count(xs[-1])
    frac = np.array(placed) % 1.0
    mult = np.array([placed_count(x) for x in frac])
    return HeavyAtomSolution(element, frac, np.array(scores), plan=None, multiplicity=mult)  # type: ignore[arg-type]


def heavy_atom_phases(hkl, amplitude, cell, symops, atoms: AtomicModel,
                      options: HeavyAtomOptions | None = None) -> tuple[np.ndarray, HeavyAtomSolution]:
    """Phases (R,) from heavy atoms located in the Patterson map of |F|² on ``hkl``, then
    expanded by E-Fourier recycling (``options.recycling``, :mod:`phasenet.baselines.recycling`).

    ``atoms`` supplies only the composition (elements and occupancies, and the site
    multiplicities where positions are given: :func:`cell_counts`), never positions.
    Raises :class:`NotApplicable` where the structure has no suitable heavy atom.
    """
    options = options or HeavyAtomOptions()
    plan = heavy_atom_plan(atoms, options, symops=symops, cell=cell)
    if not plan.applicable:
        raise NotApplicable(plan.reason)
    amplitude = np.asarray(amplitude, dtype=float)
    pmap = patterson_map(hkl, amplitude**2, cell, symops, options.patterson)
    n = max(1, min(options.max_atoms, int(np.ceil(plan.n_asu - 1e-6))))
    hkl_p, e2 = patterson_coefficients(hkl, amplitude**2, cell, symops,
                                       replace(options.patterson, sharpen=True, remove_origin=False))
    n_cell = max(1.0, round(plan.n_cell)) if np.isfinite(plan.n_cell) else None
    sol = locate_heavy_atoms(pmap, plan.element, n, hkl=hkl_p, e2=e2, options=options, n_cell=n_cell)
    sol = replace(sol, plan=plan)
    k = len(sol.frac)
    model = AtomicModel(label=np.array([f"{plan.element}{i + 1}" for i in range(k)]),
                        element=np.array([plan.element] * k), charge=np.zeros(k, np.int8),
                        frac=sol.frac, occupancy=np.ones(k), u_iso=np.full(k, 0.03),
                        u_aniso=np.full((k, 6), np.nan), u_defaulted=np.zeros(k, bool))
    s = Structure(source="heavy-atom model", block="", cell=tuple(cell), symops=symmetry(symops).triplets,
                  space_group="", sg_number=0, atoms=model)
    f = structure_factors(s, np.asarray(hkl), dtype=np.float64)
    phases = np.angle(f)
    if options.recycling.cycles > 0:
        comp = plan.composition if plan.composition and np.isfinite(plan.n_cell) else \
            _composition_from_rows(atoms, len(symmetry(symops).rotations))
        rec = recycle(hkl, amplitude, cell, symops, comp, plan.element, sol.frac, options.recycling)
        phases = rec.phases
        sol = replace(sol, recycling=rec)
    return phases, sol


def _composition_from_rows(atoms: AtomicModel, n_ops: int) -> dict:
    out: dict[str, float] = {}
    for e, o in zip(np.asarray(atoms.element, dtype=str), np.asarray(atoms.occupancy, dtype=float)):
        name = gemmi.Element(e).name
        out[name] = out.get(name, 0.0) + o * n_ops
    return out


def heavy_atoms_found(found: np.ndarray, true: np.ndarray, cell, symops,
                      distance: float = PEAK_MATCH_DISTANCE) -> float:
    """Fraction of the true sites (asymmetric unit) within ``distance`` Å of a placed atom,
    at the best permissible origin (:func:`match_heavy_atoms`)."""
    true = np.atleast_2d(true)
    if not len(true) or not len(np.atleast_2d(found)):
        return 0.0 if len(true) else float("nan")
    return float((match_heavy_atoms(found, true, cell, symops, distance=distance) < distance).mean())


def match_heavy_atoms(found: np.ndarray, true: np.ndarray, cell, symops, distance: float = 1.0) -> np.ndarray:
    """Distance (Å) from each true position to the nearest found atom, at the best common
    permissible origin shift (and enantiomorph for non-centrosymmetric groups)."""
    found = np.atleast_2d(found)
    true = np.atleast_2d(true)
    ops = symmetry(symops)
    images = np.concatenate([_sym_images(x, symops) for x in found])
    shifts = ops.origin_shifts()
    if len(ops.continuous_origin_directions()):
        shifts = ops.origin_shifts(n=48)
    best = None
    for sgn in ((1.0,) if ops.is_centrosymmetric else (1.0, -1.0)):
        for t in shifts:
            d = min_distances(true, (sgn * images + t) % 1.0, cell)
            key = ((d <= distance).sum(), -d.sum())
            if best is None or key > best[0]:
                best = (key, d)
    return best[1]


# ---------------------------------------------------------------------------
# the method in the registry


class HeavyAtomMethod(PhasingMethod):
    """``patterson`` in the evaluation: :func:`heavy_atom_phases` with ``EvaluateOptions.heavy_atom``."""

    name = "patterson"
    needs = frozenset({"atoms"})  # the composition only (elements, occupancies), never the positions

    def check(self, problem, options):
        plan = heavy_atom_plan(problem.atoms, options.heavy_atom, symops=problem.symops, cell=problem.cell)
        if not plan.applicable:
            raise NotApplicable(plan.reason)

    def phases(self, problem, seed, options):
        phases, sol = heavy_atom_phases(problem.hkl, problem.amplitude, problem.cell, problem.symops,
                                        problem.atoms, options.heavy_atom)
        note = f"{len(sol.frac)} {sol.element} placed (Σ Z² share {sol.plan.ratio:.2f})"
        if sol.recycling is not None:
            r = sol.recycling
            note += f"; recycling: {len(r.frac) - len(sol.frac)} atoms added, best cycle {r.best_cycle}"
        return phases, note, {"element": sol.element, "frac": sol.frac}

    def score_details(self, problem, details):
        """``heavy_found``: the fraction of the true sites of the heavy element within 0.5 Å of a
        placed one (best permissible origin)."""
        el = np.array([gemmi.Element(e).name for e in np.asarray(problem.atoms.element, dtype=str)])
        true = problem.atoms.frac[el == details["element"]]
        return {"heavy_found": heavy_atoms_found(details["frac"], true, problem.cell, problem.symops)}
