"""Answer-free figures of merit (phasenet.physics.figures_of_merit) on real structures:
true phases beat random ones on every figure; origin shifts change nothing."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.physics.figures_of_merit import KEYS, figures_of_merit, expand_phased
from phasenet.physics.structure_factors import structure_factors
from phasenet.physics.wilson import normalise_amplitudes
from phasenet.reflections import ORIGIN_SHIFTS_2T, origin_sign_flips, sphere_hkl
from phasenet.symmetry import symmetry
from tests.conftest import first_structure


def phased(path, d_min=1.0):
    """(hkl, |E|, true phases, cell, Symmetry) of a structure's model."""
    s = first_structure(path)
    sym = symmetry(s.symops)
    hkl = sphere_hkl(s.cell, d_min)
    hkl = hkl[~sym.systematic_absences(hkl)]
    f = structure_factors(s, hkl, dtype=np.float64)
    e = normalise_amplitudes(hkl, np.abs(f), s.cell, sym).e
    return hkl, e, np.angle(f), s.cell, sym


@pytest.fixture(scope="module", params=["p-1_organic.cif", "p21n_aniso.cif"])
def case(request, test_data):
    return phased(test_data(request.param))


def test_true_phases_beat_random_on_every_figure(case):
    hkl, e, phi, cell, sym = case
    true = figures_of_merit(hkl, e, phi, cell, sym)
    assert tuple(true) == KEYS
    rng = np.random.default_rng(1)
    for trial in range(3):
        rand = rng.uniform(0, 2 * np.pi, len(phi))
        if sym.has_origin_inversion:
            rand = np.where(rng.random(len(phi)) < 0.5, 0.0, np.pi)
        r = figures_of_merit(hkl, e, rand, cell, sym)
        assert true["skewness"] > r["skewness"] + 2.0, (true, r)
        assert true["sharpness"] > 2 * r["sharpness"], (true, r)
        assert true["negativity"] < r["negativity"], (true, r)  # lower is better
        assert true["triplet_consistency"] > r["triplet_consistency"] + 0.5, (true, r)
        assert true["fom"] > r["fom"] + 0.5
    assert true["triplet_consistency"] > 0.8
    assert true["fom"] == true["triplet_consistency"]


def test_figures_fall_with_the_fraction_of_wrong_phases(case):
    hkl, e, phi, cell, sym = case
    rng = np.random.default_rng(2)
    wrong = rng.random(len(phi))
    noise = rng.uniform(0, 2 * np.pi, len(phi))
    foms = [figures_of_merit(hkl, e, np.where(wrong < frac, noise, phi), cell, sym)["fom"]
            for frac in (0.0, 0.25, 0.5, 1.0)]
    assert all(a > b for a, b in zip(foms, foms[1:])), foms


def test_invariant_to_permissible_origin_shifts(test_data):
    hkl, e, phi, cell, sym = phased(test_data("p-1_organic.cif"))
    assert sym.has_origin_inversion
    base = figures_of_merit(hkl, e, phi, cell, sym)
    flips = origin_sign_flips(hkl)
    for k in range(1, 8):  # every t in {0, 1/2}^3 other than 0
        shifted = np.mod(phi + np.pi * (flips[k] < 0), 2 * np.pi)
        assert not np.allclose(np.cos(shifted), np.cos(phi))
        got = figures_of_merit(hkl, e, shifted, cell, sym)
        for key in KEYS:
            assert got[key] == pytest.approx(base[key], rel=1e-6, abs=1e-9), (ORIGIN_SHIFTS_2T[k], key)


def test_p21n_origin_shift_by_symmetry_is_invariant(test_data):
    hkl, e, phi, cell, sym = phased(test_data("p21n_aniso.cif"))
    base = figures_of_merit(hkl, e, phi, cell, sym)
    shifts = sym.origin_shifts()
    assert len(shifts) == 8
    for t in shifts[1:]:
        got = figures_of_merit(hkl, e, phi - 2 * np.pi * hkl @ t, cell, sym)
        assert got["triplet_consistency"] == pytest.approx(base["triplet_consistency"], abs=1e-9)
        assert got["skewness"] == pytest.approx(base["skewness"], rel=1e-6)


def test_symmetry_expansion_matches_structure_factors_of_the_equivalents(test_data):
    """The phases given to equivalents are those structure_factors computes for them."""
    s = first_structure(test_data("p21n_aniso.cif"))
    sym = symmetry(s.symops)
    hkl = sphere_hkl(s.cell, 2.0)
    hkl = hkl[~sym.systematic_absences(hkl)][:50]
    f = structure_factors(s, hkl, dtype=np.float64)
    full, amp, ph = expand_phased(hkl, np.abs(f), np.angle(f), sym)
    assert len(full) > 2 * len(hkl)  # equivalents and Friedel mates added
    f_full = structure_factors(s, full, dtype=np.float64)
    np.testing.assert_allclose(amp, np.abs(f_full), rtol=1e-6)
    strong = amp > 0.05 * amp.max()
    d = np.angle(np.exp(1j * (ph - np.angle(f_full))))
    assert np.abs(d[strong]).max() < 1e-4


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        figures_of_merit(np.zeros((3, 3), int), np.ones(2), np.ones(3), (5, 5, 5, 90, 90, 90), 1)
    with pytest.raises(ValueError, match="no reflection"):
        figures_of_merit(np.array([[1, 0, 0]]), [np.nan], [0.0], (5, 5, 5, 90, 90, 90), 1)
