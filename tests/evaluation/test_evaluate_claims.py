"""The README's promises about `phasenet evaluate`, each asserted: `--reflections sphere`,
`--amplitudes obs`, the completeness column, the success-rate formula, the hard time-out,
and `--method model:RUN_DIR` with a real trained run."""

import phasenet  # noqa: F401  (first: cctbx import order)


import h5py
import numpy as np
import pandas as pd
import pytest

from phasenet.cli import EXIT_FAILURES, EXIT_OK, main
from phasenet.evaluation import evaluate as evaluate_module
from phasenet.baselines import charge_flipping as charge_flipping_module
from phasenet.evaluation.evaluate import EvaluateOptions, evaluate_dataset, summarise, summary_markdown
from tests.training_helpers import REPO, make_dataset, run_phasenet

#: P-1 with measured reflections (fcf) that fit the model; a = 7.9, b = 9.0, c = 11.4 Å, so
#: the dataset's [-10, 10] box holds the whole 2 Å sphere but cuts the 0.8 Å one (c > 8 Å).
OBS_FILE = "StructureFinder_P-1.cif"


def inv_d2(hkl, cell) -> np.ndarray:
    """1/d² from the reciprocal metric tensor (independent of phasenet's own resolution code)."""
    a, b, c = cell[:3]
    ca, cb, cg = np.cos(np.radians(cell[3:]))
    g = np.array([[a * a, a * b * cg, a * c * cb], [a * b * cg, b * b, b * c * ca], [a * c * cb, b * c * ca, c * c]])
    h = np.asarray(hkl, float)
    return np.einsum("ni,ij,nj->n", h, np.linalg.inv(g), h)


def sphere_count(cell, d_min) -> int:
    """Reflections with d >= d_min, one of each Friedel pair, counted in a box large
    enough for the cell."""
    m = int(max(cell[:3]) / d_min) + 2
    h = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    h = h[np.any(h != 0, axis=1)]
    return int((inv_d2(h, cell) <= 1 / d_min**2 + 1e-9).sum()) // 2


def in_sphere(h5_path, d_min, measured=False) -> np.ndarray:
    """Mask of the dataset's reflections with d >= d_min and I_calc > 0 (and measured,
    weak ones included: I_obs <= 0 is a measurement too)."""
    with h5py.File(h5_path, "r") as h5:
        hkl, cell = h5["hkl"][:], tuple(map(float, h5["structures/cell"][0]))
        keep = h5["intensity_calc"][0] > 0
        if measured:
            keep &= np.isfinite(h5["intensity_obs"][0])
    return keep & (inv_d2(hkl, cell) <= 1 / d_min**2 + 1e-9)


def dataset_count(h5_path, d_min, measured=False) -> int:
    return int(in_sphere(h5_path, d_min, measured).sum())


@pytest.fixture(scope="module")
def obs_h5(real_cif, tmp_path_factory):
    out = tmp_path_factory.mktemp("obs") / "obs.h5"
    assert main(["build", str(real_cif(OBS_FILE)), "-o", str(out), "--workers", "1", "--quiet"]) == EXIT_OK
    with h5py.File(out, "r") as h5:
        assert h5["structures/has_obs"][0] and h5["structures/centric_origin"][0]
    return out


def _rows(h5, tmp_path, name, **opts):
    res = evaluate_dataset(h5, tmp_path / name, EvaluateOptions(methods=("true",), d_min=(0.8, 2.0),
                                                                atom_recovery=False, **opts), progress=False)
    assert (res.rows.status == "ok").all(), res.rows[["status", "reason"]]
    return res.rows.set_index("d_min")


