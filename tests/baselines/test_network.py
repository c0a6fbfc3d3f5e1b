"""``net``: the phasing network's inference (starts, recycling, figure of merit, polish),
its invariances (origin, setting), determinism, and the evaluation's rows per stage.

A tiny untrained network (the ±4 grid) is enough for the properties; the shipped model's
documented scores are checked at the end."""

import phasenet  # noqa: F401  (first: cctbx import order)

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from phasenet.baselines.network import GridSymmetry, NetworkOptions, predict
from phasenet.baselines.polish import charge_flip_polish, flip_from_random
from phasenet.evaluation.metrics import score_phases
from phasenet.evaluation.problem import problem_from_structure
from phasenet.reflections import canonical_hkl
from phasenet.symmetry import symmetry
from tests.conftest import first_structure
from tests.training.test_phasing_net import MAX_INDEX, tiny_config

FAST = NetworkOptions(starts=3, cycles=2, polish_starts=1, polish_cycles=30, seed=0)


@pytest.fixture(scope="module")
def tiny_predictor():
    from phasenet.training.models import build_model, export_model
    from phasenet.training.predict import Predictor

    cfg = tiny_config()
    hkl = canonical_hkl(MAX_INDEX)
    model = export_model(build_model(cfg, len(hkl)), "sign")
    return Predictor(run_dir=Path("tiny"), model=model, hkl=hkl, config=cfg,
                     info={"task": "sign", "input": "network"})


def problem(structure, d_min=2.0):
    return problem_from_structure(structure, d_min).truncate(None)


def shifted(structure, t):
    atoms = dataclasses.replace(structure.atoms, frac=structure.atoms.frac + np.asarray(t, float))
    return dataclasses.replace(structure, atoms=atoms)


def test_predictions_do_not_depend_on_the_origin(tiny_predictor, test_data):
    """Moving the origin by a permissible shift changes the true phases, not the amplitudes:
    the network's phases are the same, and so is their map after alignment."""
    s = first_structure(test_data("p-1_organic.cif"))
    a, moved = problem(s), problem(shifted(s, (0.5, 0.0, 0.5)))
    assert not np.allclose(np.cos(a.phase_true), np.cos(moved.phase_true))  # the answer moved
    np.testing.assert_allclose(a.amplitude, moved.amplitude, rtol=1e-9)  # the data did not
    # the moved structure's problem with bit-identical amplitudes (float rounding aside)
    b = dataclasses.replace(a, reflections=dataclasses.replace(a.reflections, phase_calc=moved.phase_true))
    ra, rb = predict([a, b], tiny_predictor, FAST)
    for stage in ("network", "starts", "polish"):
        np.testing.assert_array_equal(ra.stages[stage], rb.stages[stage])
        sa, _ = score_phases(a.hkl, a.amplitude, a.phase_true, np.nan_to_num(ra.stages[stage]), a.symops)
        sb, _ = score_phases(b.hkl, b.amplitude, b.phase_true, np.nan_to_num(rb.stages[stage]), b.symops)
        assert sa.map_cc == pytest.approx(sb.map_cc, abs=1e-9)


def test_p21n_is_reindexed_to_p21c_and_back(tiny_predictor, test_data):
    """A P2₁/n structure is phased in P2₁/c and its phases returned in P2₁/n: the same as
    phasing the structure transformed to P2₁/c and mapping the phases back."""
    from phasenet.settings import reference_setting

    s = first_structure(test_data("p21n_aniso.cif"))
    p = problem(s, 1.5)
    change = reference_setting(p.cell, p.symops)
    assert change.symbol_reference == "P 1 21/c 1" and not change.is_identity
    res = predict([p], tiny_predictor, FAST)[0]
    assert res.setting == "P 1 21/n 1 -> P 1 21/c 1"
    # the same problem written in the reference setting by hand
    hkl_ref = change.hkl_to_reference(p.hkl)
    ref = dataclasses.replace(p, reflections=dataclasses.replace(
        p.reflections, hkl=hkl_ref, cell=change.cell_reference, symops=change.symops_reference,
        phase_calc=change.phases_to_reference(p.hkl, p.phase_true)))
    res_ref = predict([ref], tiny_predictor, FAST)[0]
    assert res_ref.setting == ""
    for stage in res.stages:
        back = change.phases_from_reference(hkl_ref, res_ref.stages[stage])
        np.testing.assert_allclose(np.cos(res.stages[stage]), np.cos(back), atol=1e-9)
    # round trip of the indices, and the map CC is the same in both settings
    np.testing.assert_array_equal(change.hkl_from_reference(hkl_ref), p.hkl)
    ph = np.nan_to_num(res.stages["polish"])
    s_in, _ = score_phases(p.hkl, p.amplitude, p.phase_true, ph, p.symops)
    s_ref, _ = score_phases(hkl_ref, p.amplitude, ref.phase_true, change.phases_to_reference(p.hkl, ph),
                            change.symops_reference)
    assert s_in.map_cc == pytest.approx(s_ref.map_cc, abs=1e-6)


