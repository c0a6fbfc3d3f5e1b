"""The honest evaluation protocol (issue 12, docs/evaluation.md): nothing beyond d_min and
nothing computed from the true structure reaches a model; every method is scored on the
same reflections, against the random reference, on a common subset of structures;
completeness without systematic absences; measured weak reflections kept."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from phasenet.baselines.registry import (BATCHED, NotApplicable, PhasingMethod, register_method,
                                         unregister_method)
from phasenet.cli import EXIT_ERROR, EXIT_OK, main
from phasenet.evaluation.evaluate import (EvaluateOptions, EvaluationError, evaluate_dataset, sphere_count)
from phasenet.evaluation.metrics import score_phases
from phasenet.evaluation.problem import DatasetRows, problem_from_dataset
from phasenet.reflections import canonical_hkl, lookup, sphere_hkl
from phasenet.symmetry import symmetry
from tests.conftest import REPO_ROOT
from tests.training_helpers import run_phasenet

DATA = REPO_ROOT / "tests" / "data"
#: P-1 with measured reflections (fcf) that fit the model; has weak ones (I_obs <= 0)
OBS_FILE = "StructureFinder_P-1.cif"


@pytest.fixture(scope="module")
def own_h5(tmp_path_factory):
    """C2/c (tests/data, heavy atoms on special positions), P-1 (tests/data, with an
    embedded hkl file) and a random P2₁/c structure (cctbx): no real data needed."""
    from phasenet.pipeline.demo import write_random_cifs

    folder = tmp_path_factory.mktemp("honest")
    p21c = write_random_cifs(folder / "cif", 2, seed=3)[1]
    out = folder / "own.h5"
    assert main(["build", str(DATA / "c2c_special.cif"), str(DATA / "p-1_organic.cif"), str(p21c),
                 "-o", str(out), "--workers", "1", "--quiet"]) == EXIT_OK
    with DatasetRows(out) as rows:
        groups = [symmetry(rows.dataset.symops(i)).hm for i in range(len(rows))]
    assert sorted(g.replace(" ", "") for g in groups) == ["C12/c1", "P-1", "P121/c1"], groups
    return out


def _read(path, name="evaluation.csv"):
    return pd.read_csv(path / name, dtype={"method": str})  # "true" stays a string


# ---- completeness --------------------------------------------------------------------------

def test_complete_spheres_read_completeness_one(own_h5, tmp_path):
    """Completeness = reflections phased / the sphere to d_min without systematic absences:
    a complete sphere reads 1.0 in C2/c and P2₁/c (it read 0.48 and 0.94 before issue 12),
    with --reflections sphere and, where the box holds the sphere, the dataset's own."""
    res = evaluate_dataset(own_h5, tmp_path / "sphere",
                           EvaluateOptions(methods=("true",), d_min=(1.0, 2.0), reflections="sphere",
                                           atom_recovery=False), progress=False)
    rows = res.rows
    assert (rows.status == "ok").all() and np.allclose(rows.completeness, 1.0)
    with DatasetRows(own_h5) as src:
        i = [j for j in range(len(src)) if symmetry(src.dataset.symops(j)).hm.replace(" ", "") == "C12/c1"][0]
        cell, ops = src.problem(i).cell, src.dataset.symops(i)
    c2c = rows[rows["index"] == i]
    assert len(c2c) == 2
    n_all = len(sphere_hkl(cell, 2.0))
    n = sphere_count(cell, ops, 2.0)
    assert 0.4 < n / n_all < 0.6  # C-centring removes half the sphere: the old completeness
    assert int(c2c.set_index("d_min").loc[2.0, "n_reflections"]) == n
    res = evaluate_dataset(own_h5, tmp_path / "dataset",
                           EvaluateOptions(methods=("true",), d_min=(2.0,), atom_recovery=False), progress=False)
    assert np.allclose(res.rows.completeness, 1.0)  # cells < 20 Å: the box holds the 2 Å sphere


# ---- sphere + obs ---------------------------------------------------------------------------

