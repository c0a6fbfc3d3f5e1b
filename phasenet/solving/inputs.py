"""Read what ``phasenet solve`` is given into one :class:`MeasuredData`.

- a **CIF** with measured data: an embedded ``_shelx_hkl_file``, a ``_refln_`` loop, or a
  paired ``stem.hkl`` / ``stem.fcf`` beside it, exactly as ``phasenet build`` reads them
  (:func:`phasenet.io.cif.read_cif`); cell and symmetry from the CIF; the composition
  from ``_chemical_formula_sum`` × ``_cell_formula_units_Z`` (else the atoms listed, if
  any: counts only, never positions);
- a **SHELX .hkl** (HKLF 4 intensities or HKLF 3 amplitudes) with ``cell``,
  ``space_group`` and ``composition`` given, or a ``.ins``/``.res`` (``ins``) that gives
  CELL, LATT/SYMM and SFAC/UNIT;
- an **MTZ** (gemmi): cell and space group from the file; the intensity or amplitude
  column named by ``mtz_column`` (else the first of type J, else the first of type F)
  and its sigma (``mtz_sigma``, else the column after it if of type Q); the wavelength
  of that column's dataset (0.71073 Å if it records none).

Any failure raises :class:`~phasenet.solving.errors.SolveError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phasenet.solving.errors import SolveError
from phasenet.structure import Observations
from phasenet.symmetry import symmetry


@dataclass(frozen=True)
class MeasuredData:
    """Measured reflections as read (unmerged, in the file's setting) and what the
    file or the options say about the crystal."""

    source: str
    observations: Observations  # hkl, value, sigma, kind "F2" or "F"
    cell: tuple
    symops: tuple  # operator triplets
    space_group: str  # H-M symbol as known ("" if only operators)
    composition: dict | None = None  # atoms per unit cell, by element
    wavelength: float = 0.71073
    notes: tuple = field(default_factory=tuple)


def read_input(path, *, cell=None, space_group=None, composition=None, z=None, ins=None,
               hklf: int = 4, mtz_column: str | None = None, mtz_sigma: str | None = None) -> MeasuredData:
    """The measured data of ``path`` (see the module docstring). ``composition``: a
    formula (per formula unit, times ``z`` per cell; ``z`` defaults to the number of
    general positions) or ``{element: atoms per cell}``; it overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise SolveError(path, "unreadable", "no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".mtz":
            data = _read_mtz(path, mtz_column, mtz_sigma)
        elif suffix in (".hkl", ".fcf") or (suffix not in (".cif",) and _looks_like_hkl(path)):
            data = _read_hkl(path, cell, space_group, ins, hklf)
        else:
            data = _read_cif(path)
    except SolveError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise SolveError(path, "unreadable", f"cannot be read ({_first_line(exc)})") from None
    if cell is not None or space_group is not None:
        data = _override(data, path, cell, space_group)
    if composition is not None:
        data = _with(data, composition=cell_composition(composition, z, data.symops, path))
    return data


def cell_composition(composition, z, symops, path="") -> dict:
    """Atoms per unit cell from a formula (× ``z``, default the number of general
    positions) or a dict already per cell."""
    from phasenet.physics.wilson import composition_from_formula

    if isinstance(composition, dict):
        out = {str(k): float(v) for k, v in composition.items()}
    else:
        n_ops = len(symmetry(symops).rotations)
        try:
            out = composition_from_formula(str(composition), float(z) if z else float(n_ops))
        except ValueError as exc:
            raise SolveError(path, "bad-option", f"composition {composition!r}: {exc}") from None
    if not out or any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise SolveError(path, "bad-option", f"composition {composition!r} has no atoms")
    return out


def _first_line(exc) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _with(data: MeasuredData, **changes) -> MeasuredData:
    from dataclasses import replace

    return replace(data, **changes)


def _looks_like_hkl(path: Path) -> bool:
    head = path.read_bytes()[:2000]
    return not re.search(rb"^\s*(data_|loop_|_)", head, flags=re.M)


def _parse_cell(cell, path) -> tuple:
    if isinstance(cell, str):
        cell = cell.replace(",", " ").split()
    try:
        out = tuple(float(v) for v in cell)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 6 or min(out[:3]) <= 0 or not all(0 < v < 180 for v in out[3:]):
        raise SolveError(path, "bad-option", f"cell must be 6 numbers a b c alpha beta gamma, got {cell!r}")
    return out


def _symops(space_group, path) -> tuple[tuple, str]:
    try:
        sym = symmetry(space_group)
    except ValueError as exc:
        raise SolveError(path, "unsupported-space-group", str(exc)) from None
    return sym.triplets, sym.hm


def _override(data, path, cell, space_group) -> MeasuredData:
    changes = {}
    if cell is not None:
        changes["cell"] = _parse_cell(cell, path)
    if space_group is not None:
        changes["symops"], changes["space_group"] = _symops(space_group, path)
    return _with(data, **changes)


# -- CIF


def _read_cif(path: Path) -> MeasuredData:
    import gemmi

    from phasenet.io.cif import read_cif
    from phasenet.io.hkl import observations_from_block
    from phasenet.physics.wilson import composition_from_formula
    from phasenet.structure import Structure

    items = read_cif(path)
    structures = [s for s in items if isinstance(s, Structure)]
    doc = gemmi.cif.read(str(path))
    block = doc.find_block(structures[0].block) if structures else None
    if structures:
        s = structures[0]
        if s.observations is None:
            raise SolveError(path, "unreadable", "no measured reflections: no _shelx_hkl_file, no "
                             "_refln_ loop with measured values, no paired .hkl/.fcf"
                             + (f" ({'; '.join(s.notes)})" if s.notes else ""))
        obs, cell, symops, hm, notes = s.observations, s.cell, s.symops, s.space_group, s.notes
    else:  # a CIF of reflections only (e.g. an .fcf or a data-only block): no atoms needed
        failure = items[0]
        block = next((b for b in doc if observations_from_block(b, str(path)) is not None), None)
        if block is None:
            raise SolveError(path, "unreadable", f"no structure and no measured reflections ({failure})")
        obs = observations_from_block(block, str(path))
        cell = _cif_cell(block, path)
        symops, hm = _cif_symmetry(block, path)
        notes = ()
    composition = None
    formula = block.find_value("_chemical_formula_sum") if block is not None else None
    z = block.find_value("_cell_formula_units_Z") if block is not None else None
    if formula and z:
        try:
            composition = composition_from_formula(gemmi.cif.as_string(formula),
                                                   float(gemmi.cif.as_number(z)))
        except ValueError:
            composition = None
    if composition is None and structures and len(structures[0].atoms):
        n_ops = len(symmetry(symops).rotations)
        composition = {}
        for el, occ in zip(structures[0].atoms.element, structures[0].atoms.occupancy):
            composition[str(el)] = composition.get(str(el), 0.0) + float(occ) * n_ops
    wl = block.find_value("_diffrn_radiation_wavelength") if block is not None else None
    wavelength = gemmi.cif.as_number(wl) if wl else float("nan")
    return MeasuredData(str(path), obs, tuple(cell), tuple(symops), hm, composition,
                        wavelength if np.isfinite(wavelength) and wavelength > 0 else 0.71073, tuple(notes))


def _cif_cell(block, path) -> tuple:
    import gemmi

    vals = []
    for tag in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"):
        v = block.find_value("_cell_" + tag) or block.find_value("_cell." + tag)
        vals.append(gemmi.cif.as_number(v) if v else float("nan"))
    if not np.isfinite(vals).all():
        raise SolveError(path, "unreadable", "no complete cell (_cell_length_*, _cell_angle_*)")
    return tuple(vals)


def _cif_symmetry(block, path) -> tuple[tuple, str]:
    import gemmi

    for tag in ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz"):
        col = block.find_values(tag)
        if len(col):
            return _symops([gemmi.cif.as_string(v) for v in col], path)
    for tag in ("_space_group_name_Hall", "_symmetry_space_group_name_Hall",
                "_space_group_name_H-M_alt", "_symmetry_space_group_name_H-M"):
        v = block.find_value(tag)
        if v and gemmi.cif.as_string(v).strip() not in ("", "?", "."):
            return _symops(gemmi.cif.as_string(v), path)
    raise SolveError(path, "unreadable", "no symmetry (operators, Hall or H-M symbol)")


# -- SHELX


def _read_hkl(path: Path, cell, space_group, ins, hklf) -> MeasuredData:
    from phasenet.io.hkl import ReflectionError, read_reflection_file

    try:
        obs = read_reflection_file(path, hklf)
    except ReflectionError as exc:
        raise SolveError(path, "unreadable", str(exc)) from None
    composition, wavelength = None, 0.71073
    cell_ins = symops = None
    hm = ""
    if ins is not None:
        cell_ins, symops, composition, wavelength = read_ins(ins)
        hm = symmetry(symops).hm
    if cell is None and cell_ins is None:
        raise SolveError(path, "bad-option", "a SHELX .hkl holds no cell: give --cell or --ins")
    if space_group is None and symops is None:
        raise SolveError(path, "bad-option", "a SHELX .hkl holds no symmetry: give --space-group or --ins")
    return MeasuredData(str(path), obs, cell_ins or (0, 0, 0, 90, 90, 90), symops or ("x,y,z",), hm,
                        composition, wavelength)


_CENTRING = {1: [], 2: [(0.5, 0.5, 0.5)], 3: [(2 / 3, 1 / 3, 1 / 3), (1 / 3, 2 / 3, 2 / 3)],
             4: [(0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)], 5: [(0, 0.5, 0.5)],
             6: [(0.5, 0, 0.5)], 7: [(0.5, 0.5, 0)]}


def read_ins(path) -> tuple[tuple, tuple, dict | None, float]:
    """(cell, operator triplets, composition per cell or None, wavelength) of a SHELX
    .ins/.res: CELL, LATT, SYMM, SFAC, UNIT."""
    import gemmi

    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise SolveError(path, "unreadable", f"cannot be read ({exc.strerror})") from None
    cell = None
    wavelength = 0.71073
    latt, symm, sfac, unit = 1, [], [], []
    for line in lines:
        words = line.split()
        if not words:
            continue
        key = words[0].upper()
        try:
            if key == "CELL":
                wavelength, cell = float(words[1]), tuple(float(v) for v in words[2:8])
            elif key == "LATT":
                latt = int(words[1])
            elif key == "SYMM":
                symm.append(line.split(None, 1)[1].replace(" ", "").lower())
            elif key == "SFAC":
                sfac += [w.capitalize() for w in words[1:] if re.fullmatch(r"[A-Za-z]{1,2}", w)]
            elif key == "UNIT":
                unit += [float(v) for v in words[1:]]
            elif key in ("HKLF", "END"):
                break
        except (IndexError, ValueError):
            raise SolveError(path, "unreadable", f"bad {key} line: {line.strip()!r}") from None
    if cell is None or len(cell) != 6:
        raise SolveError(path, "unreadable", "no CELL line with wavelength and 6 parameters")
    if abs(latt) not in _CENTRING:
        raise SolveError(path, "unsupported-space-group", f"LATT {latt} is not a SHELX lattice type")
    ops = [gemmi.Op("x,y,z")]
    try:
        ops += [gemmi.Op(s) for s in symm]
    except RuntimeError as exc:
        raise SolveError(path, "unreadable", f"bad SYMM operator ({exc})") from None
    if latt > 0:
        ops += [gemmi.Op("-x,-y,-z") * op for op in list(ops)]
    triplets = []
    for c in [(0, 0, 0)] + _CENTRING[abs(latt)]:
        shift = gemmi.Op(",".join(f"{a}+{_frac(t)}" if t else a for a, t in zip("xyz", c)))
        triplets += [(shift * op).wrap().triplet() for op in ops]
    try:
        symops = symmetry(sorted(set(triplets))).triplets
    except ValueError as exc:
        raise SolveError(path, "unsupported-space-group", f"LATT/SYMM do not form a group ({exc})") from None
    composition = None
    if sfac and len(unit) == len(sfac) and sum(unit) > 0:
        composition = {el: n for el, n in zip(sfac, unit) if n > 0}
    return cell, symops, composition, wavelength


def _frac(t: float) -> str:
    from fractions import Fraction

    return str(Fraction(t).limit_denominator(12))


# -- MTZ


def _read_mtz(path: Path, column, sigma) -> MeasuredData:
    import gemmi

    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, ValueError) as exc:
        raise SolveError(path, "unreadable", f"not a readable MTZ file ({_first_line(exc)})") from None
    labels = [c.label for c in mtz.columns]
    types = [c.type for c in mtz.columns]
    if column is None:
        column = next((lab for lab, t in zip(labels, types) if t == "J"), None) or \
            next((lab for lab, t in zip(labels, types) if t == "F"), None)
    if column not in labels:
        raise SolveError(path, "bad-option", f"no column {column!r} (columns: {', '.join(labels)}); "
                         "name the intensity or amplitude column with --mtz-column")
    i = labels.index(column)
    if types[i] not in ("J", "F"):
        raise SolveError(path, "bad-option", f"column {column} has type {types[i]}, not J (intensity) or F")
    if sigma is None and i + 1 < len(labels) and types[i + 1] == "Q":
        sigma = labels[i + 1]
    if sigma is not None and sigma not in labels:
        raise SolveError(path, "bad-option", f"no sigma column {sigma!r} (columns: {', '.join(labels)})")
    data = np.array(mtz, copy=False)
    value = data[:, i].astype(float)
    sig = data[:, labels.index(sigma)].astype(float) if sigma else np.full(len(value), np.nan)
    ok = np.isfinite(value)
    hkl = data[ok, :3].astype(np.int32)
    obs = Observations(hkl=hkl, value=value[ok], sigma=sig[ok], kind="F2" if types[i] == "J" else "F",
                       origin=f"MTZ column {column}")
    if mtz.spacegroup is None:
        raise SolveError(path, "unsupported-space-group", "the MTZ file names no space group")
    symops, hm = _symops(mtz.spacegroup, path)
    wavelength = float(mtz.columns[i].dataset.wavelength)
    return MeasuredData(str(path), obs, tuple(mtz.cell.parameters), symops, hm,
                        wavelength=wavelength if np.isfinite(wavelength) and wavelength > 0 else 0.71073)