def test_starts_are_deterministic_in_the_seed(tiny_predictor, test_data):
    p = problem(first_structure(test_data("p-1_organic.cif")))
    a = predict([p], tiny_predictor, FAST)[0]
    b = predict([p], tiny_predictor, FAST)[0]
    c = predict([p], tiny_predictor, dataclasses.replace(FAST, seed=1))[0]
    for stage in a.stages:
        np.testing.assert_array_equal(a.stages[stage], b.stages[stage])
    np.testing.assert_array_equal(a.start_fom, b.start_fom)
    # start 0 (no phases) does not depend on the seed; the random starts do
    np.testing.assert_array_equal(a.stages["network"], c.stages["network"])
    assert not np.array_equal(a.start_fom[1:], c.start_fom[1:])
    assert len(a.start_fom) == FAST.starts


def test_unsupported_groups_are_not_applicable(tiny_predictor, test_data):
    from phasenet.baselines.registry import NotApplicable

    p = problem(first_structure(test_data("c2c_special.cif")))
    (res,) = predict([p], tiny_predictor, FAST)
    assert isinstance(res, NotApplicable) and "C 1 2/c 1" in str(res)


def test_grid_symmetry_averages_equivalents_with_their_sign_factors():
    """P2₁/c: F(h,-k,l) = (-1)^(k+l) F(h,k,l); the average of consistent signs is themselves."""
    hkl = np.asarray(canonical_hkl(MAX_INDEX))
    g = GridSymmetry(hkl, symmetry("P 1 21/c 1"))
    rng = np.random.default_rng(0)
    s = rng.choice([-1.0, 1.0], len(hkl))
    avg = g.average(s)
    consistent = np.sign(avg)
    consistent[avg == 0] = 1.0
    again = g.average(consistent)
    np.testing.assert_allclose(again[np.abs(again) > 0], consistent[np.abs(again) > 0])
    i = np.flatnonzero((hkl == [1, 2, 1]).all(axis=1))[0]
    j = np.flatnonzero((hkl == [1, -2, 1]).all(axis=1))[0]
    assert again[j] == again[i] * (-1) ** (2 + 1)


def test_polish_keeps_true_phases_and_repairs_a_partly_right_start(test_data):
    from phasenet.physics.wilson import normalise_amplitudes

    s = first_structure(test_data("p-1_organic.cif"))
    p = problem(s, 1.0)
    e = np.sqrt(normalise_amplitudes(p.hkl, p.amplitude, p.cell, p.symops).e2)
    ph, _ = charge_flip_polish(p.hkl, e, p.phase_true, p.cell, p.symops, cycles=50)
    sc, _ = score_phases(p.hkl, p.amplitude, p.phase_true, ph, p.symops)
    assert sc.map_cc > 0.9
    # a start with 30 % of the signs wrong (map CC ~0.4): the polish finishes it
    rng = np.random.default_rng(0)
    start = np.where(rng.random(len(p)) < 0.3, p.phase_true + np.pi, p.phase_true)
    before, _ = score_phases(p.hkl, p.amplitude, p.phase_true, start, p.symops)
    ph, _ = charge_flip_polish(p.hkl, e, start, p.cell, p.symops, cycles=100)
    after, _ = score_phases(p.hkl, p.amplitude, p.phase_true, ph, p.symops)
    assert before.map_cc < 0.6 and after.solved