def test_sphere_with_measured_amplitudes_is_an_error(tmp_path, capsys):
    with pytest.raises(EvaluationError, match="sphere.*no measured"):
        EvaluateOptions(reflections="sphere", amplitudes="obs")
    rc = main(["evaluate", str(tmp_path / "any.h5"), "-o", str(tmp_path / "r"), "--reflections", "sphere",
               "--amplitudes", "obs", "--quiet"])
    assert rc == EXIT_ERROR
    assert "--reflections sphere cannot go with --amplitudes obs" in capsys.readouterr().err


# ---- what a method is given -------------------------------------------------------------------

class Peek(PhasingMethod):
    """A batched method that reports, in its row's reason, what it was given: the lowest d,
    the number of amplitudes that are zero, and which hidden parts it could read."""

    name = "peek"
    execution = BATCHED

    def phases_batch(self, problems, options):
        out = []
        for p in problems:
            r = p.reflections
            seen = {"d_min": float(p.d_min), "n": len(p), "zeros": int((p.amplitude == 0).sum()),
                    "intensity": r.intensity is not None, "intensity_calc": r.intensity_calc is not None,
                    "phases": bool(np.isfinite(p.phase_true).any()), "positions": p.atoms is not None}
            out.append((np.zeros(len(p)), json.dumps(seen)))
        return out


@pytest.fixture
def peek():
    register_method("peek", Peek)
    yield
    unregister_method("peek")


def test_batched_methods_see_only_the_reflections_to_d_min(own_h5, tmp_path, peek):
    """Any batched method (every model, now and later) gets the problem truncated to d_min,
    without the stored model input or the true phases, on the same reflections as `true`."""
    res = evaluate_dataset(own_h5, tmp_path / "r", EvaluateOptions(methods=("true", "peek"), d_min=(1.0, 2.0),
                                                                   atom_recovery=False), progress=False)
    rows = res.rows.set_index(["method", "index", "d_min"])
    for (method, i, d), r in rows.iterrows():
        if method != "peek":
            continue
        seen = json.loads(r.reason)
        assert seen["d_min"] >= d - 1e-9 and seen["n"] == r.n_reflections == rows.loc[("true", i, d), "n_reflections"]
        assert not (seen["intensity"] or seen["phases"] or seen["positions"])
        assert seen["intensity_calc"]  # exact amplitudes are what it is given by default
        assert r.phase_error > 0 and r.map_cc < 1  # all phases 0: scored like any other


def test_measured_amplitudes_hide_the_calculated_ones_and_keep_weak_reflections(real_cif, tmp_path, peek):
    """--amplitudes obs: a method sees the measured reflections, weak ones (I_obs <= 0,
    amplitude 0) included, and no intensity_calc; the reflections it is given are exactly
    the measured, non-absent ones with d >= d_min."""
    h5 = tmp_path / "obs.h5"
    assert main(["build", str(real_cif(OBS_FILE)), "-o", str(h5), "--workers", "1", "--quiet"]) == EXIT_OK
    res = evaluate_dataset(h5, tmp_path / "r", EvaluateOptions(methods=("peek",), d_min=(0.8,), amplitudes="obs",
                                                               atom_recovery=False), progress=False)
    seen = json.loads(res.rows.reason.iloc[0])
    with h5py.File(h5, "r") as f:
        i_obs = f["intensity_obs"][0]
    full = problem_from_dataset(h5, 0, "obs")
    measured = np.isfinite(i_obs) & (full.reflections.d_spacing >= 0.8 - 1e-9)
    assert seen["n"] == int(measured.sum()) and not seen["intensity_calc"]
    assert seen["zeros"] == int((measured & (i_obs <= 0)).sum()) > 0


def test_charge_flipping_keeps_weak_reflections(real_cif, tmp_path):
    """charge_flip phases measured weak reflections (amplitude 0) instead of dropping them."""
    from phasenet.baselines.charge_flipping import ChargeFlippingOptions, charge_flip

    h5 = tmp_path / "obs.h5"
    assert main(["build", str(real_cif(OBS_FILE)), "-o", str(h5), "--workers", "1", "--quiet"]) == EXIT_OK
    p = problem_from_dataset(h5, 0, "obs").truncate(1.0)
    weak = p.amplitude == 0
    assert weak.any()
    r = charge_flip(p.hkl, p.amplitude, p.cell, p.symops,
                    ChargeFlippingOptions(max_attempts=1, time_limit=20), seed=0)
    assert np.isfinite(r.phases[weak]).all()  # they were in the set it flipped


