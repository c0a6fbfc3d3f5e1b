"""Answer-free normalisation (phasenet.physics.wilson) on structures made by cctbx."""

import phasenet  # noqa: F401  (first: cctbx import order)

import numpy as np
import pytest

from phasenet.physics.wilson import (MEAN_E_ACENTRIC, MEAN_E_CENTRIC, composition_from_formula,
                                     normalise_amplitudes)


def cctbx_amplitudes(sg: str, n_atoms: int, d_min: float, u_iso: float = 0.025, seed: int = 0,
                     elements=("C", "N", "O")):
    """(hkl, |F|, cell, centric flags, composition per cell) of a random structure, by cctbx alone."""
    from cctbx import sgtbx
    from cctbx.development import random_structure
    from scitbx.array_family import flex

    flex.set_random_seed(seed)
    import random
    random.seed(seed)
    sgi = sgtbx.space_group_info(sg)
    els = [elements[i % len(elements)] for i in range(n_atoms)]
    xs = random_structure.xray_structure(sgi, elements=els, u_iso=u_iso, volume_per_atom=18,
                                         min_distance=1.2, random_u_iso=False)
    xs.scattering_type_registry(table="it1992")
    f = xs.structure_factors(d_min=d_min, algorithm="direct").f_calc()
    f = f.select(~f.sys_absent_flags().data())
    hkl = np.array(f.indices(), dtype=np.int64)
    amp = np.abs(np.array(f.data()))
    centric = np.array(f.centric_flags().data(), dtype=bool)
    cctbx_amplitudes.epsilon = np.array(f.epsilons().data(), dtype=float)
    n_cell = len(sgi.group())
    comp = {}
    for e in els:
        comp[e] = comp.get(e, 0) + n_cell
    return hkl, amp, xs.unit_cell().parameters(), centric, comp, sgi.type().hall_symbol()


@pytest.mark.parametrize("composition", [False, True])
def test_acentric_p1_moments(composition):
    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes("P1", 60, 0.9)
    r = normalise_amplitudes(hkl, amp, cell, "P 1", composition=comp if composition else None)
    assert not centric.any() and r.mask.all()
    assert np.mean(r.e2) == pytest.approx(1.0, abs=0.02)
    assert np.mean(r.e) == pytest.approx(MEAN_E_ACENTRIC, abs=0.02)
    assert np.mean(np.abs(r.e2 - 1)) == pytest.approx(0.736, abs=0.04)


def test_centric_pbar1_moments():
    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes("P-1", 40, 0.9)
    r = normalise_amplitudes(hkl, amp, cell, "P -1", composition=comp)
    assert centric.all()
    assert np.mean(r.e2) == pytest.approx(1.0, abs=0.02)
    assert np.mean(r.e) == pytest.approx(MEAN_E_CENTRIC, abs=0.02)
    assert np.mean(np.abs(r.e2 - 1)) == pytest.approx(0.968, abs=0.05)


@pytest.mark.parametrize("sg", ["P 1 21 1", "P 1 21/c 1"])
def test_centric_zones_and_epsilon(sg):
    """P2₁: h0l centric, the rest acentric; P2₁/c: all centric. ε as cctbx's (primitive)."""
    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes(sg, 30, 0.8, seed=1)
    r = normalise_amplitudes(hkl, amp, cell, hall, composition=comp)
    assert centric.any() and (sg == "P 1 21/c 1") == centric.all()
    if (~centric).any():
        assert np.mean(r.e[~centric]) == pytest.approx(MEAN_E_ACENTRIC, abs=0.03)
    assert np.mean(r.e[centric]) == pytest.approx(MEAN_E_CENTRIC, abs=0.04 if centric.all() else 0.08)
    np.testing.assert_array_equal(r.epsilon, cctbx_amplitudes.epsilon)
    assert (r.epsilon[(hkl[:, 0] == 0) & (hkl[:, 2] == 0)] == 2).all()  # 0k0
    # reflections with ε = 2 are normalised on their own expectation (not twice too strong);
    # P2₁/c has the whole h0l zone at ε = 2, P2₁ only a few 0k0
    if (r.epsilon == 2).sum() >= 100:
        assert np.mean(r.e2[r.epsilon == 2]) == pytest.approx(1.0, abs=0.15)