def test_flipping_from_random_starts_keeps_the_best_figure_of_merit(test_data):
    p = problem(first_structure(test_data("p-1_organic.cif")), 1.5)
    ph, fom, foms = flip_from_random(p.hkl, p.amplitude, p.cell, p.symops, starts=3, cycles=40, seed=0)
    again = flip_from_random(p.hkl, p.amplitude, p.cell, p.symops, starts=3, cycles=40, seed=0)
    assert fom == foms.max() and len(foms) == 3 and np.array_equal(ph, again[0])
    assert np.isfinite(ph).all() and set(np.round(np.unique(ph), 6)) <= {0.0, round(np.pi, 6)}


@pytest.mark.slow
def test_a_trained_run_is_evaluated_stage_by_stage(tmp_path):
    """Train a tiny phasing-net for one short epoch (with hints, on the fly), then evaluate it
    as ``net:RUN_DIR``: one row per stage, named net:RUN/network, net:RUN/starts and net:RUN,
    scored on the same reflections as sg-flipping and random."""
    import pandas as pd

    from tests.conftest import REPO_ROOT
    from tests.training_helpers import make_dataset, run_phasenet

    run = tmp_path / "run"
    tiny = ["--set", "data.max_index=4", "--set", "model.filters=4", "--set", "model.mixer_blocks=1",
            "--set", "model.token_width=8", "--set", "model.channel_width=8", "--set", "model.head_filters=2",
            "--set", "data.epoch_size=32", "--set", "data.max_test=8", "--set", "run.batch_size=8",
            "--set", "data.workers=0", "--set", "data.repeats=1", "--set", "data.synth_atoms=[6, 12]",
            "--set", "output.plots=false", "--set", "output.tensorboard=false", "--quiet"]
    done = run_phasenet(["train", REPO_ROOT / "training" / "phasing_net_cpu.toml", "--out", run, "--epochs", 1,
                         *tiny], "jax", timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = make_dataset(tmp_path, n=6, r2_max=None)
    report = tmp_path / "report"
    done = run_phasenet(["evaluate", data, "-o", report, "--method", f"net:{run}", "--method", "sg-flipping",
                         "--method", "random", "--d-min", "2.0", "--limit", 3, "--net-starts", 2,
                         "--no-atom-recovery", "--quiet"], "jax", timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = pd.read_csv(report / "evaluation.csv")
    names = {f"net:{run}/network", f"net:{run}/starts", f"net:{run}", "sg-flipping", "random"}
    assert set(rows.method) == names
    for name in names:
        r = rows[rows.method == name]
        assert len(r) == 3 and (r.status == "ok").all(), r[["method", "status", "reason"]]
    # every stage is scored on the reflections the others are given
    by = rows.pivot(index="index", columns="method", values="n_reflections")
    assert (by.nunique(axis=1) == 1).all()
    # the network alone phases the grid's reflections only (±4 here); the polish phases all
    net = rows[rows.method == f"net:{run}"]
    assert (net.n_phased == net.n_reflections).all()


def test_the_point_atom_false_solution_is_recognised_at_every_inversion_centre(test_data):
    from phasenet.baselines.polish import uranium_like
    from phasenet.physics.wilson import normalise_amplitudes
    from phasenet.reflections import origin_sign_flips

    p = problem(first_structure(test_data("p-1_organic.cif")), 1.5)
    e = np.sqrt(normalise_amplitudes(p.hkl, p.amplitude, p.cell, p.symops).e2)
    assert not uranium_like(e, p.phase_true, p.hkl)  # the answer
    for f in origin_sign_flips(p.hkl):  # a point atom on each of the 8 centres
        assert uranium_like(e, np.where(f > 0, 0.0, np.pi), p.hkl)
    rng = np.random.default_rng(0)
    assert not uranium_like(e, np.pi * rng.integers(0, 2, len(p)), p.hkl)
