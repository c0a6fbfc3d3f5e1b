"""ReflectionData: d-spacings against cctbx, truncation, selection, amplitudes, masks,
immutability."""

import phasenet  # noqa: F401  (first: cctbx import order)

import dataclasses
import doctest

import numpy as np
import pytest
from cctbx import crystal, miller, sgtbx, uctbx
from cctbx.array_family import flex

import phasenet.reflection_data
from phasenet.reflection_data import ReflectionData, amplitudes
from phasenet.reflections import d_spacings as d_spacing, resolution_mask
from phasenet.reflections import canonical_hkl

MONOCLINIC = (7.716, 8.664, 10.812, 90.0, 102.982, 90.0)
TRICLINIC = (9.7438, 9.9224, 10.984, 64.086, 78.354, 63.503)
P21C = ("x,y,z", "-x,y+1/2,-z+1/2", "-x,-y,-z", "x,-y-1/2,z-1/2")


def _cctbx_d(hkl, cell):
    return np.array(uctbx.unit_cell(cell).d(flex.miller_index([tuple(map(int, h)) for h in hkl])))


def _data(cell=MONOCLINIC, symops=P21C, r2_max=50, seed=0):
    hkl = canonical_hkl(10, r2_max)
    rng = np.random.default_rng(seed)
    n = len(hkl)
    i_obs = rng.exponential(1.0, n).astype(np.float32)
    i_obs[rng.random(n) < 0.3] = np.nan
    return ReflectionData(hkl=hkl, cell=cell, symops=symops, space_group="P 1 21/c 1",
                          intensity_calc=rng.exponential(1.0, n).astype(np.float32),
                          phase_calc=rng.uniform(-np.pi, np.pi, n).astype(np.float32),
                          intensity_obs=i_obs,
                          intensity=rng.exponential(1.0, n).astype(np.float32),
                          sign=rng.integers(-1, 2, n).astype(np.int8))


@pytest.mark.parametrize("cell", [MONOCLINIC, TRICLINIC, (5.0, 5.0, 12.0, 90.0, 90.0, 120.0)])
def test_d_spacing_equals_cctbx(cell):
    data = _data(cell=cell, r2_max=None)
    want = _cctbx_d(data.hkl, cell)
    assert np.allclose(data.d_spacing, want, rtol=1e-12, atol=0)
    assert np.allclose(d_spacing(data.hkl, cell), want, rtol=1e-12, atol=0)
    assert data.d_min == pytest.approx(want.min(), rel=1e-12)


@pytest.mark.parametrize("d_min", [3.0, 1.5, 0.9])
def test_truncate_keeps_exactly_d_at_least_d_min(d_min):
    data = _data(cell=TRICLINIC)
    d = _cctbx_d(data.hkl, TRICLINIC)
    keep = d >= d_min
    assert 0 < keep.sum() < len(data) or d_min == 0.9
    t = data.truncate(d_min)
    assert type(t) is ReflectionData and t is not data
    assert len(t) == keep.sum() and np.array_equal(t.hkl, data.hkl[keep])
    assert (t.d_spacing >= d_min - 1e-9).all()
    for k in ReflectionData.ARRAYS:
        assert np.array_equal(getattr(t, k), getattr(data, k)[keep], equal_nan=k != "sign"), k
    assert (t.cell, t.symops, t.space_group) == (data.cell, data.symops, data.space_group)
    assert data.truncate(None).equals(data)
    assert len(data) == len(canonical_hkl(10, 50))  # the original is unchanged


def test_truncate_rejects_non_positive_d_min():
    with pytest.raises(ValueError, match="d_min must be positive"):
        _data().truncate(0.0)
    with pytest.raises(ValueError, match="d_min must be positive"):
        resolution_mask(np.zeros((1, 3)), MONOCLINIC, -1.0)