def test_wilson_plot_recovers_b_and_scale():
    u = 0.03
    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes("P1", 80, 0.8, u_iso=u, seed=2)
    r = normalise_amplitudes(hkl, 3.0 * amp, cell, "P 1", composition=comp)
    assert r.method == "wilson-plot"
    assert r.b == pytest.approx(8 * np.pi**2 * u, abs=0.35)
    assert r.scale == pytest.approx(9.0, rel=0.15)


@pytest.mark.parametrize("composition", [False, True])
def test_scale_invariant_and_only_given_reflections_used(composition):
    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes("P-1", 30, 1.0, seed=3)
    kw = {"composition": comp if composition else None}
    a = normalise_amplitudes(hkl, amp, cell, "P -1", **kw)
    b = normalise_amplitudes(hkl, 7.5 * amp, cell, "P -1", **kw)
    np.testing.assert_allclose(a.e, b.e, rtol=1e-9)
    # reflections not given (NaN) get |E| = 0, mask False, and do not change the others'
    # statistics beyond their share: the given ones still average <|E|²> = 1
    hidden = np.zeros(len(amp), bool)
    hidden[::3] = True
    c = normalise_amplitudes(hkl, np.where(hidden, np.nan, amp), cell, "P -1", **kw)
    assert not c.mask[hidden].any() and (c.e[hidden] == 0).all()
    assert np.mean(c.e2[~hidden]) == pytest.approx(1.0, abs=1e-9 if composition else 0.02)


def test_intensities_and_absences():
    hkl = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 0]] * 20)
    i = np.r_[np.full(99, 4.0), -1.0]
    r = normalise_amplitudes(hkl, i, (5, 6, 7, 90, 90, 90), "P 21 21 21", intensities=True)
    # h00, 0k0, 00l with odd index are absent in P212121; 000 is never normalised
    assert not r.mask[(hkl == [1, 0, 0]).all(1) | (hkl == [0, 0, 0]).all(1)].any()
    assert r.mask[(hkl == [1, 1, 0]).all(1)][:-1].all() and r.e[-1] == 0.0  # I < 0 counts as 0


def test_composition_from_formula_and_errors():
    assert composition_from_formula("C14 H10 N2 O2", 4) == {"C": 56, "H": 40, "N": 8, "O": 8}
    with pytest.raises(ValueError, match="no elements"):
        composition_from_formula("123")
    with pytest.raises(ValueError, match="no reflections"):
        normalise_amplitudes([[1, 0, 0]], [np.nan], (5, 5, 5, 90, 90, 90), "P 1")


def test_network_input_sees_only_what_is_given():
    from phasenet.reflections import canonical_hkl, d_spacings
    from phasenet.training.inputs import network_input

    hkl, amp, cell, centric, comp, hall = cctbx_amplitudes("P-1", 30, 0.8, seed=4)
    grid = canonical_hkl(10, 50)
    full = network_input(grid, hkl, amp, cell, "P -1")
    cut = network_input(grid, hkl, amp, cell, "P -1", d_min=2.0)
    d_grid = d_spacings(grid, cell)
    assert cut.mask[d_grid < 2.0 - 1e-9].sum() == 0 and (cut.e2[cut.mask == 0] == 0).all()
    assert cut.n_given < full.n_given and cut.mask.sum() <= full.mask.sum()
    # changing amplitudes beyond d_min changes nothing the network sees
    noisy = np.where(d_spacings(hkl, cell) < 2.0, amp * 5 + 1, amp)
    again = network_input(grid, hkl, noisy, cell, "P -1", d_min=2.0)
    np.testing.assert_array_equal(again.e2, cut.e2)
    np.testing.assert_array_equal(again.mask, cut.mask)
    # Friedel mates map onto the grid's representatives
    mates = network_input(grid, -hkl, amp, cell, "P -1", d_min=2.0)
    np.testing.assert_array_equal(mates.e2, cut.e2)