def test_completeness_reports_the_sphere_the_box_cuts(obs_h5, tmp_path):
    """Default reflections: the dataset's own with d >= d_min; completeness = those / the
    complete sphere to d_min, below 1 once a cell edge exceeds 10 d_min."""
    rows = _rows(obs_h5, tmp_path, "dataset")
    with h5py.File(obs_h5, "r") as h5:
        cell = tuple(map(float, h5["structures/cell"][0]))
    for d in (0.8, 2.0):
        assert rows.loc[d, "n_reflections"] == dataset_count(obs_h5, d)
        assert rows.loc[d, "completeness"] == pytest.approx(dataset_count(obs_h5, d) / sphere_count(cell, d))
    assert max(cell[:3]) > 10 * 0.8 and rows.loc[0.8, "completeness"] < 0.95  # the box cuts the 0.8 Å sphere
    assert max(cell[:3]) < 10 * 2.0 and rows.loc[2.0, "completeness"] == pytest.approx(1.0)
    assert np.allclose(rows.map_cc, 1.0)


def test_reflections_sphere_recomputes_the_complete_sphere(obs_h5, tmp_path):
    """--reflections sphere: exact amplitudes from the stored atoms on the complete sphere
    (P-1: no absences, so every reflection of the sphere), completeness 1. (Models take the
    sphere too since issue 12: tests/evaluation/test_honest.py.)"""
    rc = main(["evaluate", str(obs_h5), "-o", str(tmp_path / "sphere"), "--method", "true",
               "--reflections", "sphere", "--d-min", "0.8", "--d-min", "2.0", "--workers", "1", "--quiet"])
    assert rc == EXIT_OK
    df = pd.read_csv(tmp_path / "sphere" / "evaluation.csv", dtype={"method": str})  # "true" is not True
    assert '"reflections": "sphere"' in (tmp_path / "sphere" / "config.json").read_text()
    true = df[df.method == "true"].set_index("d_min")
    with h5py.File(obs_h5, "r") as h5:
        cell = tuple(map(float, h5["structures/cell"][0]))
    for d in (0.8, 2.0):
        assert true.loc[d, "status"] == "ok"
        assert true.loc[d, "n_reflections"] == sphere_count(cell, d)
        assert true.loc[d, "completeness"] == pytest.approx(1.0)
        assert true.loc[d, "map_cc"] == pytest.approx(1.0)
    assert true.loc[0.8, "n_reflections"] > dataset_count(obs_h5, 0.8)  # more than the box holds


def test_amplitudes_obs_uses_the_measured_reflections(obs_h5, tmp_path):
    """--amplitudes obs: only reflections measured (and not absent) take part, weak ones
    (I_obs <= 0, amplitude 0) included (issue 12: they used to be dropped)."""
    calc = _rows(obs_h5, tmp_path, "calc")
    obs = _rows(obs_h5, tmp_path, "obs", amplitudes="obs")
    for d in (0.8, 2.0):
        n_obs = dataset_count(obs_h5, d, measured=True)
        assert obs.loc[d, "n_reflections"] == n_obs
        assert 0 < n_obs < calc.loc[d, "n_reflections"] == dataset_count(obs_h5, d)
    # the amplitudes are the measured ones, on exactly those reflections
    from phasenet.evaluation.problem import problem_from_dataset

    p_obs = problem_from_dataset(obs_h5, 0, "obs").truncate(2.0)
    with h5py.File(obs_h5, "r") as h5:
        i_obs = h5["intensity_obs"][0]
    np.testing.assert_allclose(p_obs.amplitude ** 2, np.maximum(i_obs[in_sphere(obs_h5, 2.0, measured=True)], 0),
                               rtol=1e-5)
    assert (problem_from_dataset(obs_h5, 0, "obs").truncate(0.8).amplitude == 0).any()  # weak ones kept


def test_success_rate_is_solved_over_ok_failed_timeout():
    """Success rate = solved / (ok + failed + timeout); not-applicable rows are left out."""
    rows = [("ok", True), ("ok", True), ("ok", False), ("failed", None), ("timeout", None),
            ("not-applicable", None), ("not-applicable", None)]
    df = pd.DataFrame({"method": "m", "d_min": 1.0, "status": [s for s, _ in rows],
                       "solved": [v for _, v in rows], "phase_error": [10.0, 20.0, 80.0] + [np.nan] * 4,
                       "map_cc": [0.9, 0.8, 0.2] + [np.nan] * 4, "sign_accuracy": np.nan,
                       "atom_recovery": np.nan, "completeness": [1.0, 0.5, 0.9] + [np.nan] * 4,
                       "seconds": 1.0})
    s = summarise(df).iloc[0]
    assert (s.n, s.ok, s.not_applicable, s.failed, s.timeout) == (7, 3, 2, 1, 1)
    assert s.success_rate == pytest.approx(2 / 5)  # not 2/3 (ok only) nor 2/7 (all rows)
    assert s.map_cc_mean == pytest.approx(np.mean([0.9, 0.8, 0.2]))  # metrics: means over ok rows
    assert s.completeness_mean == pytest.approx(0.8)
    assert "| m | 1 | 7 | 3 | 2 | 1 | 1 | 40% |" in summary_markdown(summarise(df))
    only_na = df[df.status == "not-applicable"]
    assert np.isnan(summarise(only_na).iloc[0].success_rate)


