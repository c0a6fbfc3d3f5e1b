"""[hardware]: data parallel over several devices and mixed precision, on CPU.

No GPU here, so several CPU devices stand in for GPUs: XLA_FLAGS=
--xla_force_host_platform_device_count=2 for JAX, two logical CPU devices for TF.
Each test runs its trainings in one fresh process (the backend and the device count are
fixed before Keras / TF / JAX are imported) through the Python API, and reports JSON.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

from tests.training_helpers import REPO

pytest.importorskip("keras")
DEMO = REPO / "training" / "demo.toml"

#: runs a body in a fresh process; ``train_run(out, **overrides)`` and ``report(obj)``
SCRIPT = '''
import phasenet  # noqa: F401
import json, os, sys

DEMO, DATA = {demo!r}, {data!r}
BASE = {{"data.r2_max": 50, "output.tensorboard": False, "output.plots": False}}


def train_run(out, epochs, resume=False, **overrides):
    from phasenet.training.config import load_config
    from phasenet.training.run import train

    over = dict(BASE, **{{k.replace("__", "."): v for k, v in overrides.items()}})
    return train(load_config(DEMO, list(over.items())), data=DATA, out=out, epochs=epochs,
                 resume=resume, verbose=0)


def report(obj):
    print("REPORT " + json.dumps(obj), flush=True)


def main():
{body}


if __name__ == "__main__":  # the batch reader may start processes by spawning
    main()
'''


def run_script(tmp_path, dataset, body: str, backend: str, devices: int = 1, timeout=300):
    """Run ``body`` (inside main()) in a fresh process; (REPORT objects, full output)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(demo=str(DEMO), data=str(dataset),
                                    body=textwrap.indent(textwrap.dedent(body), "    ")))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}").strip()
    p = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-4000:]
    return [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("REPORT ")], text


def _history(out):
    return pd.read_csv(out / "history.csv").drop(columns="seconds")


def _assert_same_history(a, b, rtol):
    assert list(a.columns) == list(b.columns) and list(a["epoch"]) == list(b["epoch"])
    rel = ((a - b).abs() / b.abs().clip(lower=1e-3)).to_numpy().max()
    assert rel <= rtol, f"largest relative difference {rel:.3g}\n{a}\n{b}"
    return rel


def _info(out):
    return json.loads((out / "phasenet_model.json").read_text())


def test_whole_replicas_cuts_only_an_indivisible_last_batch():
    from phasenet.training.run import _whole_replicas

    rows = np.arange(15)
    assert len(_whole_replicas(rows, 2, "test", 8)) == 14  # last batch 7 -> 6
    assert len(_whole_replicas(rows, 1, "test", 8)) == 15
    assert len(_whole_replicas(np.arange(18), 2, "test", 8)) == 18  # last batch 2
    assert len(_whole_replicas(np.arange(16), 4, "test", 8)) == 16
    assert len(_whole_replicas(np.arange(45), 2, "train", 8)) == 45  # whole batches only
    assert len(_whole_replicas(np.arange(7), 2, "train", 8)) == 6  # one short batch


def test_jax_data_parallel_two_devices_equals_one_device_and_resumes(dataset, tmp_path):
    """Batch norm and dropout on: the 2-device run (2 epochs, then --resume to 4) has the
    history of a single-device run; auto stays on one device on CPU."""
    reports, log = run_script(tmp_path, dataset, f"""
        import jax, keras
        report({{"devices": len(jax.devices())}})
        kw = dict(model__batch_norm=True, model__dropout=0.2, run__batch_size=8)
        dp = dict(kw, hardware__distribution="data_parallel")
        train_run(r"{tmp_path}/dp", 2, **dp)
        assert keras.distribution.distribution() is None, "distribution leaked"
        r = train_run(r"{tmp_path}/dp", 4, resume=True, **dp)
        report({{"resumed_from": r.resumed_from}})
        from phasenet.training.config import ConfigError
        try:
            train_run(r"{tmp_path}/odd", 1, hardware__distribution="data_parallel", run__batch_size=9)
        except ConfigError as e:
            report({{"error": str(e)}})
        train_run(r"{tmp_path}/auto", 4, **kw)  # 2 CPU devices, hardware.distribution = auto
        train_run(r"{tmp_path}/trim", 1, hardware__distribution="data_parallel", data__max_test=15)
    """, "jax", devices=2)
    assert reports[0] == {"devices": 2}
    assert reports[1] == {"resumed_from": 2}
    assert "run.batch_size = 9" in reports[2]["error"] and "2 data-parallel replicas" in reports[2]["error"]
    dp, auto = tmp_path / "dp", tmp_path / "auto"
    assert "jax DataParallel over 2 CPU device(s)" in log and "(resumed from epoch-0002)" in log
    assert _info(dp)["hardware"] == {"distribution": "jax DataParallel over 2 CPU device(s)",
                                     "replicas": 2, "mixed_precision": False}
    assert _info(auto)["hardware"]["replicas"] == 1  # auto: data parallel only over GPUs
    a, b = _history(dp), _history(auto)
    assert list(a["epoch"]) == [1, 2, 3, 4]
    assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]
    # Same global batches, dropout masks and batch-norm statistics over the global batch:
    # only the order of the cross-device sums differs (measured: 4e-7 relative).
    _assert_same_history(a, b, rtol=1e-5)
    # data.max_test = 15 test structures in one batch of 16: it cannot be split over 2
    # devices and loses one (the split itself is a hash of (seed, id): its
    # counts are read from the file, not assumed)
    with h5py.File(dataset, "r") as h5:
        split = h5["structures/split"].asstr()[:]
    n_train, n_test = int((split == "train").sum()), int((split == "test").sum())
    assert n_test >= 15, n_test
    assert "last batch (15 structures) is cut to 14; 14 of 15 test structures used" in log
    assert f"{n_train} train / 14 test structures" in log


