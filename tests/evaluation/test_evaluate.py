"""The evaluation (phasenet.evaluation.evaluate) and ``phasenet evaluate``, in-process, on real structures."""

import phasenet  # noqa: F401  (first: cctbx import order)

import sys
import types
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from phasenet.cli import EXIT_ERROR, EXIT_FAILURES, main
from phasenet.evaluation import evaluate as evaluate_module
from phasenet.baselines import charge_flipping as charge_flipping_module
from phasenet.evaluation.evaluate import EvaluateOptions, EvaluationError, evaluate_dataset, run_task
from phasenet.evaluation.problem import DatasetRows

FILES = ["cod-tools_2231779.cif",  # P-1, I
         "NoSpherA2_epoxide.cif",  # P2₁/n, C2H4O: no heavy atom
         "cod-tools_2219444.cif"]  # Pca2₁: not centrosymmetric
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_h5(real_cif_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "small.h5"
    assert main(["build", *[str(real_cif_dir / f) for f in FILES], "-o", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return out


def test_cli_end_to_end(small_h5, tmp_path, capsys):
    rep = tmp_path / "report"
    rc = main(["evaluate", str(small_h5), "-o", str(rep), "--method", "true", "--method", "random",
               "--method", "patterson", "--method", "charge-flipping", "--method", f"model:{tmp_path / 'no-run'}",
               "--d-min", "1.0", "--d-min", "2.0", "--workers", "2", "--timeout", "600", "--cf-time-limit", "600",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == EXIT_FAILURES  # the model run does not exist: its rows failed, the rest ran
    assert "model:" in err and "failed" in err
    for name in ("evaluation.csv", "summary.md", "config.json"):
        assert (rep / name).is_file()
    for name in ("phase_error_vs_dmin.png", "success_rate_vs_dmin.png"):
        assert (rep / name).read_bytes()[:8] == PNG
    df = pd.read_csv(rep / "evaluation.csv")
    assert len(df) == 3 * 5 * 2
    true = df[df.method == "true"]
    assert (true.status == "ok").all() and np.allclose(true.map_cc, 1.0) and np.allclose(true.phase_error, 0, atol=1e-3)
    rnd = df[df.method == "random"]
    assert (rnd.map_cc < 0.5).all() and not rnd.solved.any()
    pat = df[(df.method == "patterson")].set_index(["id", "d_min"])
    epoxide = [i for i in pat.index if "epoxide" in i[0]]
    assert all(pat.loc[i, "status"] == "not-applicable" for i in epoxide)
    iodo = pat.loc[[i for i in pat.index if "2231779" in i[0] and i[1] == 1.0][0]]
    assert iodo.status == "ok" and iodo.solved
    cf = df[df.method == "charge-flipping"].set_index(["id", "d_min"])
    assert cf.loc[[i for i in cf.index if "2231779" in i[0] and i[1] == 1.0][0]].solved
    assert (df[df.method.str.startswith("model:")].status == "failed").all()
    md = (rep / "summary.md").read_text()
    for m in ("true", "random", "patterson", "charge-flipping"):
        assert f"| {m} | 1 |" in md and f"| {m} | 2 |" in md
    assert "| method | d_min" in out


def _block_forever(*args, **kwargs):
    import threading

    threading.Event().wait()  # never set: only the time-out ends the task


def test_timeout_and_failure_are_rows(small_h5, tmp_path, monkeypatch):
    # a method that never returns (in the forked worker): the hard timeout must fire,
    # however fast the machine
    monkeypatch.setattr(charge_flipping_module, "charge_flip", _block_forever)  # the method calls it
    opts = EvaluateOptions(methods=("charge-flipping",), d_min=(2.0,), timeout=0.5, workers=2,
                           atom_recovery=False)
    res = evaluate_dataset(small_h5, tmp_path / "r", opts, progress=False)
    cf = res.rows[res.rows.method == "charge-flipping"]
    assert (cf.status == "timeout").all() and cf.reason.str.contains("killed").all()
    assert not res.ok and res.n_problems == 3
    # a broken structure (cell of zero volume) fails in its own row
    with DatasetRows(small_h5) as rows:
        p = rows.problem(0)
    broken = replace(p, reflections=replace(p.reflections, cell=(0, 0, 0, 90, 90, 90)))
    row = run_task(broken, "true", 1.0, 0, EvaluateOptions())
    assert row["status"] == "failed" and row["reason"]


def test_model_plugin_contract(small_h5, tmp_path, monkeypatch):
    """The model:RUN_DIR plug-in on the honest protocol (docs/evaluation.md): the predictor
    receives network_input's e2 and mask of the reflections to d_min only, and a model that
    phases half of them perfectly is scored on all of them: R = Σ_phased |F|² / Σ |F|².
    (Before issue 12 this oracle was keyed on the stored `intensity` column, every
    reflection of the dataset, and scored R = 1 on its own half: the leak.) A real trained
    run: test_evaluate_claims.test_model_method_with_a_real_trained_run."""
    import h5py

    from phasenet.symmetry import symmetry
    from phasenet.training.inputs import network_input

    d_mins = (1.0, 1.5)
    with h5py.File(small_h5, "r") as h5:
        hkl = h5["hkl"][:].astype(np.int64)
        i_calc = h5["intensity_calc"][:].astype(float)
        phase = h5["phase_calc"][:].astype(float)
        cells = h5["structures/cell"][:].astype(float)
    with DatasetRows(small_h5) as rows:
        symops = [rows.dataset.symops(i) for i in range(len(rows))]
    grid = hkl[::2]  # the model phases only half the dataset's reflections
    d_spacing = [1 / np.sqrt(np.einsum("ni,ij,nj->n", hkl, np.linalg.inv(_metric(c)), hkl)) for c in cells]
    expected, answer = {}, {}
    for i in range(len(cells)):
        for d in d_mins:
            given = (i_calc[i] > 0) & (d_spacing[i] >= d - 1e-9)
            x = network_input(grid, hkl, np.where(given, np.sqrt(i_calc[i]), np.nan), tuple(cells[i]),
                              symmetry(symops[i]))
            answer[x.e2.tobytes()] = np.cos(phase[i][::2]) > 0
            on_grid = np.zeros(len(hkl), bool)
            on_grid[::2] = True
            expected[i, d] = (i_calc[i][given & on_grid].sum() / i_calc[i][given].sum(), (given & on_grid).sum())

    class Oracle:
        hkl = grid
        input = "network"

        def predict_sign_probability(self, e2, cell=None, mask=None):
            assert e2.dtype == np.float32 and cell.shape == (len(e2), 6) and mask.shape == e2.shape
            assert np.all((mask == 0) <= (e2 == 0))  # e2 is 0 wherever nothing was given
            return np.array([np.where(answer[x.tobytes()], 0.9, 0.1) for x in e2])

    fake = types.ModuleType("phasenet.training.predict")
    fake.load_predictor = lambda run_dir: Oracle()
    monkeypatch.setitem(sys.modules, "phasenet.training.predict", fake)
    res = evaluate_dataset(small_h5, tmp_path / "m", EvaluateOptions(methods=("model:run",), d_min=d_mins),
                           progress=False)
    ok = res.rows[res.rows.status == "ok"]
    assert len(ok) == 4
    for r in ok.itertuples():
        share, n_phased = expected[r.index, r.d_min]
        assert 0.3 < share < 0.7 and r.map_cc == pytest.approx(share, abs=1e-6)
        assert r.n_phased == n_phased and r.n_phased < r.n_reflections
    na = res.rows[res.rows.status == "not-applicable"]
    assert len(na) == 2 and na.reason.str.contains("inversion centre").all()


def _metric(cell):
    a, b, c = cell[:3]
    ca, cb, cg = np.cos(np.radians(cell[3:]))
    return np.array([[a * a, a * b * cg, a * c * cb], [a * b * cg, b * b, b * c * ca], [a * c * cb, b * c * ca, c * c]])


def test_model_without_predict_module(small_h5, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "phasenet.training.predict", None)  # import fails
    res = evaluate_dataset(small_h5, tmp_path / "x", EvaluateOptions(methods=("true", "model:run"), d_min=(1.5,)),
                           progress=False)
    model = res.rows[res.rows.method == "model:run"]
    assert (model.status == "failed").all() and model.reason.str.contains("phasenet.training.predict").all()
    assert (res.rows[res.rows.method == "true"].status == "ok").all()


def test_bad_inputs(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "r"), "--quiet"]) == EXIT_ERROR
    assert "phasenet evaluate: error:" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "r"), "--method", "magic"]) == EXIT_ERROR
    assert ("Unknown phasing method 'magic'; registered methods: true, random, patterson, charge-flipping, "
            "sg-flipping, net, model:RUN_DIR, net:RUN_DIR") in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="d_min"):
        EvaluateOptions(d_min=(1.0, -2.0))