def _block_forever(*args, **kwargs):
    import threading

    threading.Event().wait()  # never set: only the evaluation's time-out ends this task


def test_a_task_that_never_returns_is_killed_as_a_timeout_row(obs_h5, tmp_path, monkeypatch):
    """The hard --timeout: a method that never returns (charge flipping replaced by a
    function that blocks forever, in the forked worker) becomes a `timeout` row, the other
    rows are kept and the report is complete; exit status 1."""
    monkeypatch.setattr(charge_flipping_module, "charge_flip", _block_forever)  # the method calls it
    rc = main(["evaluate", str(obs_h5), "-o", str(tmp_path / "r"), "--method", "true",
               "--method", "charge-flipping", "--d-min", "2.0", "--timeout", "1", "--workers", "2",
               "--quiet"])
    assert rc == EXIT_FAILURES
    df = pd.read_csv(tmp_path / "r" / "evaluation.csv").set_index("method")
    assert df.loc["charge-flipping", "status"] == "timeout"
    assert "no result after 1 s (worker killed)" in df.loc["charge-flipping", "reason"]
    assert df.loc["true", "status"] == "ok"
    assert "| charge-flipping | 2 | 1 | 0 | 0 | 0 | 1 | 0% |" in (tmp_path / "r" / "summary.md").read_text()


# ---- model:RUN_DIR with a real trained run -------------------------------------------------

@pytest.mark.slow
def test_model_method_with_a_real_trained_run(tmp_path):
    """Train the tiny demo network for 2 epochs on a small synthetic dataset (JAX), then
    `phasenet evaluate --method model:RUN_DIR`: every structure (P-1 / P2₁/c, inversion
    centre at the origin) is phased by the network and scored on the same reflections as
    the true phases; exit status 0."""
    pytest.importorskip("keras")
    data = make_dataset(tmp_path, n=24, seed=4)
    run = tmp_path / "run"
    r = run_phasenet(["train", REPO / "training" / "demo.toml", "--data", data, "--out", run, "--epochs", 2,
                      "--set", "data.r2_max=50", "--set", "run.batch_size=8", "--quiet"], "jax")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "model.keras").is_file()
    rep = tmp_path / "report"
    r = run_phasenet(["evaluate", data, "-o", rep, "--method", "true", "--method", f"model:{run}",
                      "--d-min", "1.5", "--d-min", "3.0", "--workers", "1", "--limit", "6", "--quiet"], "jax")
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(rep / "evaluation.csv")
    model = df[df.method == f"model:{run}"].set_index(["index", "d_min"])
    true = df[df.method == "true"].set_index(["index", "d_min"])
    assert len(model) == 12 and df.centric_origin.all()
    assert (model.status == "ok").all(), model[["status", "reason"]]
    assert (model.n_reflections == true.n_reflections).all()  # it phases all 709 reflections
    for col in ("phase_error", "map_cc", "sign_accuracy", "completeness"):
        assert np.isfinite(model[col]).all(), col
    assert ((model.sign_accuracy >= 0) & (model.sign_accuracy <= 1)).all()
    assert (model.map_cc <= true.map_cc + 1e-9).all()  # the true phases are the best possible
    summary = (rep / "summary.md").read_text()
    assert f"| model:{run} | 1.5 | 6 | 6 |" in summary and f"| model:{run} | 3 | 6 | 6 |" in summary
