"""Bounded cost per file: the cell-size limit, no quadratic step for repeated or crowded
atoms, and atoms given slightly off a special position (occupancy and disorder group)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import time

import numpy as np
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.io.cif import ReadFailure, read_cif
from phasenet.pipeline.records import compute_record
from phasenet.physics.structure_factors import expand_to_unit_cell
from phasenet.reflections import canonical_hkl
from phasenet.structure import Structure

HEADER = """data_t
_cell_length_a {a}
_cell_length_b {a}
_cell_length_c {a}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M '{sg}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
_atom_site_occupancy
_atom_site_disorder_group
"""


def _cif(tmp_path, rows, sg="P 1", a=10.0, name="t.cif"):
    lines = [f"{lab} {el} {x:.6f} {y:.6f} {z:.6f} 0.03 {occ} {part}"
             for lab, el, (x, y, z), occ, part in rows]
    path = tmp_path / name
    path.write_text(HEADER.format(a=a, sg=sg) + "\n".join(lines) + "\n")
    return path


def _one(path, **kw):
    (item,) = read_cif(path, **kw)
    return item


def _grid_rows(n, el="C", offset=0.5):
    side = int(np.ceil(n ** (1 / 3)))
    pts = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return [(f"{el}{i}", el, tuple((p + offset) / side), 1, ".") for i, p in enumerate(pts)]


def test_too_many_atoms_is_a_failure_before_anything_is_computed(tmp_path):
    path = _cif(tmp_path, _grid_rows(300), sg="P 21/c", a=30.0)
    item = _one(path, max_atoms=1000)
    assert isinstance(item, ReadFailure) and item.kind == "too-many-atoms"
    assert "300" in item.reason and "4 symmetry operators" in item.reason and "1000" in item.reason
    assert isinstance(_one(path, max_atoms=1200), Structure)
    s = build_dataset([path], tmp_path / "o.h5", BuildOptions(workers=1, max_atoms=1000),
                      progress=False)
    assert s.failures_by_kind == {"too-many-atoms": 1}
    with pytest.raises(ValueError, match="max_atoms"):
        BuildOptions(max_atoms=0)
    with pytest.raises(ValueError, match="file_timeout"):
        BuildOptions(file_timeout=-1)


def test_a_row_repeated_20000_times_is_fast(tmp_path):
    """The first atom row repeated: the grown-asymmetric-unit check sorts exact repeats
    out instead of comparing every atom with every other (151 s and 5.5 GB before)."""
    rows = _grid_rows(20)
    rows = rows[:1] * 20_000 + rows[1:]
    path = _cif(tmp_path, rows)
    t0 = time.perf_counter()
    s = _one(path, max_atoms=50_000)
    assert time.perf_counter() - t0 < 10
    assert isinstance(s, Structure) and len(s.atoms) == 20
    assert any("19999 atoms repeating" in n for n in s.notes)
    # above the cell limit in a group with 4 operators: refused at once
    path4 = _cif(tmp_path, rows, sg="P 21/c", name="t4.cif")
    assert _one(path4).kind == "too-many-atoms"


def test_crowded_atoms_are_refused_not_compared_pairwise(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"C{i}", "C", tuple(0.5 + rng.normal(0, 1e-4, 3)), 1, ".") for i in range(8000)]
    t0 = time.perf_counter()
    item = _one(_cif(tmp_path, rows))
    assert time.perf_counter() - t0 < 10
    assert isinstance(item, ReadFailure) and item.kind == "overlapping-atoms"


def test_many_atoms_in_a_grown_unit_are_found_without_quadratic_cost(tmp_path):
    """10 000 atoms, each listed with its inversion image as well: half are copies."""
    rows = _grid_rows(5000, offset=0.1)  # no atom near another's inversion image
    rows += [(f"D{i}", "C", tuple((-np.array(x)) % 1.0), 1, ".") for i, (_, _, x, _, _) in enumerate(rows)]
    t0 = time.perf_counter()
    s = _one(_cif(tmp_path, rows, sg="P -1", a=60.0))
    assert time.perf_counter() - t0 < 20
    assert len(s.atoms) == 5000 and s.atoms.label[-1] == "C4999"


def _cell_count(s, label):
    contents = expand_to_unit_cell(s)
    return int(np.sum(contents.asu_index == list(s.atoms.label).index(label)))


def test_fully_occupied_atom_off_a_special_position_is_put_on_it(tmp_path):
    """An atom 0.17 Å from the inversion centre (0.35 Å from its own image), fully
    occupied: two atoms where there is one; it goes onto the centre and counts once."""
    rows = [("O1", "O", (0.01, 0.01, 0.01), 1, "."), ("C1", "C", (0.3, 0.2, 0.1), 1, ".")]
    s = _one(_cif(tmp_path, rows, sg="P -1"))
    assert np.allclose(s.atoms.frac[0], 0.0)
    assert _cell_count(s, "O1") == 1 and _cell_count(s, "C1") == 2
    assert any("moved onto the special position" in n for n in s.notes)
    rec = compute_record(s, canonical_hkl(6))
    assert rec.n_atoms_cell == 3


@pytest.mark.parametrize("occ, part", [(0.5, "."), (0.5, "-1"), (1, "-1")])
def test_disorder_near_a_special_position_is_kept(tmp_path, occ, part):
    """Half-occupied (two half atoms, together one) or SHELX PART -1 (copies overlapping
    on purpose): the atom stays where the file puts it, both copies counted."""
    rows = [("O1", "O", (0.01, 0.01, 0.01), occ, part), ("C1", "C", (0.3, 0.2, 0.1), 1, ".")]
    s = _one(_cif(tmp_path, rows, sg="P -1"))
    assert np.allclose(s.atoms.frac[0], 0.01)
    assert _cell_count(s, "O1") == 2
    assert any("kept as given (disorder)" in n for n in s.notes)


def test_atoms_within_the_old_tolerance_still_snap(tmp_path):
    rows = [("O1", "O", (0.001, 0.0, 0.0), 0.5, "-1")]  # 0.02 Å from its image
    s = _one(_cif(tmp_path, rows, sg="P -1"))
    assert _cell_count(s, "O1") == 1


def test_copies_found_by_the_tree_are_those_of_the_pairwise_rule(tmp_path):
    """An oblique cell, P 21/c, copies of earlier atoms under random operators with 0.02 Å
    jitter, some half occupied: the dropped atoms are exactly those that the plain rule
    (compare every atom with every image of every earlier one) drops."""
    import gemmi

    rng = np.random.default_rng(5)
    cell = gemmi.UnitCell(9.0, 11.0, 13.0, 90, 112.0, 90)
    ops = list(gemmi.find_spacegroup_by_name("P 1 21/c 1").operations())
    orth, fracm = np.array(cell.orth.mat.tolist()), np.array(cell.frac.mat.tolist())
    n0 = 150
    x = list(rng.uniform(0, 1, (n0, 3)))
    occ = list(np.where(rng.uniform(size=n0) < 0.2, 0.5, 1.0))
    for _ in range(60):
        j = int(rng.integers(len(x)))
        y = np.array(ops[int(rng.integers(len(ops)))].apply_to_xyz(list(x[j])))
        x.append((y + fracm @ rng.normal(0, 0.012, 3)) % 1.0)
        occ.append(occ[j])
    x = np.round(np.array(x), 6)
    rows = [(f"C{i}", "C", tuple(p), o, ".") for i, (p, o) in enumerate(zip(x, occ))]
    text = HEADER.format(a=9, sg="P 1 21/c 1").replace("_cell_length_b 9", "_cell_length_b 11") \
        .replace("_cell_length_c 9", "_cell_length_c 13").replace("_cell_angle_beta 90", "_cell_angle_beta 112")
    path = tmp_path / "m.cif"
    path.write_text(text + "\n".join(f"{r[0]} C {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} 0.03 {r[3]} ."
                                     for r, p in zip(rows, x)) + "\n")
    images = np.array([[np.array(op.apply_to_xyz(list(p))) for op in ops] for p in x])  # (n, m, 3)
    copy = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        for j in range(i):
            if copy[j] or occ[i] + occ[j] <= 1.05:
                continue
            d = images[j] - x[i]
            d -= np.round(d)
            if (np.linalg.norm(d @ orth.T, axis=1) < 0.05).any():
                copy[i] = True
                break
    assert 20 < copy.sum() < 60
    s = _one(path)
    assert list(s.atoms.label) == [r[0] for r, c in zip(rows, copy) if not c]
