import phasenet  # noqa: F401  (first: cctbx import order)

import math

import numpy as np
import pytest

from phasenet.pipeline.build import BuildOptions
from phasenet.physics.normalisation import METHODS, normalise, wilson_fit
from phasenet.pipeline.records import compute_record
from phasenet.reflections import canonical_hkl
from phasenet.structure import AtomicModel, Structure

HKL = canonical_hkl()


def test_linreg_recovers_known_scale_and_offset():
    rng = np.random.default_rng(1)
    i_calc = rng.exponential(100.0, size=4000)
    a, b = 3.7, 25.0
    i_obs = a * i_calc + b + rng.normal(0, 5.0, size=i_calc.size)
    i_obs[::3] = np.nan  # unmeasured
    r = normalise("linreg", i_calc, i_obs)
    assert r.scale == pytest.approx(a, rel=0.01)
    assert r.offset == pytest.approx(b, abs=1.5)
    assert r.n_fit == np.isfinite(i_obs).sum()
    assert r.obs_calc_corr > 0.99
    m = np.isfinite(i_obs)
    assert np.allclose(r.intensity[m], (i_obs[m] - r.offset) / r.scale)
    assert np.isnan(r.intensity[~m]).all()  # unmeasured stays NaN
    # mapped back onto the calculated scale
    assert np.abs(r.intensity[m] - i_calc[m]).mean() < 2.0


def test_linreg_without_observations_is_identity():
    i_calc = np.array([1.0, 2.0, 5.0])
    for i_obs in (None, np.full(3, np.nan)):
        r = normalise("linreg", i_calc, i_obs)
        assert r.scale == 1.0 and r.offset == 0.0
        assert np.array_equal(r.intensity, i_calc)
        assert math.isnan(r.obs_calc_corr)


def test_linreg_negative_slope_is_an_error():
    i_calc = np.arange(1.0, 50.0)
    with pytest.raises(ValueError, match="slope"):
        normalise("linreg", i_calc, 100.0 - i_calc)


@pytest.mark.parametrize("method, stat", [("max", np.max), ("mean", np.mean),
                                          ("median", np.median)])
def test_statistics(method, stat):
    rng = np.random.default_rng(2)
    i_calc = rng.exponential(10.0, size=500)
    r = normalise(method, i_calc)
    assert r.scale == pytest.approx(stat(i_calc))
    assert np.allclose(r.intensity, i_calc / stat(i_calc))
    # with measurements the statistic is of the measurements, NaN stays NaN
    i_obs = 7.0 * i_calc
    i_obs[:100] = np.nan
    r = normalise(method, i_calc, i_obs)
    assert r.scale == pytest.approx(stat(i_obs[100:]))
    assert np.isnan(r.intensity[:100]).all()
    assert r.obs_calc_corr == pytest.approx(1.0)


def test_absent_reflections_are_left_out():
    i_calc = np.array([0.0, 4.0, 8.0, 0.0])
    absent = np.array([True, False, False, True])
    r = normalise("mean", i_calc, absent=absent)
    assert r.scale == 6.0 and r.n_fit == 2


@pytest.mark.parametrize("call", [
    lambda: normalise("fancy", np.ones(3)),
    lambda: BuildOptions(normalisation="fancy"),
])
def test_unknown_method(call):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert "fancy" in msg
    for m in METHODS:
        assert m in msg


def test_wilson_needs_its_inputs():
    with pytest.raises(ValueError, match="stol2"):
        normalise("wilson", np.ones(10))


def test_wilson_fit_recovers_k_and_b():
    rng = np.random.default_rng(3)
    stol2 = rng.uniform(0.01, 0.4, size=3000)
    expected = 100.0 * np.exp(-3.0 * stol2)  # smooth sum of f²
    k, b = 2.5, 1.8
    i = k * expected * np.exp(-2 * b * stol2) * rng.exponential(1.0, size=stol2.size)
    k_fit, b_fit = wilson_fit(i, expected, stol2, n_shells=10)
    assert k_fit == pytest.approx(k, rel=0.1)
    assert b_fit == pytest.approx(b, abs=0.2)


def _random_p1(n_atoms=200, u_iso=0.03, seed=0) -> Structure:
    rng = np.random.default_rng(seed)
    n = n_atoms
    atoms = AtomicModel(
        label=np.array([f"C{i}" for i in range(n)]), element=np.array(["C"] * n),
        charge=np.zeros(n, np.int8), frac=rng.random((n, 3)), occupancy=np.ones(n),
        u_iso=np.full(n, u_iso), u_aniso=np.full((n, 6), np.nan), u_defaulted=np.zeros(n, bool))
    return Structure(source="synthetic", block="p1", cell=(22.0, 24.0, 26.0, 90.0, 90.0, 90.0),
                     symops=("x,y,z",), space_group="P 1", sg_number=1, atoms=atoms)


def test_wilson_on_random_structure():
    u = 0.03
    rec = compute_record(_random_p1(u_iso=u), HKL, normalisation="wilson")
    e2 = rec.intensity
    assert np.mean(e2) == pytest.approx(1.0, abs=1e-6)
    assert rec.norm.wilson_b == pytest.approx(8 * math.pi**2 * u, rel=0.15)
    assert np.mean(np.sqrt(e2)) == pytest.approx(0.886, abs=0.03)  # acentric


@pytest.mark.real_data
@pytest.mark.parametrize("name, space_group, mean_e", [
    ("cod-tools_1.cif", "P -1", 0.798),  # centric
    ("FinalCif_p21c.cif", "P 1 21/c 1", 0.798),
    ("FinalCif_1000006.cif", "P 21 21 21", 0.886),  # acentric
    ("FinalCif_DK_Zucker2_0m.cif", "P 1 21 1", 0.886),
])
def test_wilson_e_statistics_on_real_structures(real_cif, name, space_group, mean_e):
    from phasenet.io.cif import read_cif

    s = read_cif(real_cif(name), read_observations=False)[0]  # calculated intensities
    assert s.space_group == space_group
    rec = compute_record(s, HKL, normalisation="wilson")
    present = rec.intensity_calc > 0
    e2 = rec.intensity[present]
    assert e2.mean() == pytest.approx(1.0, abs=1e-5)
    assert np.all(rec.intensity[~present] == 0)  # absences stay zero
    got = float(np.sqrt(e2).mean())
    assert got == pytest.approx(mean_e, abs=0.05), f"<|E|> = {got:.3f} for {space_group}"
    assert 0 < rec.norm.wilson_b < 10


@pytest.mark.real_data
def test_wilson_on_measured_intensities(structure_of):
    s = structure_of("StructureFinder_P-1.cif")  # paired .fcf with measured F²
    rec = compute_record(s, HKL, normalisation="wilson")
    measured = np.isfinite(rec.intensity_obs)
    assert 1000 < measured.sum() < len(HKL)
    assert np.array_equal(np.isfinite(rec.intensity), measured)
    assert np.nanmean(rec.intensity) == pytest.approx(1.0, abs=1e-4)
    assert np.sqrt(np.clip(rec.intensity[measured], 0, None)).mean() == pytest.approx(0.798, abs=0.06)
    assert rec.norm.obs_calc_corr > 0.99
