"""On-the-fly training data: determinism, resume, draw statistics, structure factors
against a ``phasenet synth`` dataset, the network input against ``network_input``, the
origin shift against the loss, the grid form, the config, and both Keras backends."""

import phasenet  # noqa: F401  (first: cctbx import order)

import dataclasses
import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from phasenet.io.hdf5 import DatasetReader
from phasenet.physics.structure_factors import structure_factors
from phasenet.reflections import canonical_hkl, d_spacings, friedel_representative
from phasenet.symmetry import symmetry
from phasenet.training.config import ConfigError, config_from_dict
from phasenet.training.inputs import network_input
from phasenet.training.onthefly import (
    TEST_INDEX_OFFSET, Augmentation, Draws, OnTheFlySource, box_hkl, grid_plan, make_samples,
    prepare_sources, synth_structure, to_box, with_u_iso)
from tests.training_helpers import REPO, run_phasenet

HKL = canonical_hkl(10, 50)


@pytest.fixture(scope="module")
def synth_h5(tmp_path_factory):
    """A small ``phasenet synth`` dataset (P-1 and P2₁/c, fast packing, 709 reflections)."""
    from phasenet.synth.generate import synth_dataset
    from phasenet.synth.options import PACKINGS, SynthOptions

    out = tmp_path_factory.mktemp("synth") / "s.h5"
    synth_dataset(24, out, SynthOptions(seed=3, r2_max=50, workers=1, test_fraction=0.25,
                                        atoms=(8, 30), **PACKINGS["fast"]), progress=False)
    return out


def _cfg(source="synth", batch_size=16, **data):
    table = {"run": {"seed": data.pop("seed", 0), "batch_size": batch_size},
             "data": {"source": source, "r2_max": 50, "workers": 0, **data}}
    if source == "synth":
        table["data"].setdefault("synth_packing", "fast")
        table["data"].setdefault("synth_atoms", [8, 30])
    return config_from_dict(table)


def _atoms_source(path, split="train", augmentation=None, **data):
    cfg = _cfg("atoms", **data)
    tr, te = prepare_sources(cfg, path)
    return OnTheFlySource(cfg, split, shuffle=split == "train", path=path,
                          rows=tr if split == "train" else te, augmentation=augmentation)


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


# ---- determinism ------------------------------------------------------------------------
def test_batch_is_a_function_of_seed_and_index_in_process_and_in_worker_processes():
    cfg = _cfg(repeats=4, seed=5)
    a, b = OnTheFlySource(cfg, "train", shuffle=True), OnTheFlySource(cfg, "train", shuffle=True)
    b4 = a.compute_batch(4)
    assert _same(b4, b.compute_batch(4))  # a fresh source, same (seed, i)
    b5 = a.compute_batch(5)
    assert not np.array_equal(b4[1], b5[1]) and not np.array_equal(b4[0]["intensity"], b5[0]["intensity"])
    other = OnTheFlySource(_cfg(repeats=4, seed=6), "train", shuffle=True).compute_batch(4)
    assert not np.array_equal(other[0]["intensity"], b4[0]["intensity"])  # another seed
    x, y = b4
    assert x["intensity"].shape == x["mask"].shape == (16, 709) and y.shape == (16, 709, 3)
    assert x["intensity"].dtype == np.float32 and set(np.unique(y[..., 0])) <= {-1.0, 0.0, 1.0}
    # two worker processes, in order and out of order (a resumed run), give the same batches
    cfg.data.workers = 2
    with OnTheFlySource(cfg, "train", shuffle=True) as w:
        for i in (4, 5, 6, 2, 3, 4):
            assert _same(w.batch(i), a.compute_batch(i)), i
        assert len(w._reader.procs) == 2 and all(p.is_alive() for p in w._reader.procs)


