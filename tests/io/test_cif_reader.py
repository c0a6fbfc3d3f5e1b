import phasenet  # noqa: F401  (first: cctbx import order)

import math
import textwrap

import numpy as np
import pytest

from phasenet.io.cif import DEFAULT_U_ISO, ReadFailure, read_cif
from phasenet.structure import Structure

EIGHT_PI2 = 8 * math.pi**2

KINDS = {"unreadable-cif", "no-cell", "no-symmetry", "bad-symmetry", "unknown-element",
         "missing-coordinates", "bad-occupancy", "bad-adp", "no-atoms", "invalid-structure",
         "internal-error"}


def structures(items):
    return [x for x in items if isinstance(x, Structure)]


def failures(items):
    return [x for x in items if isinstance(x, ReadFailure)]


# ------------------------------------------------------------ synthetic files

SIMPLE = """\
data_simple
_cell_length_a 5.0
_cell_length_b 6.0
_cell_length_c 7.0
_cell_angle_alpha 90
_cell_angle_beta 100.0(2)
_cell_angle_gamma 90
_space_group_name_H-M_alt 'P 1 21/c 1'
loop_
_space_group_symop_operation_xyz
'x, y, z'
'-x, y+1/2, -z+1/2'
'-x, -y, -z'
'x, -y+1/2, z+1/2'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
_atom_site_occupancy
O1 O2- 0.1234(5) 0.2 0.3 0.025(3) 1
Fe1 Fe3+ 0.5 0.5 0.5 0.010 0.5
H1 H 0.3 0.1 0.2 0.05 1
C1 C 0.25 0.25 0.25 ? 1
"""


