"""The files a phasing solution is written to: MTZ, CCP4 map, peak table, SHELX .res.

Pure functions of plain arrays, so that ``phasenet solve`` (and anything else) can call
them: ``hkl`` (R, 3) one reflection of each Friedel pair, as phasenet's reflection lists
hold them (:func:`phasenet.reflections.sphere_hkl`), ``cell`` the six cell parameters,
``sym`` anything :func:`phasenet.symmetry.symmetry` accepts.

- :func:`write_mtz`: H K L, ``F`` (F), ``PHI`` (P, degrees), ``FOM`` (W) and ``E`` (F)
  when given; cell and space group set.
- :func:`write_ccp4_map`: the density over the whole unit cell (e/Å³, F000 left out),
  computed with :func:`phasenet.evaluation.maps.density_map` (numpy FFT of the listed
  reflections and their Friedel mates, no symmetry expansion: the list must cover the
  whole sphere, not only an asymmetric unit).
- :func:`peak_table`: the strongest symmetry-independent peaks of that map (fractional and
  Cartesian coordinates, height in σ of the map, a plausible element, the distance to the
  nearest other peak), :func:`write_peaks_csv` writes it.
- :func:`write_res`: the peaks as a SHELX .res file (TITL CELL ZERR LATT SYMM SFAC UNIT,
  atoms, HKLF 4, END).

Every writer writes to a temporary file next to ``path`` and renames it into place, so a
file at ``path`` is always complete; on any failure neither ``path`` nor the temporary
file is left behind. Bad arguments raise :class:`ValueError` naming the argument.
gemmi is used only here, at the edge.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from phasenet.evaluation.maps import density_map, find_peaks, grid_size, min_distances
from phasenet.reflections import d_spacings
from phasenet.symmetry import DEN, Symmetry, symmetry

import gemmi

#: Peaks closer than this (Å) to a symmetry image of a stronger peak are that peak's copy.
PEAK_MERGE_DISTANCE = 0.5
#: Without a composition and ``n_peaks``, peaks above this height (σ) are listed ...
DEFAULT_MIN_SIGMA = 3.0
#: ... at most this many.
DEFAULT_MAX_PEAKS = 200
#: SHELX lattice types (LATT's absolute value) by centring vectors (in 1/DEN units).
_H, _T = DEN // 2, DEN // 3
_LATT = {
    frozenset(): 1,
    frozenset({(_H, _H, _H)}): 2,
    frozenset({(2 * _T, _T, _T), (_T, 2 * _T, 2 * _T)}): 3,  # R, obverse, hexagonal axes
    frozenset({(0, _H, _H), (_H, 0, _H), (_H, _H, 0)}): 4,
    frozenset({(0, _H, _H)}): 5,
    frozenset({(_H, 0, _H)}): 6,
    frozenset({(_H, _H, 0)}): 7,
}
PEAK_COLUMNS = ["x", "y", "z", "x_cart", "y_cart", "z_cart", "height", "element", "nearest"]


# -- argument checks and atomic writing


def _reflections(hkl, **columns) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    hkl = np.asarray(hkl)
    if hkl.ndim != 2 or hkl.shape[1] != 3 or len(hkl) == 0:
        raise ValueError(f"hkl: expected a non-empty (R, 3) array, got shape {hkl.shape}")
    if not np.issubdtype(hkl.dtype, np.integer):
        if not np.all(np.isfinite(hkl)) or np.any(hkl != np.round(hkl)):
            raise ValueError("hkl: indices must be integers")
    hkl = hkl.astype(np.int64)
    out = {}
    for name, value in columns.items():
        if value is None:
            out[name] = None
            continue
        v = np.asarray(value, dtype=float)
        if v.shape != (len(hkl),):
            raise ValueError(f"{name}: expected {len(hkl)} values (one per row of hkl), "
                             f"got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name}: {int((~np.isfinite(v)).sum())} values are not finite")
        out[name] = v
    return hkl, out


def _cell(cell) -> tuple[float, ...]:
    try:
        c = tuple(float(x) for x in cell)
    except (TypeError, ValueError):
        raise ValueError(f"cell: expected six numbers, got {cell!r}") from None
    if len(c) != 6 or min(c) <= 0 or not all(np.isfinite(c)):
        raise ValueError(f"cell: expected six positive numbers (a b c α β γ), got {cell!r}")
    return c


def _symmetry(sym) -> Symmetry:
    try:
        return symmetry(sym)
    except Exception as exc:  # noqa: BLE001 (any unreadable description)
        raise ValueError(f"sym: not a space group: {sym!r} ({exc})") from None


def _target(path) -> Path:
    path = Path(path)
    if not path.name or path.is_dir():
        raise ValueError(f"path: {path} is a folder, not a file name")
    if not path.parent.is_dir():
        raise ValueError(f"path: {path}: the folder {path.parent} does not exist")
    return path


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary path)`` next to ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _gemmi_space_group(sym: Symmetry) -> gemmi.SpaceGroup:
    sg = sym.space_group
    if sg is None:
        raise ValueError(f"sym: {sym.triplets} is a setting gemmi does not tabulate; "
                         "MTZ and CCP4 files need a tabulated space group")
    return sg


# -- MTZ


def write_mtz(path, hkl, cell, sym, amplitude, phase_deg, fom=None, e=None) -> Path:
    """Write H K L, F, PHI (degrees) and, when given, FOM and E to an MTZ file."""
    path = _target(path)
    hkl, cols = _reflections(hkl, amplitude=amplitude, phase_deg=phase_deg, fom=fom, e=e)
    cell = _cell(cell)
    sg = _gemmi_space_group(_symmetry(sym))
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = sg
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    mtz.add_dataset("phasenet")
    columns = [("F", "F", cols["amplitude"]), ("PHI", "P", cols["phase_deg"]),
               ("FOM", "W", cols["fom"]), ("E", "F", cols["e"])]
    data = [hkl.astype(np.float32)]
    for label, kind, values in columns:
        if values is not None:
            mtz.add_column(label, kind)
            data.append(values.astype(np.float32)[:, None])
    mtz.set_data(np.hstack(data))
    mtz.update_reso()
    return _atomic_write(path, mtz.write_to_file)


# -- density


def _density(hkl, amplitude, phase_rad, cell, d_min) -> np.ndarray:
    """ρ (e/Å³, F000 left out) on a grid over the unit cell."""
    if d_min is None:
        d_min = float(d_spacings(hkl, cell).min())
    grid = grid_size(cell, np.abs(hkl).max(axis=0), d_min)
    volume = gemmi.UnitCell(*cell).volume
    return density_map(hkl, amplitude, phase_rad, cell, grid=grid) * (np.prod(grid) / volume)


def write_ccp4_map(path, hkl, amplitude, phase_rad, cell, sym, d_min=None) -> Path:
    """Write the density over the whole unit cell (e/Å³, F000 left out) as a CCP4 map.

    The grid has steps of at most d_min/4 (``d_min`` defaults to the list's highest
    resolution); the reflections must cover the whole sphere (one of each Friedel pair).
    """
    path = _target(path)
    hkl, cols = _reflections(hkl, amplitude=amplitude, phase_rad=phase_rad)
    cell = _cell(cell)
    sg = _gemmi_space_group(_symmetry(sym))
    rho = _density(hkl, cols["amplitude"], cols["phase_rad"], cell, d_min)
    ccp4 = gemmi.Ccp4Map()
    ccp4.grid = gemmi.FloatGrid(np.ascontiguousarray(rho, dtype=np.float32),
                                gemmi.UnitCell(*cell), sg)
    ccp4.setup(float("nan"))
    ccp4.update_ccp4_header()
    return _atomic_write(path, ccp4.write_ccp4_map)


# -- peaks


def parse_composition(composition) -> dict[str, float]:
    """{element: count} from a dict or a formula such as ``"C18 H19 N O4"``."""
    if isinstance(composition, str):
        out: dict[str, float] = {}
        for el, n in re.findall(r"([A-Z][a-z]?)\s*(\d*\.?\d*)", composition):
            out[el] = out.get(el, 0.0) + (float(n) if n else 1.0)
        composition = out
    try:
        items = {str(k).strip().capitalize(): float(v) for k, v in dict(composition).items()}
    except (TypeError, ValueError):
        raise ValueError(f"composition: expected {{element: count}} or a formula, "
                         f"got {composition!r}") from None
    for el, n in items.items():
        if gemmi.Element(el).atomic_number == 0 or n < 0:
            raise ValueError(f"composition: bad element or count {el!r}: {n}")
    return items


def _elements_by_rank(composition, n: int) -> list[str]:
    """Element of each of ``n`` peaks, strongest first: the heaviest non-H elements of
    the composition to the highest peaks; the lightest for any peaks beyond it; C without one."""
    if composition is None:
        return ["C"] * n
    comp = {el: c for el, c in parse_composition(composition).items() if el not in ("H", "D")}
    order = sorted(comp, key=lambda el: -gemmi.Element(el).atomic_number)
    out = []
    for el in order:
        out += [el] * int(round(comp[el]))
    if not out:
        return ["C"] * n
    return (out + [out[-1]] * n)[:n]


def _images(frac: np.ndarray, sym: Symmetry) -> np.ndarray:
    """(n, n_ops, 3) images of fractional positions under every operator."""
    return np.einsum("oij,nj->noi", sym.rotations, frac) + sym.translations[None]


def peak_table(hkl, amplitude, phase_rad, cell, sym, composition=None, n_peaks=None,
               d_min=None):
    """The strongest symmetry-independent peaks of the density map as a DataFrame.

    Columns: fractional ``x y z``, Cartesian ``x_cart y_cart z_cart`` (Å, gemmi's
    orthogonalisation), ``height`` (ρ/σ(ρ)), ``element`` (the heaviest non-H elements of
    ``composition`` (per asymmetric unit: a dict or a formula) to the highest peaks, "C"
    without one) and ``nearest`` (Å to the nearest other peak, symmetry and lattice
    images included). ``n_peaks`` defaults to the composition's non-H atom count, else
    every peak above ``DEFAULT_MIN_SIGMA`` σ (at most ``DEFAULT_MAX_PEAKS``). A peak within
    ``PEAK_MERGE_DISTANCE`` of a symmetry image of a stronger one is a copy of it.
    """
    import pandas as pd

    hkl, cols = _reflections(hkl, amplitude=amplitude, phase_rad=phase_rad)
    cell = _cell(cell)
    sym = _symmetry(sym)
    if n_peaks is not None and (int(n_peaks) != n_peaks or n_peaks < 0):
        raise ValueError(f"n_peaks: expected a count >= 0, got {n_peaks!r}")
    want = n_peaks
    if want is None and composition is not None:
        want = sum(int(round(c)) for el, c in parse_composition(composition).items()
                   if el not in ("H", "D")) or None
    rho = _density(hkl, cols["amplitude"], cols["phase_rad"], cell, d_min)
    sigma = float(rho.std()) or 1.0
    floor = DEFAULT_MIN_SIGMA if want is None else 0.0
    limit = DEFAULT_MAX_PEAKS if want is None else int(want)
    pos, height = find_peaks(rho / sigma, min_height=floor)
    kept: list[int] = []
    kept_images = np.empty((0, 3))
    for i in range(len(pos)):
        if len(kept) >= limit:
            break
        if len(kept_images) and min_distances(pos[i:i + 1], kept_images, cell)[0] < PEAK_MERGE_DISTANCE:
            continue
        kept.append(i)
        kept_images = np.vstack([kept_images, _images(pos[i:i + 1], sym)[0] % 1.0])
    frac, height = pos[kept], height[kept]
    orth = np.array(gemmi.UnitCell(*cell).orth.mat.tolist())
    imgs = _images(frac, sym) % 1.0  # (n, ops, 3)
    nearest = np.full(len(frac), np.inf)
    for i in range(len(frac)):
        others = np.delete(imgs, i, axis=0).reshape(-1, 3)
        d = min_distances(frac[i:i + 1], others, cell)[0] if len(others) else np.inf
        own = min_distances(imgs[i, 1:], frac[i:i + 1], cell) if len(sym) > 1 else np.empty(0)
        own = own[own > 0.1]  # a peak on a special position is not its own neighbour
        nearest[i] = min(d, own.min() if len(own) else np.inf)
    cart = frac @ orth.T
    return pd.DataFrame({"x": frac[:, 0], "y": frac[:, 1], "z": frac[:, 2],
                         "x_cart": cart[:, 0], "y_cart": cart[:, 1], "z_cart": cart[:, 2],
                         "height": height, "element": _elements_by_rank(composition, len(frac)),
                         "nearest": nearest}, columns=PEAK_COLUMNS)


def _check_table(table) -> None:
    missing = [c for c in ("x", "y", "z", "element") if c not in getattr(table, "columns", ())]
    if missing:
        raise ValueError(f"table: not a peak table (missing columns {missing})")


def write_peaks_csv(path, table) -> Path:
    """Write a :func:`peak_table` as CSV."""
    path = _target(path)
    _check_table(table)
    return _atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


# -- SHELX .res


def _fraction(x: float) -> str:
    return f"{x:.5f}".rstrip("0").rstrip(".")


def _shelx_op(rot: np.ndarray, tran_den: np.ndarray) -> str:
    """e.g. ``0.5-X, 0.5+Y, 0.5-Z``."""
    parts = []
    for row, t in zip(rot, tran_den):
        s = _fraction(t / DEN) if t else ""
        for coef, axis in zip(row, "XYZ"):
            if coef:
                s += ("+" if coef > 0 and s else "-" if coef < 0 else "") + \
                     (str(abs(coef)) if abs(coef) != 1 else "") + axis
        parts.append(s)
    return ", ".join(parts)


def shelx_symmetry(sym) -> tuple[int, list[str]]:
    """(LATT number, SYMM operators) in SHELX's convention.

    LATT's absolute value is the lattice type (1 P, 2 I, 3 R obverse on hexagonal axes,
    4 F, 5 A, 6 B, 7 C), positive for a group with an inversion centre at the origin
    (SHELX then generates the inverted operators), negative otherwise. The SYMM
    operators are those that remain besides the identity, the centring translations and,
    when LATT > 0, the inversion; a centre away from the origin is written with LATT < 0
    and every operator. Other centrings (e.g. R reverse) raise ValueError.
    """
    sym = _symmetry(sym)
    centring = frozenset(tuple(int(v) for v in c) for c in sym.centring_den if c.any())
    if centring not in _LATT:
        raise ValueError(f"sym: centring {sorted(centring)} (1/{DEN}) has no SHELX LATT type")
    latt = _LATT[centring]
    positive = sym.has_origin_inversion
    best: dict[bytes, np.ndarray] = {}
    for rot, t in zip(sym.rotations, sym.translations_den):
        if positive and round(np.linalg.det(rot)) < 0:
            continue
        key = rot.tobytes()
        if key not in best or tuple(t) < tuple(best[key]):  # the smallest of the coset
            best[key] = t
    ops = []
    for rot, t in zip(sym.rotations, sym.translations_den):
        key = rot.tobytes()
        if key in best and (best[key] == t).all():
            if not ((rot == np.eye(3, dtype=rot.dtype)).all() and not t.any()):
                ops.append(_shelx_op(rot, t))
            del best[key]
    return (latt if positive else -latt), ops


def write_res(path, table, cell, sym, title="phasenet solution", wavelength=0.71073) -> Path:
    """Write the peaks of ``table`` (a :func:`peak_table`) as atoms of a SHELX .res file.

    Atoms are named element + running number (at most 4 characters: 999 C, 99 Cl; more
    raise ValueError), fixed occupancy (11.0) and U = 0.05 Å²;
    UNIT counts each element's peaks times the operators of the group.
    """
    path = _target(path)
    _check_table(table)
    cell = _cell(cell)
    sym = _symmetry(sym)
    if not (float(wavelength) > 0):
        raise ValueError(f"wavelength: expected a positive number, got {wavelength!r}")
    latt, symm = shelx_symmetry(sym)
    elements = [str(e).capitalize() for e in table["element"]]
    for el in elements:
        if gemmi.Element(el).atomic_number == 0:
            raise ValueError(f"table: unknown element {el!r}")
    sfac = sorted(set(elements), key=lambda el: (el != "C", el != "H", el))
    lines = [f"TITL {' '.join(str(title).split())}",
             "CELL {:.5f} {:.4f} {:.4f} {:.4f} {:.3f} {:.3f} {:.3f}".format(float(wavelength), *cell),
             f"ZERR {len(sym)} 0.0000 0.0000 0.0000 0.000 0.000 0.000",
             f"LATT {latt}"]
    lines += [f"SYMM {op}" for op in symm]
    if sfac:
        lines.append("SFAC " + " ".join(sfac))
        lines.append("UNIT " + " ".join(str(elements.count(el) * len(sym)) for el in sfac))
    counter: dict[str, int] = {}
    for el, x, y, z in zip(elements, table["x"], table["y"], table["z"]):
        counter[el] = counter.get(el, 0) + 1
        name = f"{el}{counter[el]}"
        if len(name) > 4:  # SHELX names have at most 4 characters
            raise ValueError(f"table: more {el} atoms than SHELX's 4-character names can "
                             f"number ({counter[el]})")
        lines.append(f"{name:<5s} {sfac.index(el) + 1} {float(x):.5f} {float(y):.5f} "
                     f"{float(z):.5f} 11.00000 0.05000")
    lines += ["HKLF 4", "END"]
    text = "\n".join(lines) + "\n"
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