def test_select_mask_and_indices():
    data = _data()
    idx = np.array([5, 0, 17])
    s = data.select(idx)
    assert np.array_equal(s.hkl, data.hkl[idx]) and np.array_equal(s.sign, data.sign[idx])
    mask = np.zeros(len(data), bool)
    mask[idx] = True
    assert data.select(mask).equals(data.select(np.sort(idx)))
    with pytest.raises(ValueError, match="mask of"):
        data.select(mask[:-1])


def test_immutability():
    data = _data()
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.cell = TRICLINIC
    for k in ("hkl",) + ReflectionData.ARRAYS:
        with pytest.raises(ValueError, match="read-only"):
            getattr(data, k)[0] = 0
    # the caller's arrays keep their own flags (the object holds read-only views)
    mine = np.ones(len(data), np.float32)
    other = dataclasses.replace(data, intensity=mine)
    mine[0] = 7.0
    assert mine.flags.writeable and other.intensity[0] == 7.0
    assert data.intensity[0] != 7.0
    before = data.intensity_calc.copy()
    data.truncate(2.0)
    data.select([0, 1])
    assert np.array_equal(data.intensity_calc, before) and len(data) == len(before)


def test_shape_checks():
    hkl = canonical_hkl(3)
    with pytest.raises(ValueError, match=r"intensity has 3 values for \d+ reflections"):
        ReflectionData(hkl=hkl, cell=MONOCLINIC, symops=P21C, intensity=np.zeros(3))
    with pytest.raises(ValueError, match=r"hkl must have shape \(R, 3\)"):
        ReflectionData(hkl=np.zeros((4, 2), int), cell=MONOCLINIC, symops=P21C)
    with pytest.raises(ValueError, match="cell must hold 6 numbers"):
        ReflectionData(hkl=hkl, cell=(1.0, 2.0, 3.0), symops=P21C)


def test_amplitudes():
    data = _data()
    assert np.allclose(data.amplitude(), np.sqrt(data.intensity_calc.astype(float)))
    obs = data.amplitude("obs")
    measured = np.isfinite(data.intensity_obs)
    assert np.array_equal(data.observed, measured)
    assert np.all(obs[~measured] == 0)
    assert np.allclose(obs[measured], np.sqrt(data.intensity_obs[measured].astype(float)))
    # an absent reflection (I_calc = 0) has no amplitude even where something was measured
    i_calc = data.intensity_calc.copy()
    i_calc[np.flatnonzero(measured)[0]] = 0
    assert amplitudes(i_calc, data.intensity_obs, "obs")[np.flatnonzero(measured)[0]] == 0
    with pytest.raises(ValueError, match="amplitude source must be one of"):
        data.amplitude("fobs")
    bare = ReflectionData(hkl=data.hkl, cell=data.cell, symops=data.symops)
    assert not bare.observed.any()
    with pytest.raises(ValueError, match="no intensity_calc"):
        bare.amplitude()


P21 = ("x,y,z", "-x,y+1/2,-z")
P212121 = ("x,y,z", "-x+1/2,-y,z+1/2", "-x,y+1/2,-z+1/2", "x+1/2,-y+1/2,-z")


@pytest.mark.parametrize("symops,all_centric", [(P21C, True), (P21, False), (P212121, False)])
def test_absent_and_centric_masks_equal_cctbx(symops, all_centric):
    cell = (7.716, 8.664, 10.812, 90.0, 90.0, 90.0) if symops is P212121 else MONOCLINIC
    data = dataclasses.replace(_data(r2_max=None), cell=cell, symops=symops)
    sg = sgtbx.space_group()
    for op in symops[1:]:
        sg.expand_smx(op)
    ms = miller.set(crystal.symmetry(unit_cell=cell, space_group=sg),
                    flex.miller_index([tuple(map(int, h)) for h in data.hkl]), anomalous_flag=True)
    assert np.array_equal(data.absent, np.array(ms.sys_absent_flags().data()))
    assert np.array_equal(data.centric, np.array(ms.centric_flags().data()))
    assert data.absent.any() and data.centric.any() and data.centric.all() == all_centric


def test_module_doctests():
    result = doctest.testmod(phasenet.reflection_data, verbose=False)
    assert result.attempted > 0 and result.failed == 0
