"""Realism statistics of one structure (phasenet.structure_stats) on hand-made and real cases."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.structure import AtomicModel, Structure
from phasenet.structure_stats import (E2M1_ACENTRIC, E2M1_CENTRIC, crystal_geometry,
                                      structure_stats, volume_per_non_h_atom, wilson_statistic)

P1 = ("x,y,z",)
P_1 = ("x,y,z", "-x,-y,-z")
P21C = ("x,y,z", "-x,y+1/2,-z+1/2", "-x,-y,-z", "x,-y+1/2,z+1/2")
P212121 = ("x,y,z", "-x+1/2,-y,z+1/2", "-x,y+1/2,-z+1/2", "x+1/2,-y+1/2,-z")


def make(cell, symops, elements, frac, occupancy=None, u=0.03) -> Structure:
    n = len(elements)
    atoms = AtomicModel(
        label=np.array([f"{e}{i}" for i, e in enumerate(elements)]), element=np.array(elements),
        charge=np.zeros(n, np.int8), frac=np.array(frac, dtype=float),
        occupancy=np.ones(n) if occupancy is None else np.array(occupancy, dtype=float),
        u_iso=np.full(n, u), u_aniso=np.full((n, 6), np.nan), u_defaulted=np.zeros(n, bool))
    return Structure("hand.cif", "hand", tuple(map(float, cell)), tuple(symops), "", 0, atoms)


def test_two_atom_molecule_in_big_p1_cell():
    s = make((20, 20, 20, 90, 90, 90), P1, ["C", "C"], [[0.5, 0.5, 0.5], [0.577, 0.5, 0.5]])
    g = crystal_geometry(s)
    assert g.bond_length == pytest.approx([1.54], abs=1e-9)
    assert g.bond_elements.tolist() == [["C", "C"]]
    assert g.n_molecules_cell == 1 and not g.extended
    # nearest other molecule is the translate along a: 20 - 1.54 Å
    assert g.shortest_contact == pytest.approx(18.46, abs=1e-9)
    assert g.contact_elements == ("C", "C")
    assert np.isnan(g.shortest_contact_h) and not g.has_h
    assert g.volume_per_non_h == pytest.approx(4000.0)
    assert volume_per_non_h_atom(s) == pytest.approx(4000.0)


def test_bond_across_inversion_centre_and_lattice_translation():
    # one C at x = 0.075 of a 10 Å cube in P-1: its partner is the inversion image at
    # x = -0.075 (stored as 0.925, so the bond also needs a lattice translation)
    s = make((10, 10, 10, 90, 90, 90), P_1, ["C"], [[0.075, 0.0, 0.0]])
    g = crystal_geometry(s)
    assert g.bond_length == pytest.approx([1.5], abs=1e-9)  # one independent bond
    assert g.n_molecules_cell == 1 and not g.extended
    assert g.shortest_contact == pytest.approx(8.5, abs=1e-9)  # 0.925 -> 1.075 along a
    assert g.volume_per_non_h == pytest.approx(500.0)


def test_same_crystal_in_p21c_and_expanded_to_p1_agree():
    # a small rigid "molecule" (C-C-O-H) away from the symmetry elements
    mol = np.array([[0.0, 0.0, 0.0], [1.52, 0.0, 0.0], [2.0, 1.35, 0.0], [2.9, 1.4, 0.3]])
    cell = (7.0, 8.0, 9.0, 90.0, 101.0, 90.0)
    import gemmi

    uc = gemmi.UnitCell(*cell)
    frac = np.array([uc.fractionalize(gemmi.Position(*(p + [2.0, 2.5, 2.0]))).tolist() for p in mol])
    els = ["C", "C", "O", "H"]
    s = make(cell, P21C, els, frac)
    ops = [gemmi.Op(t) for t in P21C]
    all_frac = np.array([op.apply_to_xyz(list(f)) for op in ops for f in frac])
    s1 = make(cell, P1, els * 4, all_frac)
    g, g1 = crystal_geometry(s), crystal_geometry(s1)
    assert set(np.round(g.bond_length, 6)) == set(np.round(g1.bond_length, 6))
    assert len(g.bond_length) == 3 and len(g1.bond_length) == 12
    assert g.n_molecules_cell == g1.n_molecules_cell == 4
    assert g.shortest_contact == pytest.approx(g1.shortest_contact, abs=1e-9)
    assert g.shortest_contact_h == pytest.approx(g1.shortest_contact_h, abs=1e-9)
    assert g.volume_per_non_h == pytest.approx(g1.volume_per_non_h)
    assert g.volume_per_non_h == pytest.approx(uc.volume / 12)


def test_periodic_chain_is_extended_and_has_no_contact():
    s = make((3.0, 10, 10, 90, 90, 90), P1, ["C", "C"], [[0.0, 0.5, 0.5], [0.5, 0.5, 0.5]])
    g = crystal_geometry(s)
    assert g.extended
    # (the two bonds C0-C1 and C1-C0' join the same pair of asymmetric-unit atoms with the
    # same length, so they count as one independent bond: see the module docstring)
    assert g.bond_length == pytest.approx([1.5])
    assert np.isnan(g.shortest_contact)


def test_overlapping_disorder_sites_are_not_bonds():
    s = make((20, 20, 20, 90, 90, 90), P1, ["C", "C", "C"],
             [[0.5, 0.5, 0.5], [0.577, 0.5, 0.5], [0.58, 0.51, 0.5]], occupancy=[1, 0.5, 0.5])
    g = crystal_geometry(s)
    assert g.disordered and g.n_overlaps == 1
    assert g.n_molecules_cell == 1
    assert g.volume_per_non_h == pytest.approx(8000.0 / 2.0)
    assert (g.bond_length > 1.5).all() and len(g.bond_length) == 2


@pytest.mark.real_data
def test_real_structure(structure_of):
    # C16 H22 N2 O3 S, P21/n, ordered, hydrogens included
    s = structure_of("FinalCif_1508702.cif")
    g = crystal_geometry(s)
    cc = g.bonds("C", "C")
    assert len(cc) >= 8
    assert ((cc > 1.3) & (cc < 1.6)).all(), cc
    ch = g.bonds("C", "H")
    assert len(ch) and ((ch > 0.85) & (ch < 1.1)).all()
    assert 12 <= g.volume_per_non_h <= 25
    assert g.shortest_contact >= 2.0 and g.shortest_contact_h >= 1.5
    assert g.shortest_contact_h <= g.shortest_contact
    assert not g.extended and g.n_molecules_cell == 4  # Z = 4, one molecule per asu
    assert g.n_overlaps == 0
    w = wilson_statistic(s)
    assert w.centrosymmetric and 0.85 < w.mean_abs_e2m1 < 1.1
    row = structure_stats(s)
    assert row["n_bonds"] == len(g.bond_length) and row["centrosymmetric"]


def _random_structure(symops, n, seed, cell=(14.0, 15.0, 16.0, 80.0, 85.0, 95.0)):
    rng = np.random.default_rng(seed)
    return make(cell, symops, ["C"] * n, rng.random((n, 3)))


# Many equal atoms at random positions follow Wilson's centric/acentric distributions.
# Measured over 10 seeds, one 100-atom structure gives <|E²-1|> = 0.969 ± 0.009 (P-1),
# 0.735 ± 0.006 (P1) and 0.736 ± 0.016 (P212121: the grid holds each independent
# reflection 4 times, so fewer independent values); the mean of four structures has
# sigma <= 0.008, so 0.03 is >= 4 sigma while the two theories are 0.23 apart. (The
# finite number of atoms biases the statistic by O(1/N), ~0.01 here.)
@pytest.mark.parametrize("symops,expected,orthogonal", [
    (P_1, E2M1_CENTRIC, False), (P1, E2M1_ACENTRIC, False), (P212121, E2M1_ACENTRIC, True)])
def test_wilson_statistic_of_random_atoms(symops, expected, orthogonal):
    cell = (14.0, 15.0, 16.0, 90.0, 90.0, 90.0) if orthogonal else (14.0, 15.0, 16.0, 80.0, 85.0, 95.0)
    vals = [wilson_statistic(_random_structure(symops, 100, seed, cell)) for seed in range(4)]
    m = np.mean([v.mean_abs_e2m1 for v in vals])
    assert m == pytest.approx(expected, abs=0.03)
    assert all(v.centrosymmetric == (symops == P_1) for v in vals)
    assert all(v.n_reflections > 4000 for v in vals)
