"""Origin-invariant phase metrics (phasenet.evaluation.metrics) against hand-computed cases and real structures."""

import phasenet  # noqa: F401  (first: cctbx import order)

from dataclasses import replace

import numpy as np
import pytest

from phasenet.evaluation.maps import atom_recovery
from phasenet.evaluation.metrics import best_origin, map_correlation, mean_phase_error, score_phases, sign_accuracy
from phasenet.evaluation.problem import problem_from_structure, select_atoms
from phasenet.reflections import ORIGIN_SHIFTS_2T, origin_sign_flips

def test_hand_computed_fixed_origin():
    true = np.array([0.0, 0.0, np.pi])
    est = np.array([np.pi / 2, 0.0, 0.0])
    f = np.array([1.0, 2.0, 1.0])
    # |F|-weighted: (1·90 + 2·0 + 1·180) / 4 = 67.5°
    assert mean_phase_error(true, est, f) == pytest.approx(67.5)
    # R = (1·0 + 4·1 + 1·(-1)) / 6
    assert map_correlation(true, est, f) == pytest.approx(0.5)
    # signs: only reflection 2 right; I-weighted 4/6, and R = 2·accuracy − 1
    signs = np.array([np.pi, 0.0, 0.0])
    assert sign_accuracy(true, signs, f) == pytest.approx(4 / 6)
    assert map_correlation(true, signs, f) == pytest.approx(2 * 4 / 6 - 1)
    assert mean_phase_error(true, signs + 2 * np.pi, f) == pytest.approx(90.0)  # wraps


@pytest.fixture(scope="module")
def p1bar(structure_of):
    """A real P-1 structure (StructureFinder_P-1.cif), exact data to 1.0 Å."""
    return problem_from_structure(structure_of("StructureFinder_P-1.cif"), 1.0).truncate(None)


def test_true_phases_score_perfectly_at_every_origin(p1bar):
    flips = origin_sign_flips(p1bar.hkl)
    for k in range(8):
        shifted = np.where(flips[k] < 0, p1bar.phase_true + np.pi, p1bar.phase_true)
        score, aligned = score_phases(p1bar.hkl, p1bar.amplitude, p1bar.phase_true, shifted, p1bar.symops)
        assert score.map_cc == pytest.approx(1.0, abs=1e-9)
        assert score.phase_error == pytest.approx(0.0, abs=1e-6)
        assert score.sign_accuracy == pytest.approx(1.0)
        assert score.solved
        assert np.allclose(2 * np.array(score.origin_shift), ORIGIN_SHIFTS_2T[k])
        if k:  # at the fixed origin the shifted signs are wrong for whole parity classes
            assert map_correlation(p1bar.phase_true, shifted, p1bar.amplitude) < 0.9


def test_random_signs_score_as_chance(p1bar):
    rng = np.random.default_rng(3)
    cc, err = [], []
    for _ in range(5):
        est = np.pi * rng.integers(0, 2, len(p1bar))
        s, _ = score_phases(p1bar.hkl, p1bar.amplitude, p1bar.phase_true, est, p1bar.symops)
        cc.append(s.map_cc)
        err.append(s.phase_error)
        assert s.sign_accuracy == pytest.approx((s.map_cc + 1) / 2)  # R = 2·accuracy − 1 for signs
        assert not s.solved
    assert abs(np.mean(cc)) < 0.12 and 80 < np.mean(err) < 100


def test_eight_shifted_structures_score_as_the_unshifted(structure_of):
    """Move the atoms of a real P2₁/c structure by each t in {0,½}³: every copy scores like the original."""
    s = structure_of("cod-tools_2204271.cif")
    ref = problem_from_structure(s, 1.2).truncate(None)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(ref)) < 0.15, ref.phase_true + np.pi, ref.phase_true)  # 15 % flipped
    base, _ = score_phases(ref.hkl, ref.amplitude, ref.phase_true, noisy, ref.symops)
    for t2 in ORIGIN_SHIFTS_2T:
        moved = replace(s, atoms=replace(s.atoms, frac=s.atoms.frac + t2 / 2.0))
        p = problem_from_structure(moved, 1.2).truncate(None)
        assert np.array_equal(p.hkl, ref.hkl)
        # the moved structure's own phases, as an estimate of the original: perfect
        sc, _ = score_phases(ref.hkl, ref.amplitude, ref.phase_true, p.phase_true, ref.symops)
        assert sc.map_cc == pytest.approx(1.0, abs=1e-6)
        # a noisy estimate scored against the moved truth: same as against the original
        sc2, _ = score_phases(p.hkl, p.amplitude, p.phase_true, noisy, p.symops)
        assert sc2.map_cc == pytest.approx(base.map_cc, abs=1e-9)
        assert sc2.phase_error == pytest.approx(base.phase_error, abs=1e-6)


def test_polar_group_continuous_shift_and_enantiomorph(structure_of):
    s = structure_of("cod-tools_2219444.cif")  # P c a 21: the origin floats along c
    p = problem_from_structure(s, 1.5).truncate(None)
    t = np.array([0.5, 0.0, 0.2345])
    est = -p.phase_true + 2 * np.pi * (p.hkl @ t)  # the inverted structure, shifted along c
    m = best_origin(p.hkl, p.phase_true, est, p.amplitude**2, p.symops)
    assert m.inverted
    assert m.score == pytest.approx(1.0, abs=1e-4)
    score, _ = score_phases(p.hkl, p.amplitude, p.phase_true, est, p.symops)
    assert score.phase_error < 1.0
    assert np.isnan(score.sign_accuracy)


def test_atom_recovery_true_vs_random(structure_of):
    s = structure_of("cod-tools_2204271.cif")
    p = problem_from_structure(s, 1.0).truncate(None)
    atoms = p.non_h_cell_positions()
    assert len(atoms) == 7 * 4 + 2  # 8 non-H sites, Co on an inversion centre (2 copies)
    assert atom_recovery(p.hkl, p.amplitude, p.phase_true, p.cell, atoms) >= 0.95
    rnd = np.pi * np.random.default_rng(1).integers(0, 2, len(p))
    assert atom_recovery(p.hkl, p.amplitude, rnd, p.cell, atoms) < 0.4
    # a lattice translation of the atoms changes nothing
    assert atom_recovery(p.hkl, p.amplitude, p.phase_true, p.cell, atoms + [1, -2, 3]) >= 0.95
    heavy = select_atoms(s.atoms, s.atoms.element == "Co")
    assert len(heavy) == 1


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        score_phases(np.zeros((3, 3)), np.ones(3), np.zeros(3), np.zeros(2), ("x,y,z",))