# ---- the summary ------------------------------------------------------------------------------

class OnlyP1(PhasingMethod):
    """Applies to P-1 only (as Patterson to heavy-atom structures): the true phases."""

    name = "only-p-1"
    needs = frozenset({"phase_true"})

    def check(self, problem, options):
        if symmetry(problem.symops).hm.replace(" ", "") != "P-1":
            raise NotApplicable("P-1 only")

    def phases(self, problem, seed, options):
        return problem.phase_true.copy(), ""


def test_common_subset_first_and_the_random_reference(own_h5, tmp_path):
    register_method("only-p-1", OnlyP1)
    try:
        res = evaluate_dataset(own_h5, tmp_path / "r",
                               EvaluateOptions(methods=("random", "only-p-1"), d_min=(1.5, 2.0),
                                               atom_recovery=False), progress=False)
    finally:
        unregister_method("only-p-1")
    s = res.summary.set_index(["subset", "method", "d_min"])
    for d in (1.5, 2.0):
        assert s.loc[("common", "random", d), "n"] == s.loc[("common", "only-p-1", d), "n"] == 1
        assert s.loc[("per-method", "random", d), "n"] == 3
        assert s.loc[("per-method", "only-p-1", d), "ok"] == 1
    md = (tmp_path / "r" / "summary.md").read_text()
    assert md.index("## Common subset") < md.index("## Per method")
    assert "random CC" in md and "Δ CC vs random" in md and "counts against" in md
    csv = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert list(csv.subset.unique()) == ["common", "per-method"]
    for name in ("phase_error_vs_dmin.png", "map_cc_vs_dmin.png", "success_rate_vs_dmin.png"):
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"
    # the random reference of every row is the random method's score on the same problem
    rows = res.rows.set_index(["method", "index", "d_min"])
    rnd = rows.loc["random"]
    for (i, d), r in rows.loc["only-p-1"].iterrows():
        if r.status == "ok":
            assert r.random_map_cc == pytest.approx(rnd.loc[(i, d), "map_cc"])
            assert r.map_cc == pytest.approx(1.0) and r.random_map_cc < 0.7
    assert s.loc[("common", "only-p-1", 2.0), "delta_map_cc"] == pytest.approx(
        1.0 - s.loc[("common", "only-p-1", 2.0), "random_map_cc_mean"])


# ---- the leak test with a real Keras model ------------------------------------------------------

D_LEAK = 2.0


@pytest.fixture(scope="module")
def probes(own_h5, tmp_path_factory):
    """The leaking probe models (tests/evaluation/probe_model.py), memorised on the P-1
    structure, and their answers on the old code path, made in a fresh process."""
    pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("probes")
    with DatasetRows(own_h5) as rows:
        index = [i for i in range(len(rows)) if symmetry(rows.dataset.symops(i)).hm.replace(" ", "") == "P-1"][0]
    spec = {"dataset": str(own_h5), "index": index, "d_leak": D_LEAK, "out": str(folder / "old.json"),
            "runs": {"network": str(folder / "network"), "stored": str(folder / "stored")}}
    (folder / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "tests.evaluation.probe_model", str(folder / "spec.json")],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    spec.update(json.loads((folder / "old.json").read_text()))
    return spec