def test_test_split_is_held_apart_fixed_and_cached(synth_h5):
    cfg = _cfg(repeats=2, max_test=20)
    cfg.data.workers = 1
    train = OnTheFlySource(cfg, "train", shuffle=True)
    with OnTheFlySource(cfg, "test", shuffle=False) as test:
        assert test.steps_per_epoch == 2  # each test structure once
        assert list(test.batch_keys(1)) == [TEST_INDEX_OFFSET + k for k in range(16, 20)]
        assert test.batch_keys(0).min() > train.batch_keys(10 ** 6).max()  # never a training structure
        first = [test.batch(i) for i in range(test.steps_per_epoch)]
        assert len(first[1][1]) == 4  # the last batch is short
        assert test._reader is None  # every test batch is in memory: the workers are gone
        again = [test.batch(i) for i in range(test.steps_per_epoch)]
    assert all(_same(p, q) for p, q in zip(first, again))
    assert _same(first[0], OnTheFlySource(_cfg(repeats=2, max_test=20), "test", shuffle=False).compute_batch(0))


def test_each_structure_gives_repeats_samples_spread_over_many_batches():
    cfg = _cfg(repeats=4, batch_size=16)
    src = OnTheFlySource(cfg, "train", shuffle=True)
    lanes, spacing, c = 16, src.spacing, 4  # c = 16 / 4 new structures per batch
    n_batches = lanes * 8 * spacing
    keys = [src.batch_keys(i) for i in range(n_batches)]
    seen, first_use = set(), {}
    warm = 3 * spacing * lanes  # (R - 1)·D lane batches: the earlier groups are new too
    for i, k in enumerate(keys):
        assert len(np.unique(k)) == 16  # B different structures in every batch
        assert np.all(k // c % lanes == i % lanes)  # batch i: lane i mod 16 only
        new = set(k.tolist()) - seen
        assert len(new) == c if i >= warm else len(new) >= c  # a steady c new ones
        seen |= new
        for key in k.tolist():
            first_use.setdefault(key, i)
    counts = np.bincount(np.concatenate(keys))
    # structures first met after the start and early enough for all their uses: 4 uses,
    # spaced spacing·16 batches apart
    full = [key for key, i in first_use.items() if warm <= i < n_batches - warm]
    assert len(full) > 100 and all(counts[key] == 4 for key in full)
    key = full[0]
    uses = [i for i, k in enumerate(keys) if key in k]
    assert np.all(np.diff(uses) == spacing * lanes)
    # a worker computing every other batch keeps only its lanes' structures, and not forever
    src.workers = 2
    for i in range(0, n_batches, 2):
        src.samples(i) if i < 64 else None
    lanes_kept = {ln for ln, _, _ in src._prepared.values()}
    assert lanes_kept <= set(range(0, 16, 2)) and len(src._prepared) <= 8 * 16 * spacing


# ---- what is drawn ------------------------------------------------------------------------
def test_draw_statistics_match_the_configured_ranges(synth_h5):
    src = _atoms_source(synth_h5, u_iso=[0.01, 0.05], d_min=[1.0, 2.0], drop=[0.05, 0.2],
                        scale=[0.5, 2.0], batch_size=16)
    d = [src.draws(i) for i in range(150)]
    u, dmin, drop, scale = (np.concatenate([getattr(x, k) for x in d]) for k in ("u_iso", "d_min", "drop", "scale"))
    n = len(u)
    for v, lo, hi in ((u, 0.01, 0.05), (dmin, 1.0, 2.0), (drop, 0.05, 0.2)):
        assert v.min() >= lo and v.max() <= hi
        z = (v - lo) / (hi - lo)  # uniform on [0, 1]: mean 1/2 ± 4σ, each quarter ~1/4
        assert abs(z.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
        assert np.all(np.abs(np.histogram(z, bins=4, range=(0, 1))[0] / n - 0.25) < 0.05)
    lz = (np.log(scale) - np.log(0.5)) / (np.log(2.0) - np.log(0.5))  # log-uniform
    assert scale.min() >= 0.5 and scale.max() <= 2.0 and abs(lz.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    shifts = np.concatenate([np.floor(x.shift * 8) for x in d])
    assert set(shifts) == set(range(8)) and np.all(np.abs(np.bincount(shifts.astype(int)) / n - 1 / 8) < 0.04)


def test_each_sample_carries_its_draws(synth_h5):
    """d_min, dropped fraction, U and scale, recovered from the batch itself."""
    src = _atoms_source(synth_h5, u_iso=[0.01, 0.05], d_min=[1.0, 2.0], drop=[0.05, 0.2])
    realised_drop = []
    for i in range(6):
        x, y = src.compute_batch(i)
        dr = src.draws(i)
        for j, key in enumerate(src.batch_keys(i)):
            s = src.structure(key)
            plan = grid_plan(10, 50, symmetry(s.symops))
            d = d_spacings(HKL, s.cell)
            given = x["mask"][j] > 0
            cand = plan.candidate & (d >= dr.d_min[j] - 1e-9)
            assert np.all(d[given] >= dr.d_min[j] - 1e-9) and not (given & ~cand).any()
            realised_drop.append((1 - given.sum() / cand.sum(), dr.drop[j], cand.sum()))
            assert np.array_equal(y[j, :, 0] >= 0, given) and np.all(x["intensity"][j][~given] == 0)
            # I = scale² exp(-4π² U s²) F₀²: regress log(I / F₀²) on s²
            f0 = structure_factors(with_u_iso(s, 0.0), HKL, real=True).real
            ok = given & (np.abs(f0) > 1e-3 * np.abs(f0).max())
            s2 = 1 / d[ok] ** 2
            slope, icpt = np.polyfit(s2, np.log(y[j, ok, 2] / f0[ok] ** 2), 1)
            assert -slope / (4 * np.pi**2) == pytest.approx(dr.u_iso[j], abs=2e-5)
            assert np.exp(icpt / 2) == pytest.approx(dr.scale[j], rel=1e-3)
    for got, want, n in realised_drop:
        assert abs(got - want) <= 0.5 / n + 1e-9


# ---- structure factors and input ----------------------------------------------------------
def test_without_augmentation_the_stored_structure_factors_come_back(synth_h5):
    """atoms source, nothing drawn: |F|² and signs equal the dataset's (written by phasenet synth)."""
    with h5py.File(synth_h5) as h5:
        calc, sign = h5["intensity_calc"][...], h5["sign"][...]
    for split in ("test", "train"):
        src = _atoms_source(synth_h5, split, augmentation=Augmentation.off(), batch_size=8)
        seen = []
        for i in range(src.steps_per_epoch if split == "test" else 6):
            x, y = src.compute_batch(i)
            rows = src.rows[src.batch_keys(i)]
            given = y[..., 0] >= 0
            assert np.array_equal(given, sign[rows] >= 0)  # every reflection but the absences
            np.testing.assert_allclose(y[..., 2][given], calc[rows][given], rtol=2e-5,
                                       atol=1e-6 * calc[rows].max())
            assert np.array_equal(y[..., 0][given], sign[rows][given].astype(np.float32))
            seen += list(rows)
        if split == "test":  # each test structure once, in order
            assert seen == list(src.rows)
        else:  # the training stream: passes over the rows in seeded orders
            keys = np.concatenate([src.batch_keys(i) for i in range(200)])
            assert set(keys) == set(range(len(src.rows)))


def test_synth_source_structures_are_those_of_phasenet_synth(synth_h5):
    cfg = _cfg(seed=3, synth_atoms=[8, 30])
    src = OnTheFlySource(cfg, "train", shuffle=True, augmentation=Augmentation.off())
    with DatasetReader(synth_h5) as ds:
        ids = list(ds.ids)
        for k in (0, 5, 11):
            row = ids.index(f"synth-s3-{k:08d}.cif#synth-s3-{k:08d}")
            s = synth_structure(k, src.options)
            plan = grid_plan(10, 50, symmetry(s.symops))
            draws = src.draws(0)
            out = make_samples(s, plan, draws, [0])
            calc = ds.row("intensity_calc", row)
            assert np.allclose(out.intensity_calc[0][out.mask[0] > 0], calc[out.mask[0] > 0], rtol=2e-5,
                               atol=1e-6 * calc.max())
            assert np.array_equal(out.sign[0], ds.row("sign", row).astype(np.float32))


def test_network_input_is_that_of_phasenet_training_inputs(synth_h5):
    src = _atoms_source(synth_h5)  # default draws: U, d_min 0.8-2.5, 0-15 % dropped, origin, scale
    n = 0
    for i in range(6):
        x, y = src.compute_batch(i)
        for j, key in enumerate(src.batch_keys(i)):
            s = src.structure(key)
            amp = np.where(y[j, :, 0] >= 0, np.sqrt(y[j, :, 2].astype(np.float64)), np.nan)
            ref = network_input(HKL, HKL, amp, s.cell, symmetry(s.symops), d_min=src.draws(i).d_min[j])
            assert np.array_equal(ref.mask, x["mask"][j])
            np.testing.assert_allclose(x["intensity"][j], ref.e2, rtol=1e-5, atol=1e-6)
            n += 1
    assert n == 96


def test_origin_shift_keeps_the_invariant_loss_and_changes_the_fixed_labels(synth_h5):
    keras = pytest.importorskip("keras")
    from phasenet.training.losses import SignLoss

    src = _atoms_source(synth_h5)
    s = src.structure(0)
    plan = grid_plan(10, 50, symmetry(s.symops))
    assert len(plan.flips) == 8
    base = src.draws(0, 8)
    shifted = dataclasses.replace(base, shift=(np.arange(8) + 0.5) / 8)  # sample k: shift k
    same = dataclasses.replace(base, shift=np.zeros(8))
    a, b = make_samples(s, plan, same, range(8)), make_samples(s, plan, shifted, range(8))
    assert np.array_equal(a.e2, b.e2) and np.array_equal(a.mask, b.mask)  # amplitudes unchanged
    given = a.mask > 0
    flips = np.array([plan.flips[k] for k in range(8)]) < 0
    assert np.array_equal(b.sign[given], np.where(flips, 1 - a.sign, a.sign)[given])
    assert (b.sign[1:] != a.sign[1:])[given[1:]].any(axis=-1).all()  # every non-zero shift relabels

    rng = np.random.default_rng(0)
    logits = rng.normal(size=a.e2.shape).astype(np.float32)
    ya = np.stack([a.sign, a.e2, a.intensity_calc], -1)
    yb = np.stack([b.sign, b.e2, b.intensity_calc], -1)

    def loss(origin, y):
        return np.asarray(keras.ops.convert_to_numpy(SignLoss("intensity", origin, 10, 50).call(y, logits)))

    np.testing.assert_allclose(loss("invariant", ya), loss("invariant", yb), rtol=1e-5, atol=1e-6)
    fixed_a, fixed_b = loss("fixed", ya), loss("fixed", yb)
    assert fixed_a[0] == pytest.approx(fixed_b[0]) and np.all(np.abs(fixed_a[1:] - fixed_b[1:]) > 1e-4)


# ---- the grid form ------------------------------------------------------------------------
def test_grid_form_places_each_reflection_and_its_friedel_mate():
    hkl = canonical_hkl(10)
    box = box_hkl(10)
    assert box.shape == (21 * 11 * 11, 3)
    idx = to_box(np.arange(len(hkl)), hkl, 10, fill=-1)
    assert idx.shape == (21, 11, 11)
    flat = idx.reshape(-1)
    on = flat >= 0
    rep, _ = friedel_representative(box)
    assert np.array_equal(hkl[flat[on]], rep[on])  # the reflection or its mate
    assert not on[(box == 0).all(1)].any() and on.sum() == len(box) - 1  # every cell but (000)
    assert idx[10 + 2, 3, 4] == np.flatnonzero((hkl == [2, 3, 4]).all(1))[0]
    assert idx[10 - 2, 0, 0] == np.flatnonzero((hkl == [2, 0, 0]).all(1))[0]  # Friedel mate
    sphere = to_box(np.ones((2, len(HKL)), np.float32), HKL, 10)  # a batch; mask of the 709
    assert sphere.shape == (2, 21, 11, 11) and sphere.dtype == np.float32
    r2 = (box**2).sum(1).reshape(21, 11, 11)
    assert np.array_equal(sphere[0] > 0, (r2 < 50) & (r2 > 0))


# ---- config and errors --------------------------------------------------------------------
def test_config_keys_are_checked():
    with pytest.raises(ConfigError, match="data.source.*allowed values: stored, atoms, synth"):
        config_from_dict({"data": {"source": "fly"}})
    with pytest.raises(ConfigError, match="data.d_min applies to on-the-fly data only"):
        config_from_dict({"data": {"d_min": [1.0, 2.0]}})
    with pytest.raises(ConfigError, match=r"data.drop = \[0.3, 0.1\]: must have lo <= hi"):
        config_from_dict({"data": {"source": "synth", "drop": [0.3, 0.1]}})
    with pytest.raises(ConfigError, match="must be a multiple of data.repeats = 3"):
        _cfg(repeats=3)
    with pytest.raises(ConfigError, match="data.repeats = 0: must be >= 1"):
        config_from_dict({"data": {"source": "synth", "repeats": 0}})
    with pytest.raises(ConfigError, match="unknown key 'data.dmin'"):
        config_from_dict({"data": {"source": "synth", "dmin": [1, 2]}})
    cfg = config_from_dict({"data": {"source": "atoms", "u_iso": [], "d_min": []}})
    assert cfg.input_kind() == "network" and config_from_dict({}).input_kind() == "stored"


def test_groups_without_sign_labels_and_missing_atoms_are_clear_errors(tmp_path):
    from phasenet.training.onthefly import OnTheFlyError

    with pytest.raises(OnTheFlyError, match="no inversion centre at the origin"):
        prepare_sources(_cfg(space_groups=["P21"]))
    bad = tmp_path / "no_atoms.h5"
    with h5py.File(bad, "w") as h5:
        h5.attrs.update(schema_version=1, complete=True, phasenet_version="x")
    with pytest.raises(Exception, match="no_atoms.h5"):
        prepare_sources(_cfg("atoms"), bad)
    with pytest.raises(OnTheFlyError, match="needs a dataset"):
        prepare_sources(_cfg("atoms"), None)


# ---- phasenet train, both backends, resume --------------------------------------------------
SMOKE = ["--set", "output.tensorboard=false", "--set", "output.plots=false", "--quiet",
         "--set", "data.r2_max=50", "--set", "run.batch_size=16", "--set", "model.width=32",
         "--set", "data.synth_packing=\"fast\"", "--set", "data.synth_atoms=[8, 30]",
         "--set", "data.max_test=16", "--set", "data.workers=2", "--set", "data.repeats=4"]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("backend,source", [("jax", "synth"), ("tensorflow", "atoms")])
def test_two_epoch_smoke_run(backend, source, synth_h5, tmp_path):
    out = tmp_path / backend
    args = ["train", REPO / "training" / "onthefly_mlp709.toml", "--out", out, "--epochs", 2, *SMOKE,
            "--set", f"data.source=\"{source}\"", "--set", "model.cell_input=true"]
    if source == "atoms":  # an atoms epoch is one pass over the dataset
        args += ["--data", synth_h5, "--set", "data.epoch_size=0"]
    else:
        args += ["--set", "data.epoch_size=64"]
    _ok(run_phasenet(args, backend, timeout=400))
    h = pd.read_csv(out / "history.csv")
    assert list(h["epoch"]) == [1, 2] and np.isfinite(h[["train_loss", "test_loss"]].to_numpy()).all()
    info = json.loads((out / "phasenet_model.json").read_text())
    assert info["input"] == "network" and info["data_source"] == source and info["n_reflections"] == 709
    code = (f"import keras; m = keras.saving.load_model(r'{out / 'model.keras'}'); "
            "print(sorted(i.name for i in m.inputs))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "['cell', 'intensity', 'mask']" in p.stdout, p.stderr[-2000:]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_history(tmp_path):
    from tests.training.test_training_run import KILLING_CLI  # the kill lands after a checkpoint

    config = REPO / "training" / "onthefly_mlp709.toml"
    args = ["--epochs", 5, *SMOKE, "--set", "data.epoch_size=48", "--set", "model.dropout=0.2"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _ok(run_phasenet(["train", config, "--out", ref, *args], "jax", timeout=400))
    script = tmp_path / "killing_cli.py"
    script.write_text(KILLING_CLI)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", KILL_AT="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(script), "train", str(config), "--out", str(cut),
                           *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    done = sorted(p.name for p in (cut / "checkpoints").glob("epoch-????") if p.is_dir())
    assert done[-1] == "epoch-0002" and list(pd.read_csv(cut / "history.csv")["epoch"]) == [1]
    resumed = _ok(run_phasenet(["train", config, "--out", cut, "--resume", *args], "jax", timeout=400))
    assert "(resumed from epoch-0002)" in resumed.stdout + resumed.stderr
    a = pd.read_csv(ref / "history.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "history.csv").drop(columns="seconds")
    assert list(b["epoch"]) == [1, 2, 3, 4, 5]
    assert np.array_equal(a.to_numpy(), b.to_numpy()), "not bit-identical: " + str((a - b).abs().max())