def write(tmp_path, text, name="x.cif"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_synthetic_structure(tmp_path):
    items = read_cif(write(tmp_path, SIMPLE))
    assert len(items) == 1
    s = items[0]
    assert isinstance(s, Structure), str(s)
    assert s.block == "simple"
    assert s.cell == pytest.approx((5, 6, 7, 90, 100, 90))
    assert s.space_group == "P 1 21/c 1" and s.sg_number == 14
    assert len(s.symops) == 4
    a = s.atoms
    assert list(a.label) == ["O1", "Fe1", "H1", "C1"]
    assert list(a.element) == ["O", "Fe", "H", "C"]  # hydrogens kept
    assert list(a.charge) == [-2, 3, 0, 0]
    assert a.frac[0, 0] == pytest.approx(0.1234)  # standard uncertainty stripped
    assert list(a.occupancy) == [1, 0.5, 1, 1]
    assert a.u_iso[:3] == pytest.approx([0.025, 0.010, 0.05])
    assert list(a.u_defaulted) == [False, False, False, True]
    assert a.u_iso[3] == DEFAULT_U_ISO
    assert np.isnan(a.u_aniso).all()
    assert s.observations is None
    assert any("displacement" in n for n in s.notes)


def test_default_u_option(tmp_path):
    s = read_cif(write(tmp_path, SIMPLE), default_u=0.07)[0]
    assert s.atoms.u_iso[3] == 0.07 and s.atoms.u_defaulted[3]


def test_not_a_cif(tmp_path):
    p = tmp_path / "junk.cif"
    p.write_bytes(b"data_x\n_cell_length_a 'unterminated\n loop_ loop_ \x00\x01")
    items = read_cif(p)
    assert len(items) == 1 and isinstance(items[0], ReadFailure)
    assert items[0].kind == "unreadable-cif" and items[0].source == str(p)
    assert read_cif(tmp_path / "missing.cif")[0].kind == "unreadable-cif"


def test_block_without_atoms(tmp_path):
    items = read_cif(write(tmp_path, "data_a\n_cell_length_a 5\n"))
    assert len(items) == 1 and items[0].kind == "no-atoms"


@pytest.mark.parametrize("edit, kind, words", [
    (lambda t: t.replace("_cell_length_b 6.0", "_cell_length_b ?"), "no-cell", "cell"),
    (lambda t: t.replace("O1 O2-", "O1 Qq"), "unknown-element", "Qq"),
    (lambda t: t.replace("0.010 0.5", "0.010 1.7"), "bad-occupancy", "occupancy"),
    (lambda t: t.replace("'x, -y+1/2, z+1/2'", "'x+1/3, -y, z'"), "bad-symmetry", "group"),
    (lambda t: t.replace("'-x, -y, -z'", "'-x, -q, -z'"), "bad-symmetry", "operator"),
    (lambda t: t.replace("Fe1 Fe3+ 0.5 0.5 0.5", "Fe1 Fe3+ ? ? ?"), "missing-coordinates", "Fe1"),
])
def test_synthetic_failures(tmp_path, edit, kind, words):
    # (a missing cell parameter must not pass as gemmi's placeholder 1 1 1 90 90 90 cell)
    items = read_cif(write(tmp_path, edit(SIMPLE)))
    assert len(items) == 1
    f = items[0]
    assert isinstance(f, ReadFailure), "expected a failure"
    assert f.kind == kind, f.reason
    assert words in f.reason
    assert f.block == "simple" and f.source.endswith("x.cif")
    assert f.reason in str(f) and f.source in str(f)


def test_no_symmetry_failure(tmp_path):
    text = SIMPLE.split("_space_group_name_H-M_alt")[0] + SIMPLE.split("'x, -y+1/2, z+1/2'\n")[1]
    f = read_cif(write(tmp_path, text))[0]
    assert isinstance(f, ReadFailure) and f.kind == "no-symmetry"


def test_hydrogen_without_coordinates_is_skipped(tmp_path):
    f = read_cif(write(tmp_path, SIMPLE.replace("H1 H 0.3 0.1 0.2", "H1 H ? ? ?")))[0]
    assert isinstance(f, Structure)
    assert "H1" not in list(f.atoms.label) and len(f.atoms) == 3
    assert any("hydrogen" in n for n in f.notes)


def test_ddlm_cell_tags(tmp_path):
    # cctbx writes _cell.length_a etc.; gemmi alone leaves a 1 Å placeholder cell
    text = SIMPLE
    for name in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"):
        text = text.replace(f"_cell_{name}", f"_cell.{name}")
    s = read_cif(write(tmp_path, text))[0]
    assert isinstance(s, Structure), str(s)
    assert s.cell == pytest.approx((5, 6, 7, 90, 100, 90))


def test_symmetry_from_hm_only(tmp_path):
    text = SIMPLE.split("loop_\n_space_group_symop")[0] + "loop_\n_atom_site_label" + \
        SIMPLE.split("loop_\n_atom_site_label")[1]
    s = read_cif(write(tmp_path, text))[0]
    assert isinstance(s, Structure), str(s)
    assert s.sg_number == 14 and len(s.symops) == 4


def test_b_iso_converted(tmp_path):
    text = SIMPLE.replace("_atom_site_U_iso_or_equiv", "_atom_site_B_iso_or_equiv")
    s = read_cif(write(tmp_path, text))[0]
    assert s.atoms.u_iso[0] == pytest.approx(0.025 / EIGHT_PI2)


ANISO = SIMPLE + """\
loop_
_atom_site_aniso_label
_atom_site_aniso_U_11
_atom_site_aniso_U_22
_atom_site_aniso_U_33
_atom_site_aniso_U_12
_atom_site_aniso_U_13
_atom_site_aniso_U_23
O1 0.02 0.03 0.04 0.001 0.002 0.003
"""


def test_aniso_u(tmp_path):
    s = read_cif(write(tmp_path, ANISO))[0]
    assert s.atoms.u_aniso[0] == pytest.approx([0.02, 0.03, 0.04, 0.001, 0.002, 0.003])
    assert np.isnan(s.atoms.u_aniso[1:]).all()
    # U_eq of the anisotropic atom is about the mean of the diagonal (monoclinic cell)
    assert s.atoms.u_iso[0] == pytest.approx(0.03, rel=0.1)


def test_aniso_b_not_converted(tmp_path):
    """Only U_ij are read: an atom given _atom_site_aniso_B_ij keeps its U_iso (or, without
    one, gets the default U and is flagged), never silently converted values."""
    text = ANISO.replace("_atom_site_aniso_U_", "_atom_site_aniso_B_")
    s = read_cif(write(tmp_path, text))[0]
    assert not s.atoms.u_defaulted[0] and s.atoms.u_iso[0] == pytest.approx(0.025)
    assert np.isnan(s.atoms.u_aniso[0]).all()
    s = read_cif(write(tmp_path, text.replace("O1 O2- 0.1234(5) 0.2 0.3 0.025(3)",
                                               "O1 O2- 0.1234(5) 0.2 0.3 ?")))[0]
    assert s.atoms.u_defaulted[0] and s.atoms.u_iso[0] == DEFAULT_U_ISO


def test_unknown_type_symbols_use_the_label(tmp_path):
    text = SIMPLE.replace("O1 O2-", "O1 ?").replace("Fe1 Fe3+", "Fe1 ?").replace("H1 H ", "H1 . ")
    s = read_cif(write(tmp_path, text))[0]
    assert isinstance(s, Structure), str(s)
    assert list(s.atoms.element) == ["O", "Fe", "H", "C"]
    assert list(s.atoms.charge) == [0, 0, 0, 0]
    f = read_cif(write(tmp_path, text.replace("O1 ?", "Xq1 ?")))[0]
    assert isinstance(f, ReadFailure) and f.kind == "unknown-element"
    assert "'Xq1'" in f.reason and "no type symbol" in f.reason


def test_grown_asymmetric_unit(tmp_path):
    """An atom listed again at a symmetry image of itself (a 'grown' asymmetric unit)
    counts once; split disorder sites (occupancies summing to 1) stay."""
    from phasenet.physics.structure_factors import structure_factors

    hkl = phasenet.canonical_hkl(4)
    plain = read_cif(write(tmp_path, SIMPLE, "plain.cif"))[0]
    # O1b: image of O1 under -x, y+1/2, -z+1/2
    grown_text = SIMPLE.replace("H1 H 0.3", "O1b O2- -0.1234 0.7 0.2 0.025 1\nH1 H 0.3")
    grown = read_cif(write(tmp_path, grown_text, "grown.cif"))[0]
    assert list(grown.atoms.label) == list(plain.atoms.label)
    assert any("grown asymmetric unit" in n and "O1b" in n for n in grown.notes)
    assert np.allclose(structure_factors(grown, hkl), structure_factors(plain, hkl))
    # half-occupied split site on the same image: disorder, kept
    split_text = SIMPLE.replace("O1 O2- 0.1234(5) 0.2 0.3 0.025(3) 1",
                                "O1 O2- 0.1234(5) 0.2 0.3 0.025(3) 0.5\n"
                                "O1b O2- -0.1234 0.7 0.2 0.025 0.5")
    split = read_cif(write(tmp_path, split_text, "split.cif"))[0]
    assert "O1b" in list(split.atoms.label)
    # a site shared by two disorder parts, occupancies rounded (0.813 + 0.19): kept
    shared = read_cif(write(tmp_path, split_text.replace("0.025(3) 0.5", "0.025(3) 0.813")
                            .replace("0.025 0.5", "0.025 0.19"), "shared.cif"))[0]
    assert "O1b" in list(shared.atoms.label)


# ------------------------------------------------------------ real files



@pytest.mark.real_data
@pytest.mark.parametrize("name, blocks", [
    ("FinalCif_multi.cif", ["1000006", "1000007", "p21c"]),
    ("FinalCif_1000007-multi.cif", ["1000006", "1000007", "p21c", "p-1"]),
    ("tonto_n-alkanes.cif", None),
])
def test_multi_block(real_cif, name, blocks):
    items = read_cif(real_cif(name))
    got = structures(items)
    assert len(got) == len(items) and len(got) >= 3
    if blocks is not None:
        assert [s.block for s in got] == blocks
    assert len({s.id for s in got}) == len(got)
    assert all(s.source == str(real_cif(name)) for s in got)


@pytest.mark.real_data
def test_multi_block_contents(real_cif):
    got = {s.block: s for s in structures(read_cif(real_cif("FinalCif_1000007-multi.cif")))}
    assert got["1000006"].space_group == "P 21 21 21" and len(got["1000006"].atoms) == 58
    assert got["p21c"].sg_number == 14 and got["p-1"].sg_number == 2
    # only the block with an embedded hkl file has measurements
    assert got["p21c"].observations is not None
    assert got["p21c"].observations.origin == "_shelx_hkl_file"
    assert got["1000006"].observations is None


@pytest.mark.real_data
def test_charged_type_symbols(structure_of):
    s = structure_of("PyXtal_NaCl.cif")
    assert list(s.atoms.element) == ["Na", "Cl"]
    assert list(s.atoms.charge) == [1, -1]


@pytest.mark.real_data
def test_missing_displacement_parameters_get_default(structure_of):
    # ICSD-style entry whose B_iso are all 0: treated as absent
    s = structure_of("FinalCif_1923_Aminoff__G._Ni_As_P_63.m_m_c_Nickel_arsenide.cif")
    assert list(s.atoms.element) == ["Ni", "As"]
    assert s.atoms.u_defaulted.all()
    assert np.all(s.atoms.u_iso == DEFAULT_U_ISO)
    assert any("2 atoms without displacement parameters" in n for n in s.notes)


@pytest.mark.real_data
def test_hydrogens_kept(structure_of):
    s = structure_of("StructureFinder_P-1.cif")
    el = list(s.atoms.element)
    assert el.count("H") == 19 and len(el) == 42
    assert np.isfinite(s.atoms.frac[s.atoms.element == "H"]).all()


@pytest.mark.real_data
def test_adp_variants(real_cif):
    """cod-tools' ADP test file: B and U, isotropic and anisotropic, for one H atom."""
    got = {s.block: s for s in structures(read_cif(real_cif("cod-tools_adp_information.cif")))}
    assert got["adp_as_U_iso"].atoms.u_iso[0] == pytest.approx(0.1)
    assert got["adp_as_B_iso"].atoms.u_iso[0] == pytest.approx(0.1 / EIGHT_PI2)
    u6 = np.array([1, 1, 1.5, 0.5, 0, 0])
    assert got["adp_as_U_aniso_all_items"].atoms.u_aniso[0] == pytest.approx(u6)
    assert got["adp_as_B_aniso_all_items"].atoms.u_defaulted[0]  # B_ij are not read
    assert got["no_adp_published_after_1969"].atoms.u_defaulted.all()


@pytest.mark.real_data
def test_real_grown_file(structure_of):
    # Tonto's grown B6H6 cluster lists 22 atoms; 18 are symmetry copies of the other 4
    s = structure_of("tonto_B6H6_grown.cif")
    assert list(s.atoms.label) == ["N1", "B1", "H1", "H1A"]
    assert any("18 atoms repeating" in n for n in s.notes)


@pytest.mark.real_data
def test_disorder_parts_sharing_a_site_are_kept(structure_of):
    s = structure_of("cod-tools_2103700.cif")  # C23 (occ .813, part 1) and C23X (.19, part 2)
    assert {"C23", "C23X", "C26", "C26X"} <= set(s.atoms.label)
    assert not any("grown" in n for n in s.notes)


@pytest.mark.real_data
def test_question_mark_type_symbols(structure_of):
    s = structure_of("cod-tools_2000728-atom-type-questionmarks.cif")
    assert set(s.atoms.element) >= {"S", "C", "N"}
    s = structure_of("cod-tools_2006199.cif")
    assert s.atoms.label[0] == "S" and s.atoms.element[0] == "S"


@pytest.mark.real_data
def test_damaged_files_never_raise(manifest):
    damaged = manifest[manifest.notes.str.contains("cod-tools-test-variant")]
    assert len(damaged) >= 349
    n_fail = n_ok = 0
    kinds = set()
    for path in damaged.path:
        items = read_cif(path)  # must not raise
        assert items, f"{path}: nothing returned"
        for x in items:
            if isinstance(x, ReadFailure):
                n_fail += 1
                kinds.add(x.kind)
                assert x.reason.strip(), f"{path}: failure without a reason"
                assert x.source == path
                assert x.kind in KINDS, f"{path}: unknown kind {x.kind!r}"
                assert x.kind != "internal-error", f"{path}: reader bug: {x.reason}"
            else:
                assert isinstance(x, Structure)
                assert len(x.atoms) > 0 and x.source == path
                n_ok += 1
    assert n_ok > 300 and n_fail > 40
    assert {"unknown-element", "bad-symmetry", "no-symmetry"} <= kinds


@pytest.mark.real_data
@pytest.mark.parametrize("name, kind, words", [
    ("cod-tools_1000002-test-symop.cif", "no-symmetry", "no symmetry"),
    ("cod-tools_1000002-unknown-atom-type.cif", "unknown-element", "'max' has no type symbol"),
    ("cod-tools_1000451.cif", "bad-occupancy", "occupancy 5.0"),
    ("cod-tools_2005206.cif", "bad-symmetry", "do not form a group"),
    ("cod-tools_2201319-numeric_field_w_non-numeric-value.cif", "no-cell", "unit cell"),
    ("cod-tools_various-sg-number-sources.cif", "bad-symmetry", "1/42"),
    ("cod-tools_1101113-no-atom-site-label.cif", "no-atoms", "no atoms"),
    ("cod-tools_00599.cif", "unknown-element", "'Wat1'"),
])
def test_specific_damaged_files(real_cif, name, kind, words):
    items = read_cif(real_cif(name))
    fails = failures(items)
    assert fails, f"{name} should fail to read"
    assert fails[0].kind == kind, str(fails[0])
    assert words in fails[0].reason, str(fails[0])


@pytest.mark.real_data
def test_quoted_space_group_number(structure_of):
    # Tonto writes _symmetry_Int_Tables_number '41' (quoted): gemmi alone refuses it
    s = structure_of("tonto_molecule.cif")
    assert s.sg_number == 41
    assert list(s.atoms.label) == ["S", "O1"]  # O2 is O1's image through the 2-fold axis
    assert s.observations is not None and s.observations.kind == "F"


@pytest.mark.real_data
def test_read_observations_off(real_cif):
    s = structures(read_cif(real_cif("StructureFinder_P-1.cif"), read_observations=False))[0]
    assert s.observations is None
    s = structures(read_cif(real_cif("StructureFinder_P-1.cif")))[0]
    assert s.observations is not None and "fcf" in s.observations.origin


# ------------------------------------ embedded reflection files cut out before parsing


def _structures_both_ways(path, monkeypatch):
    """read_cif as it is, and with gemmi parsing the whole file (the reference)."""
    import gemmi

    from phasenet.io import cif as cif_reader

    fast = cif_reader.read_cif(path)
    with monkeypatch.context() as m:
        m.setattr(cif_reader, "_read_document", lambda source: (gemmi.cif.read(source), {}))
        slow = cif_reader.read_cif(path)
    return fast, slow


def _assert_same_reading(fast, slow):
    assert len(fast) == len(slow)
    for x, y in zip(fast, slow):
        assert type(x) is type(y)
        if not isinstance(x, Structure):
            assert x == y
            continue
        assert (x.block, x.cell, x.symops, x.notes) == (y.block, y.cell, y.symops, y.notes)
        assert np.array_equal(x.atoms.frac, y.atoms.frac)
        assert (x.observations is None) == (y.observations is None)
        if x.observations is not None:
            assert np.array_equal(x.observations.hkl, y.observations.hkl)
            assert np.array_equal(x.observations.value, y.observations.value)
            assert np.array_equal(x.observations.sigma, y.observations.sigma, equal_nan=True)
            assert (x.observations.kind, x.observations.origin) == (y.observations.kind, y.observations.origin)


@pytest.mark.real_data
def test_embedded_hkl_cut_out_reads_the_same(real_cif_dir, monkeypatch):
    """Every real CIF with an embedded _shelx_hkl_file: cutting the reflection text out
    before gemmi parses the file (3x faster) gives exactly what parsing it whole gives."""
    from phasenet.io.cif import _read_document

    paths = [p for p in sorted(real_cif_dir.glob("*.cif")) if b"_shelx_hkl_file" in p.read_bytes()]
    assert len(paths) >= 15
    for p in paths:
        assert _read_document(str(p))[1], f"{p.name}: nothing cut out"
        _assert_same_reading(*_structures_both_ways(p, monkeypatch))


def test_embedded_hkl_cut_out_edge_cases(tmp_path, monkeypatch):
    """Two blocks with reflections (CRLF line ends in one), an empty field, other items
    after the field, and an upper-case tag (left to gemmi): all read as gemmi reads them."""
    from phasenet.io.cif import _read_document

    atoms = ("_cell_length_a 5\n_cell_length_b 6\n_cell_length_c 7\n_cell_angle_alpha 90\n"
             "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\n"
             "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
             "_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_U_iso_or_equiv\nC1 C 0.1 0.2 0.3 0.02\n")
    hkl = "   1   0   0   10.00    0.50\n   0   1   0    5.00    0.20\n   0   0   0    0.00    0.00\n"
    text = ("data_a\n" + atoms + "_shelx_hkl_file\n;\n" + hkl + ";\n_shelx_fab_file ?\n"
            + "data_b\r\n" + atoms.replace("\n", "\r\n") + "_shelx_hkl_file  \r\n;\r\n"
            + hkl.replace("\n", "\r\n") + ";\r\n"
            + "data_c\n" + atoms + "_shelx_hkl_file\n;\n;\n")
    p = tmp_path / "two.cif"
    p.write_bytes(text.encode())
    assert set(_read_document(str(p))[1]) == {0, 1, 2}
    fast, slow = _structures_both_ways(p, monkeypatch)
    _assert_same_reading(fast, slow)
    assert [x.observations is not None for x in fast] == [True, True, False]
    upper = tmp_path / "upper.cif"
    upper.write_bytes(text.replace("_shelx_hkl_file", "_SHELX_HKL_FILE").encode())
    assert _read_document(str(upper))[1] == {}
    _assert_same_reading(*_structures_both_ways(upper, monkeypatch))
