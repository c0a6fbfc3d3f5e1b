"""Reindexing to the reference setting and back (phasenet.settings), against cctbx:
structure factors of real structures in P2₁/n, P2₁/a and A-1 computed in the input
setting equal, once carried across, cctbx's for the structure transformed to the
reference setting (``xray_structure.change_basis``)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.physics.structure_factors import structure_factors
from phasenet.reflections import sphere_hkl
from phasenet.settings import reference_setting
from phasenet.symmetry import symmetry
from tests.conftest import first_structure
from tests.physics.conftest import fcalc, from_file, from_structure, r_factors

REAL = [("FinalCif_Esser_JW367_0m.cif", "P 1 21/n 1", "P 1 21/c 1"),
        ("PyXtal_MERQIM.cif", "P 1 21/a 1", "P 1 21/c 1"),
        ("cod-tools_2000507.cif", "A -1", "P -1")]


@pytest.mark.parametrize("name, symbol_in, symbol_ref", REAL)
def test_structure_factors_carried_to_the_reference_setting(real_cif, name, symbol_in, symbol_ref):
    path = real_cif(name)
    s = first_structure(path)
    sym = symmetry(s.symops)
    ch = reference_setting(s.cell, s.symops)
    assert (ch.symbol_in, ch.symbol_reference, ch.is_identity) == (symbol_in, symbol_ref, False)
    hkl = sphere_hkl(s.cell, 1.2)
    hkl = hkl[~sym.systematic_absences(hkl)]
    f_in = structure_factors(s, hkl, dtype=np.float64)
    h_ref = ch.hkl_to_reference(hkl)
    phi_ref = ch.phases_to_reference(hkl, np.angle(f_in))

    # cctbx: the file as iotbx reads it (phasenet's parsed atoms where iotbx finds no
    # symmetry in the file: cod-tools_2000507), moved to its reference setting
    xs = from_structure(s) if name == "cod-tools_2000507.cif" else from_file(path, default_u=0.05)
    cb = xs.space_group_info().change_of_basis_op_to_reference_setting()
    xs_ref = xs.change_basis(cb)
    assert str(xs_ref.space_group_info()).replace(" ", "") == symbol_ref.replace(" ", "")
    np.testing.assert_allclose(ch.cell_reference, xs_ref.unit_cell().parameters(), atol=1e-6)
    assert symmetry(ch.symops_reference) == symmetry([op.as_xyz() for op in xs_ref.space_group().all_ops()])
    fc, absent_ref = fcalc(xs_ref, h_ref)
    assert not absent_ref.any(), "present reflections became absent in the reference setting"
    # the primitive reference cell of A-1 holds half the atoms: F halves
    assert ch.amplitude_scale == pytest.approx(0.5 if symbol_in == "A -1" else 1.0)
    r_amp, r_complex = r_factors(ch.amplitude_scale * np.abs(f_in) * np.exp(1j * phi_ref), fc)
    assert r_amp < 2e-3 and r_complex < 3e-3, (r_amp, r_complex)
    # and back
    np.testing.assert_array_equal(ch.hkl_from_reference(h_ref), hkl)
    back = ch.phases_from_reference(h_ref, phi_ref)
    np.testing.assert_allclose(np.cos(back - np.angle(f_in)), 1.0, atol=1e-9)


@pytest.mark.parametrize("name", [n for n, _, _ in REAL])
def test_absences_correspond(real_cif, name):
    """Absent in the input setting ⇔ absent in the reference setting (primitive inputs),
    and no present reflection becomes absent."""
    s = first_structure(real_cif(name))
    sym = symmetry(s.symops)
    ch = reference_setting(s.cell, s.symops)
    ref = symmetry(ch.symops_reference)
    hkl = sphere_hkl(s.cell, 1.5)
    absent = sym.systematic_absences(hkl)
    h_ref = ch.hkl_to_reference(hkl[~absent])
    assert not ref.systematic_absences(h_ref).any()
    if not sym.centring.any(axis=1).any():  # primitive: absences map onto absences
        assert ref.systematic_absences(ch.hkl_to_reference(hkl[absent])).all()
    else:  # centred input: the lattice absences have no integral reference indices
        with pytest.raises(ValueError, match="absent by the centring"):
            ch.hkl_to_reference(hkl[absent])


def test_round_trips_and_coordinates():
    ch = reference_setting((8.0, 14.5, 10.9, 90, 103.9, 90), "P 1 21/n 1")
    rng = np.random.default_rng(0)
    hkl = rng.integers(-9, 10, size=(200, 3))
    np.testing.assert_array_equal(ch.hkl_from_reference(ch.hkl_to_reference(hkl)), hkl)
    np.testing.assert_array_equal(ch.hkl_to_reference(ch.hkl_from_reference(hkl)), hkl)
    x = rng.random((20, 3))
    np.testing.assert_allclose(ch.xyz_from_reference(ch.xyz_to_reference(x)), x, atol=1e-12)
    # h·x is a setting-independent phase angle (t = 0 here)
    np.testing.assert_allclose(ch.hkl_to_reference(hkl) @ ch.xyz_to_reference(x).T, hkl @ x.T, atol=1e-9)


@pytest.mark.parametrize("sg", ["P 1 21/c 1", "P -1", 14, 2, "P 21 21 21"])
def test_standard_settings_are_the_identity(sg):
    ch = reference_setting((8, 9, 10, 90, 95 if sg in ("P 1 21/c 1", 14) else 90, 90) if sg not in ("P -1", 2)
                           else (8, 9, 10, 80, 95, 100), sg)
    assert ch.is_identity and ch.symbol_in == ch.symbol_reference
    hkl = np.array([[1, 2, 3], [-4, 0, 5]])
    np.testing.assert_array_equal(ch.hkl_to_reference(hkl), hkl)
    np.testing.assert_allclose(ch.phases_to_reference(hkl, [0.3, 1.0]), [0.3, 1.0])


def test_a_change_with_a_translation_shifts_the_phases():
    """An origin-shifted P-1 (inversion centre at ¼,¼,¼): cctbx's change of basis has a
    translation, and phases must follow it (cctbx alone on both sides)."""
    import random

    from cctbx import sgtbx
    from cctbx.development import random_structure
    from scitbx.array_family import flex

    flex.set_random_seed(3)
    random.seed(3)
    sgi = sgtbx.space_group_info("Hall: -P 1 (x-1/4,y-1/4,z-1/4)")
    xs = random_structure.xray_structure(sgi, elements=["C"] * 6 + ["O"] * 2, volume_per_atom=18,
                                         min_distance=1.2, u_iso=0.02, random_u_iso=False)
    xs.scattering_type_registry(table="it1992")
    ops = [op.as_xyz() for op in sgi.group().all_ops()]
    ch = reference_setting(xs.unit_cell().parameters(), ops)
    assert np.abs(ch.translation).max() > 0 and ch.symbol_reference == "P -1"
    hkl = sphere_hkl(xs.unit_cell().parameters(), 1.5)
    f_in, _ = fcalc(xs, hkl)
    xs_ref = xs.change_basis(sgi.change_of_basis_op_to_reference_setting())
    h_ref = ch.hkl_to_reference(hkl)
    fc, _ = fcalc(xs_ref, h_ref)
    phi = ch.phases_to_reference(hkl, np.angle(f_in))
    assert r_factors(np.abs(f_in) * np.exp(1j * phi), fc)[1] < 1e-6
    assert r_factors(f_in, fc)[1] > 0.1  # without the shift they would not agree
    x = np.array(xs.sites_frac())
    np.testing.assert_allclose((ch.xyz_from_reference(np.array(xs_ref.sites_frac())) - x + 0.5) % 1 - 0.5,
                               0, atol=1e-9)


def test_bad_cell_is_refused():
    with pytest.raises(ValueError, match="6 parameters"):
        reference_setting((8, 9, 10), 14)
