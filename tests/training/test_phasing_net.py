"""The phasing network (phasenet.training.phasing_net): grid, shapes and masks, recycling,
export, and save/reload on both Keras backends. A tiny configuration (the ±4 grid) keeps
it fast; the shipped model's scores are tested in tests/baselines/test_network.py."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phasenet.reflections import canonical_hkl
from phasenet.training.config import TrainConfig
from phasenet.training.phasing_net import grid_indices, grid_shape

MAX_INDEX = 4


def tiny_config(cycles=3, seed=0) -> TrainConfig:
    cfg = TrainConfig()
    cfg.run.seed = seed
    cfg.data.source = "synth"
    cfg.data.max_index = MAX_INDEX
    cfg.loss.origin = "invariant"
    m = cfg.model
    m.architecture, m.filters, m.conv_blocks, m.mixer_blocks = "phasing-net", 4, 1, 1
    m.token_width, m.channel_width, m.head_filters, m.cycles = 8, 8, 2, cycles
    return cfg


def inputs(n, seed=0):
    r = len(canonical_hkl(MAX_INDEX))
    rng = np.random.default_rng(seed)
    mask = (rng.random((n, r)) < 0.7).astype("float32")
    e2 = (rng.exponential(1.0, (n, r)) * mask).astype("float32")
    return e2, mask


def test_grid_holds_every_reflection_once_and_friedel_mates_alike():
    hkl = np.asarray(canonical_hkl(MAX_INDEX))
    to_flat, to_voxel = grid_indices(MAX_INDEX)
    shape = grid_shape(MAX_INDEX)
    assert shape == (5, 9, 9) and len(to_flat) == np.prod(shape)
    # every reflection has its own voxel, and that voxel reads it back
    assert len(np.unique(to_voxel)) == len(hkl)
    np.testing.assert_array_equal(to_flat[to_voxel], np.arange(len(hkl)))
    # the only voxel without a reflection is 000; on the h = 0 plane, (0,k,l) and (0,-k,-l)
    # read the same reflection
    empty = np.flatnonzero(to_flat == len(hkl))
    assert np.unravel_index(empty, shape) == (np.array([0]), np.array([MAX_INDEX]), np.array([MAX_INDEX]))
    k, l = 2, -3
    a = np.ravel_multi_index((0, k + MAX_INDEX, l + MAX_INDEX), shape)
    b = np.ravel_multi_index((0, -k + MAX_INDEX, -l + MAX_INDEX), shape)
    assert to_flat[a] == to_flat[b] != len(hkl)


def test_shapes_masks_and_grid_layers():
    import keras

    from phasenet.training.phasing_net import FromGrid, ToGrid, build_core

    cfg = tiny_config()
    r = len(canonical_hkl(MAX_INDEX))
    x = np.random.default_rng(1).normal(size=(2, r, 3)).astype("float32")
    g = keras.ops.convert_to_numpy(ToGrid(MAX_INDEX)(x))
    assert g.shape == (2, 5, 9, 9, 3)
    assert np.all(g[:, 0, MAX_INDEX, MAX_INDEX] == 0)  # 000: nothing
    back = keras.ops.convert_to_numpy(FromGrid(MAX_INDEX)(g[..., 1]))
    np.testing.assert_array_equal(back, x[..., 1])
    core = build_core(cfg, r)
    assert sorted(core.input) == ["intensity", "mask", "phase"]
    e2, mask = inputs(3)
    z = keras.ops.convert_to_numpy(core({"intensity": e2, "mask": mask, "phase": np.zeros_like(e2)}))
    assert z.shape == (3, r) and np.isfinite(z).all()


def test_recycling_unrolls_the_core_and_draws_starts_only_in_training():
    import keras
    from keras import ops

    from phasenet.training.models import build_model, export_model

    cfg = tiny_config(cycles=3)
    r = len(canonical_hkl(MAX_INDEX))
    model = build_model(cfg, r)
    core = model.get_layer("sign_core")
    e2, mask = inputs(4)
    x = {"intensity": e2, "mask": mask}
    # inference: three cycles from no phases, each given tanh(z/2)·mask of the one before
    phase = np.zeros_like(e2)
    for _ in range(3):
        z = ops.convert_to_numpy(core({"intensity": e2, "mask": mask, "phase": phase}))
        phase = np.tanh(z / 2) * mask
    np.testing.assert_allclose(ops.convert_to_numpy(model(x, training=False)), z, rtol=1e-4, atol=1e-5)
    # training: random starts and a random number of cycles per sample, so two calls differ
    a = ops.convert_to_numpy(model(x, training=True))
    b = ops.convert_to_numpy(model(x, training=True))
    assert not np.allclose(a, b)
    start = model.get_layer("start_phase")
    s = ops.convert_to_numpy(start(ops.convert_to_tensor(np.ones((64, r), "float32")), training=True))
    assert np.all(np.abs(s) <= 1) and 0.2 < (np.abs(s).max(axis=1) > 0).mean() < 0.8
    assert np.all(ops.convert_to_numpy(start(ops.convert_to_tensor(mask), training=True))[mask == 0] == 0)
    # the exported model is the core ending in a sigmoid: it takes the phase estimate
    exported = export_model(model, "sign")
    p = ops.convert_to_numpy(exported({"intensity": e2, "mask": mask, "phase": np.zeros_like(e2)}))
    z0 = ops.convert_to_numpy(core({"intensity": e2, "mask": mask, "phase": np.zeros_like(e2)}))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z0)), rtol=1e-4, atol=1e-6)


def test_gradient_flows_through_the_last_cycle_only():
    """The earlier cycles' outputs are given with the gradient stopped: the loss gradient
    equals that of the core applied once to those (constant) estimates."""
    import keras
    from keras import ops

    from phasenet.training.models import build_model

    cfg = tiny_config(cycles=2)
    r = len(canonical_hkl(MAX_INDEX))
    model = build_model(cfg, r)
    core = model.get_layer("sign_core")
    recycle = model.get_layer("recycle_0")
    e2, mask = inputs(2)
    t = ops.convert_to_tensor
    z1 = core({"intensity": t(e2), "mask": t(mask), "phase": t(np.zeros_like(e2))})
    est = recycle(z1, t(mask))
    # stop_gradient: d(est)/d(weights) is zero, whatever the backend
    if keras.backend.backend() == "jax":
        import jax

        def f(weights):
            z = core.stateless_call(weights, [], {"intensity": e2, "mask": mask, "phase": np.zeros_like(e2)})[0]
            return ops.sum(recycle(z, t(mask)))

        grads = jax.grad(f)([v.value for v in core.trainable_variables])
        assert all(float(np.abs(np.asarray(g)).max()) == 0.0 for g in grads)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            z = core({"intensity": t(e2), "mask": t(mask), "phase": t(np.zeros_like(e2))})
            s = tf.reduce_sum(recycle(z, t(mask)))
        grads = tape.gradient(s, core.trainable_variables)
        assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in grads)
    assert np.all(np.abs(ops.convert_to_numpy(est)) <= 1)


LOAD_AND_PREDICT = """
import phasenet  # first (cctbx import order), then the layers' module registers them
import phasenet.training.phasing_net
import sys, numpy as np, keras
m = keras.saving.load_model(sys.argv[1])
d = np.load(sys.argv[2])
p = m.predict({"intensity": d["e2"], "mask": d["mask"], "phase": d["phase"]}, verbose=0)
np.save(sys.argv[3], p)
"""


@pytest.mark.slow
def test_save_and_reload_on_both_backends(tmp_path):
    """A model exported by one backend loads and predicts the same on JAX and TensorFlow."""
    from phasenet.training.models import build_model, export_model

    cfg = tiny_config()
    r = len(canonical_hkl(MAX_INDEX))
    model = build_model(cfg, r)
    path = tmp_path / "model.keras"
    export_model(model, "sign").save(path)
    e2, mask = inputs(3, seed=5)
    phase = np.random.default_rng(2).uniform(-1, 1, e2.shape).astype("float32") * mask
    np.savez(tmp_path / "x.npz", e2=e2, mask=mask, phase=phase)
    script = tmp_path / "predict.py"
    script.write_text(LOAD_AND_PREDICT)
    out = {}
    for backend in ("jax", "tensorflow"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npz"),
                               str(tmp_path / f"{backend}.npy")], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[backend] = np.load(tmp_path / f"{backend}.npy")
    assert out["jax"].shape == (3, r)
    np.testing.assert_allclose(out["jax"], out["tensorflow"], atol=2e-5)
    # and the same as the model in this process
    import keras

    here = keras.ops.convert_to_numpy(export_model(model, "sign")({"intensity": e2, "mask": mask, "phase": phase}))
    np.testing.assert_allclose(out["jax"], here, atol=2e-5)


def test_config_keys_are_checked():
    from phasenet.training.config import ConfigError, load_config

    from tests.conftest import REPO_ROOT

    with pytest.raises(ConfigError, match="model.cycles"):
        load_config(REPO_ROOT / "training" / "phasing_net_cpu.toml", ["model.cycles=0"])


def test_cpu_config_builds_the_documented_model():
    """training/phasing_net_cpu.toml: the ±10 grid (4 630 reflections), < 20 MB of weights."""
    from tests.conftest import REPO_ROOT

    from phasenet.training.config import load_config
    from phasenet.training.models import build_model

    cfg = load_config(REPO_ROOT / "training" / "phasing_net_cpu.toml")
    model = build_model(cfg, len(canonical_hkl(cfg.data.max_index)))
    assert model.get_layer("sign_core").output.shape[-1] == 4630
    assert model.count_params() * 4 < 20e6
    json.dumps(cfg.to_dict())  # a plain config


def test_phase_hints_are_partly_right_signs_of_the_labelled_reflections():
    from phasenet.training.onthefly import phase_hint

    rng = np.random.default_rng(0)
    sign = rng.integers(-1, 2, (200, 300)).astype("float32")  # -1: no label
    h = phase_hint(sign, (0.1, 0.45), 0.5, np.random.default_rng(1))
    hinted = np.abs(h).max(axis=1) > 0
    assert 0.35 < hinted.mean() < 0.65  # the share
    assert np.all(h[sign < 0] == 0) and np.all(np.abs(h) <= 1)
    ok = (sign >= 0) & hinted[:, None]
    wrong = ((h > 0) != (sign > 0))[ok].mean()
    assert 0.15 < wrong < 0.4  # 10-45 % turned over, 27.5 % on average
    again = phase_hint(sign, (0.1, 0.45), 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(h, again)


def test_hinted_samples_are_scored_at_the_stored_origin():
    """A 4th target channel marks samples whose origin was given: their loss is the loss at
    the stored origin, not the minimum over the 8 origins."""
    from keras import ops

    from phasenet.reflections import origin_sign_flips
    from phasenet.training.losses import SignLoss

    hkl = canonical_hkl(MAX_INDEX)
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, (2, len(hkl))).astype("float32")
    w = rng.exponential(1.0, s.shape).astype("float32")
    f = origin_sign_flips(hkl)[3]  # another origin
    s_moved = np.where(f > 0, s, 1 - s)
    logits = (2 * s_moved - 1) * 4.0  # right at the other origin
    loss = SignLoss("intensity", "invariant", MAX_INDEX)
    free = np.stack([s, w, w], axis=-1)
    fixed = np.concatenate([free, np.ones(s.shape + (1,), "float32")], axis=-1)
    free_loss = float(ops.convert_to_numpy(loss(free, logits)))
    fixed_loss = float(ops.convert_to_numpy(loss(fixed, logits)))
    assert free_loss < 0.05 < fixed_loss