def _evaluate_probes(probes, tmp_path, *extra):
    rep = tmp_path / "report"
    r = run_phasenet(["evaluate", probes["dataset"], "-o", rep, "--method", "true",
                      "--method", f"model:{probes['runs']['network']}", "--method", f"model:{probes['runs']['stored']}",
                      "--d-min", "1.0", "--d-min", str(D_LEAK), "--workers", "1", "--no-atom-recovery", "--quiet",
                      *extra], "jax", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    df = _read(rep)
    return df[df["index"] == probes["index"]].set_index(["method", "d_min"]), rep


@pytest.mark.slow
@pytest.mark.parametrize("reflections", ["dataset", "sphere"])
def test_leaking_probe_scores_perfectly_on_the_old_path_and_at_chance_on_the_honest_one(probes, tmp_path,
                                                                                        reflections):
    """A real Keras model that answers the true signs as soon as it sees anything beyond
    d_min (or the stored `intensity`) is perfect on the old code path and at chance on the
    honest one, with the dataset's reflections and with the complete sphere; at a d_min
    where those reflections are legitimately given it phases what falls on its grid."""
    with DatasetRows(probes["dataset"]) as rows:
        p = rows.problem(probes["index"])
        pos_grid = lookup(rows.hkl, canonical_hkl(10, 50))
    assert min(probes["n_leak"].values()) > 50  # the probe does look beyond 2 Å
    # the old path: the stored intensities of every grid reflection, scored on its own
    # reflections with d >= d_min (what evaluate.py did before issue 12)
    for kind in ("network", "stored"):
        prob = np.asarray(probes["old_path_probability"][kind])
        sub = p.select(pos_grid)
        keep = sub.reflections.d_spacing >= D_LEAK
        score, _ = score_phases(sub.hkl[keep], sub.amplitude[keep], sub.phase_true[keep],
                                np.where(prob[keep] > 0.5, 0.0, np.pi), p.symops)
        assert score.map_cc > 0.99, kind  # with the leak: perfect
    rows, rep = _evaluate_probes(probes, tmp_path, "--reflections", reflections)
    for kind in ("network", "stored"):
        m = f"model:{probes['runs'][kind]}"
        honest = rows.loc[(m, D_LEAK)]
        assert honest.status == "ok", honest.reason
        assert honest.map_cc < 0.5 and not honest.solved  # honest: chance
        assert abs(honest.map_cc - honest.random_map_cc) < 0.4
        assert honest.n_reflections == rows.loc[("true", D_LEAK), "n_reflections"]  # the same reflections
        # at 1 Å the reflections its memory keys on are given: it phases its grid's share
        fine = rows.loc[(m, 1.0)]
        assert fine.map_cc > 0.7 and fine.n_phased < fine.n_reflections  # the rest counts against it
        assert fine.completeness == pytest.approx(fine.n_phased / sphere_count(p.cell, p.symops, 1.0))
    assert "trained on the stored 'intensity' column" in rows.loc[(f"model:{probes['runs']['stored']}", D_LEAK),
                                                                  "reason"]
    assert "trained on the stored 'intensity' column" in (rep / "summary.md").read_text()


@pytest.mark.slow
def test_nothing_computed_from_the_true_structure_reaches_a_model(probes, tmp_path):
    """With --amplitudes obs, scrambling the dataset's intensity_calc and stored intensity
    leaves every model row unchanged (while the old path's input, the stored intensity,
    would change): the model sees the measurements only."""
    import shutil

    scrambled = tmp_path / "scrambled.h5"
    shutil.copy(probes["dataset"], scrambled)
    rng = np.random.default_rng(0)
    with h5py.File(scrambled, "r+") as f:
        for name in ("intensity_calc", "intensity"):
            a = f[name][...]
            for i in range(len(a)):
                nonzero = a[i] > 0
                a[i, nonzero] = rng.permutation(a[i, nonzero])
            f[name][...] = a
    base, _ = _evaluate_probes(probes, tmp_path / "a", "--amplitudes", "obs")
    scr, _ = _evaluate_probes(dict(probes, dataset=str(scrambled)), tmp_path / "b", "--amplitudes", "obs")
    for kind in ("network", "stored"):
        m = f"model:{probes['runs'][kind]}"
        for col in ("status", "n_reflections", "n_phased", "map_cc", "phase_error", "sign_accuracy"):
            assert (base.loc[m, col] == scr.loc[m, col]).all(), (kind, col)
    with DatasetRows(probes["dataset"]) as a, DatasetRows(scrambled) as b:
        assert not np.array_equal(a.problem(probes["index"]).intensity, b.problem(probes["index"]).intensity)
