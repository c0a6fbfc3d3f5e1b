"""Structure factors of files read twice, independently: phasenet reads the CIF and
computes F; iotbx reads the same file into a cctbx structure and cctbx computes F
by direct summation (same IT92 form factors). A reading error (a charge, a U_ij, a
special position, an operator) shows here, where a reference built from phasenet's
own parsed structure would repeat it."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.io.cif import DEFAULT_U_ISO, read_cif
from phasenet.physics.structure_factors import structure_factors
from phasenet.reflections import canonical_hkl
from phasenet.structure import Structure

HKL = canonical_hkl()

#: tests/data files (made by make_test_data.py) and their blocks
OWN_FILES = [("p-1_organic.cif", "p-1_organic"), ("p21n_aniso.cif", "p21n_aniso"),
             ("ionic_pnma.cif", "ionic_pnma"), ("c2c_special.cif", "c2c_special"),
             ("two_blocks.cif", "a_p212121"), ("two_blocks.cif", "b_r-3")]


def _compare(cctbx_ref, s, xs, what):
    from phasenet.symmetry import symmetry

    f = structure_factors(s, HKL)
    fc, absent = cctbx_ref.fcalc(xs, HKL)
    # the same systematic absences as cctbx's (the record sets F to 0 there)
    assert np.array_equal(symmetry(s.symops).systematic_absences(HKL), absent), what
    assert np.abs(f[absent]).max(initial=0) <= 1e-5 * np.abs(fc).max(), what
    return cctbx_ref.assert_agrees(f, fc, what, keep=~absent)


@pytest.mark.parametrize("name, block", OWN_FILES, ids=[b for _, b in OWN_FILES])
def test_own_files_against_iotbx_reading(test_data, cctbx_ref, name, block):
    path = test_data(name)
    s = {x.block: x for x in read_cif(path, read_observations=False)}[block]
    assert isinstance(s, Structure), str(s)
    _compare(cctbx_ref, s, cctbx_ref.from_file(path, block), f"{name} [{block}]")


def test_ions_change_f(test_data, cctbx_ref):
    """The ions' form factors matter at low angle: the same file with neutral atoms
    differs from cctbx's ionic reference by more than ten times the tolerance (so the agreement
    above does test the charges)."""
    from dataclasses import replace

    path = test_data("ionic_pnma.cif")
    s = read_cif(path)[0]
    neutral = replace(s, atoms=replace(s.atoms, charge=np.zeros_like(s.atoms.charge)))
    fc, absent = cctbx_ref.fcalc(cctbx_ref.from_file(path), HKL)
    r_amp, _ = cctbx_ref.r_factors(structure_factors(neutral, HKL)[~absent], fc[~absent])
    assert r_amp > 10 * cctbx_ref.amplitude_r_max  # (7e-3)


#: Real files chosen from ../shared/data/real/manifest.csv (kind structure, read by
#: gemmi, not a cod-tools test variant), each read the same way by iotbx and phasenet:
#: ions (charged type symbols, some of them ions IT92 lacks: neutral atom), U_ij,
#: atoms on special positions (inversion centres, 2-, 3- and 4-fold axes, mirrors).
#: (Files iotbx reads differently are left out: atoms up to 0.5 Å from a special
#: position, which iotbx moves onto it and phasenet only within 0.05 Å; _atom_site_aniso_B
#: values, which phasenet does not read; duplicate atom labels.)
REAL_FILES = {
    "cod-tools_1000039.cif": "Pa-3; Ca2+ Al3+ O2-; U_ij; special positions",
    "cod-tools_1008449.cif": "I a -3; N3- H1+ C4+ (neutral in IT92) Be2+ F1-; U_ij; no U for H",
    "cod-tools_1011142.cif": "Fd-3m; Nb5+ (neutral in IT92) Na1+ Ca2+ O2- F1-; no U",
    "cod-tools_2002617.cif": "Immm; Ni2+ and Ni3+ Ba2+ Na1+ O2-; no U",
    "PyXtal_NaCl.cif": "Fm-3m; Na1+ Cl1- on m-3m sites; no U",
    "NoSpherA2_Au2Br2.cif": "C2/c; U_ij; an atom on a special position",
    "cod-tools_2204100.cif": "C2/c; U_ij; atoms on 2-fold axes",
    "cod-tools_2012180.cif": "P-1; U_ij; atoms on inversion centres",
    "cod-tools_2009901.cif": "P-31c; U_ij; atoms on 3-fold axes",
    "cod-tools_2013358.cif": "I4/mmm; U_ij; every atom on a special position",
}


@pytest.mark.real_data
def test_real_files_are_what_the_list_says(manifest):
    rows = manifest.set_index(manifest.file.str.removeprefix("cif/"))
    for name in REAL_FILES:
        row = rows.loc[name]
        assert row.kind == "structure" and row.gemmi_reads == True, name  # noqa: E712
        assert "cod-tools-test-variant" not in row.notes, name


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_files_against_iotbx_reading(real_cif, cctbx_ref, name):
    path = real_cif(name)
    s = [x for x in read_cif(path, read_observations=False) if isinstance(x, Structure)][0]
    xs = cctbx_ref.from_file(path, s.block, default_u=DEFAULT_U_ISO)
    special = len(xs.site_symmetry_table().special_position_indices())
    if "special" in REAL_FILES[name] or "sites" in REAL_FILES[name]:
        assert special > 0, f"{name}: iotbx finds no atom on a special position"
    if "U_ij" in REAL_FILES[name]:
        assert np.isfinite(s.atoms.u_aniso).all(axis=1).any()
    if "+" in REAL_FILES[name]:
        assert (s.atoms.charge != 0).any()
    _compare(cctbx_ref, s, xs, name)