def test_tensorflow_mirrored_two_logical_cpus_equals_one_device(dataset, tmp_path):
    """MirroredStrategy over 2 logical CPU devices against one device (no dropout or batch
    norm: TF draws dropout per replica and normalises over each replica's half batch)."""
    reports, log = run_script(tmp_path, dataset, f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        kw = dict(model__dropout=0.0, run__batch_size=8)
        train_run(r"{tmp_path}/dp", 3, hardware__distribution="data_parallel", **kw)
        train_run(r"{tmp_path}/one", 3, hardware__distribution="none", **kw)
        report({{"logical_cpus": len(tf.config.list_logical_devices("CPU"))}})
    """, "tensorflow")
    assert reports == [{"logical_cpus": 2}]
    assert "tf MirroredStrategy over 2 CPU replica(s)" in log
    assert _info(tmp_path / "dp")["hardware"]["replicas"] == 2
    assert _info(tmp_path / "one")["hardware"]["replicas"] == 1
    a, b = _history(tmp_path / "dp"), _history(tmp_path / "one")
    assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]
    _assert_same_history(a, b, rtol=1e-5)


MIXED = """
    import keras, numpy as np
    from keras import ops
    dt = keras.backend.standardize_dtype
    train_run(r"{out}", 2, hardware__mixed_precision=True, model__width=32)
    r = train_run(r"{out}", 3, resume=True, hardware__mixed_precision=True, model__width=32)
    after = keras.mixed_precision.global_policy().name
    m = keras.saving.load_model(r"{out}/checkpoints/epoch-0003/model.keras")  # compiled
    hidden, logits = m.get_layer("hidden_dense_0"), m.get_layer("sign_logits")
    x = np.abs(np.random.default_rng(0).normal(size=(4, 709))).astype("float32")
    y = np.stack([np.ones((4, 709)), x, x], axis=-1).astype("float32")
    z = m(x)
    loss16 = m.loss(y, ops.cast(z, "float16"))
    final = keras.saving.load_model(r"{out}/model.keras")
    # what a fresh run and a resumed one (both under the mixed policy) train with
    from phasenet.training.config import load_config
    from phasenet.training.models import build_model
    from phasenet.training.run import compile_model
    keras.mixed_precision.set_global_policy("mixed_float16")
    cfg = load_config(DEMO, list(dict(BASE, **{{"model.width": 32}}).items()))
    optimizers = [type(compile_model(build_model(cfg, 709), cfg).optimizer).__name__, type(
        keras.saving.load_model(r"{out}/checkpoints/epoch-0003/model.keras").optimizer).__name__]
    keras.mixed_precision.set_global_policy("float32")
    p = final.predict(x, verbose=0)
    report(dict(
        policy_after=after, distribution_after=str(keras.distribution.distribution()),
        hidden=[hidden.dtype_policy.name, hidden.compute_dtype, hidden.variable_dtype,
                dt(hidden.kernel.dtype)],
        logits=[logits.compute_dtype, dt(z.dtype)],
        hidden_output=dt(m.get_layer("hidden_dropout_0").output.dtype),
        optimizers=optimizers, loss_dtype=dt(loss16.dtype),
        predict=[dt(p.dtype), bool(np.isfinite(p).all()), float(p.min()), float(p.max())],
        loss=list(map(float, r.history["train_loss"])), resumed_from=r.resumed_from))
"""


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_mixed_precision(dataset, tmp_path, backend):
    out = tmp_path / "mp"
    reports, _ = run_script(tmp_path, dataset, MIXED.format(out=out), backend)
    r = reports[0]
    assert r["policy_after"] == "float32" and r["distribution_after"] == "None"  # no leakage
    assert r["hidden"] == ["mixed_float16", "float16", "float32", "float32"]
    assert r["hidden_output"] == "float16"
    assert r["logits"] == ["float32", "float32"]  # the output layer computes in float32
    assert r["optimizers"] == ["LossScaleOptimizer"] * 2  # dynamic loss scaling, also on resume
    assert r["loss_dtype"] == "float32"  # float16 logits in, float32 loss out
    assert r["predict"][:2] == ["float32", True] and 0 < r["predict"][2] <= r["predict"][3] < 1
    assert r["resumed_from"] == 2
    loss = np.array(r["loss"])
    assert np.isfinite(loss).all() and loss[-1] < loss[0], loss
    assert _info(out)["hardware"]["mixed_precision"] is True
