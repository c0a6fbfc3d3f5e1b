"""Phasing problems read from a dataset row equal the stored arrays (h5py), for both
amplitude sources, and truncate into new problems."""

import phasenet  # noqa: F401  (first: cctbx import order)

import h5py
import numpy as np
import pytest

from phasenet import BuildOptions, build_dataset
from phasenet.evaluation.problem import DatasetRows, problem_from_dataset

FILE = "FinalCif_alert_example.cif"  # P-1 with embedded measured reflections


@pytest.fixture(scope="module")
def obs_h5(real_cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("problem") / "obs.h5"
    build_dataset([real_cif_dir / FILE], out, BuildOptions(r2_max=50, workers=1), progress=False)
    return out


@pytest.mark.real_data
def test_problem_from_dataset_equals_the_stored_row(obs_h5):
    with h5py.File(obs_h5, "r") as h5:
        i_calc = h5["intensity_calc"][0].astype(float)
        i_obs = h5["intensity_obs"][0].astype(float)
        phase = h5["phase_calc"][0].astype(float)
        hkl = h5["hkl"][...]
        cell = tuple(h5["structures/cell"][0])
        n_atoms = int(h5["structures/n_atoms"][0])
    calc = problem_from_dataset(obs_h5, 0)
    obs = problem_from_dataset(obs_h5, 0, "obs")
    assert np.array_equal(calc.hkl, hkl) and calc.hkl.dtype == np.int64 and calc.cell == cell
    assert np.array_equal(calc.amplitude, np.sqrt(i_calc)) and np.array_equal(calc.phase_true, phase)
    measured = np.isfinite(i_obs) & (i_calc > 0)
    assert 0 < measured.sum() < len(hkl)
    want = np.where(measured, np.sqrt(np.maximum(np.nan_to_num(i_obs), 0)), 0)
    assert np.array_equal(obs.amplitude, want)
    assert len(calc.atoms) == n_atoms and calc.centric_origin
    # truncation: a new problem with the reflections given, d >= d_min: for obs the
    # measured ones, weak ones (I_obs <= 0, amplitude 0) kept (issue 12: they used to be
    # dropped with the unmeasured ones); absent and unmeasured dropped
    t = obs.truncate(1.2)
    high = obs.reflections.d_spacing >= 1.2 - 1e-9
    assert len(t) == int((measured & high).sum()) > int(((want > 0) & high).sum()) > 0
    assert (t.amplitude >= 0).all() and (t.amplitude == 0).sum() == int((measured & high & (want == 0)).sum())
    assert t.d_min >= 1.2 - 1e-9 and len(obs) == len(hkl)
    assert len(calc.truncate(1.2)) == int(((i_calc > 0) & high).sum())
    with pytest.raises(ValueError, match="amplitude_source must be"):
        type(obs)(id="x", reflections=obs.reflections, atoms=None, amplitude_source="fobs")
    with pytest.raises(ValueError, match="amplitudes must be 'calc' or 'obs'"):
        DatasetRows(obs_h5, "fobs")
    with DatasetRows(obs_h5) as rows, pytest.raises(IndexError, match="out of range"):
        rows.problem(1)
