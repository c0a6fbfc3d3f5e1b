"""One training run: dataset checks, model, ``model.fit``, checkpoints, resume, outputs.

A run folder holds::

    config.toml            the resolved config (defaults, file and overrides)
    history.csv            per epoch: train_/test_ loss and every metric, seconds
    checkpoints/epoch-NNNN/{model.keras,state.json}
                           model + optimizer state after epoch NNNN, and the history
    model.keras            the final model; plain keras.saving.load_model reads it
                           (sign models output P(sign = 1), autoencoders the reconstruction)
    phasenet_model.json    what the model expects: reflections, input kind ("stored" or
                           "network": {"intensity", "mask"}), input transform, task
    learning_curves.png    loss and accuracy against epoch, train and test
    tensorboard/           TensorBoard logs (needs TensorFlow installed)
    reflection_errors.csv/.png  (autoencoders) error per reflection on the test split

Resume: the data stream is a function of (seed, batch number) and the checkpoint
holds weights, optimizer state and the RNG state of the dropout layers, so a run
killed after epoch k and resumed ends with the history of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phasenet.training.config import ConfigError, TrainConfig

BACKENDS = ("tensorflow", "jax")
MODEL_INFO = "phasenet_model.json"


class RunError(RuntimeError):
    """A run that cannot start or continue (existing folder, changed config)."""


def select_backend(name: str = "auto") -> str:
    """Choose the Keras backend before Keras is imported; refuse a conflicting one after."""
    name = name or "auto"
    if name == "auto":
        name = os.environ.get("KERAS_BACKEND", "tensorflow")
    if name not in BACKENDS:
        raise ConfigError(f"hardware.backend = {name!r}: allowed values: auto, {', '.join(BACKENDS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise ConfigError(f"hardware.backend = {name!r}, but Keras was already imported with the "
                              f"{keras.backend.backend()!r} backend; set KERAS_BACKEND={name} before "
                              "starting Python (or use `phasenet train --backend`)")
    else:
        os.environ["KERAS_BACKEND"] = name
    return name


@dataclass
class RunResult:
    out: Path
    history: object  # pandas DataFrame
    epochs_done: int
    resumed_from: int  # 0: fresh start
    model_path: Path
    seconds: float


def _latest_checkpoint(out: Path):
    ck = out / "checkpoints"
    done = sorted(p for p in ck.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "state.json").is_file()) if ck.is_dir() else []
    return done[-1] if done else None


def _comparable(cfg_dict: dict) -> dict:
    d = json.loads(json.dumps(cfg_dict))
    d["run"].pop("epochs", None)
    d.pop("output", None)
    d["data"].pop("path", None)
    d["data"].pop("recipe", None)  # how the dataset is made: a description, like path
    d["data"].pop("prefetch", None)  # how rows are read, not which: the batches are the same
    d["data"].pop("in_memory", None)
    d["data"].pop("workers", None)  # on-the-fly: how many processes compute the same batches
    if d["data"].get("source", "stored") == "stored":  # (checkpoints from before these keys)
        from phasenet.training.config import ONTHEFLY_KEYS

        for k in ONTHEFLY_KEYS + ("source",):
            d["data"].pop(k, None)
    return d


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _history_csv(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    stems = sorted({c.split("_", 1)[1] for c in df.columns if c.startswith(("train_", "test_"))},
                   key=lambda s: (s != "loss", s))
    cols = ["epoch"] + [f"{sp}_{s}" for s in stems for sp in ("train", "test") if f"{sp}_{s}" in df]
    return df[cols + [c for c in df.columns if c not in cols]].to_csv(index=False)


def _devices(backend: str):
    """(GPUs, CPUs) this process sees, as the backend names them (TF: logical devices)."""
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
        return gpus, jax.devices("cpu")
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU"), tf.config.list_logical_devices("CPU")


def _distribution(cfg: TrainConfig, backend: str):
    """(context for model creation, replicas, description, undo) for hardware.distribution.

    ``auto``: data parallel over all GPUs when there are several, else one device (a CPU
    run stays on one device). ``data_parallel``: every GPU, or, without GPUs, every CPU
    device the backend sees (one, unless several were made: XLA_FLAGS=
    --xla_force_host_platform_device_count=N for JAX, logical devices for TF). The batch
    of ``run.batch_size`` structures is the global batch, split evenly over the replicas.
    ``undo()`` puts back the global Keras distribution (JAX) the run replaced.
    """
    mode = cfg.hardware.distribution
    gpus, cpus = _devices(backend)
    if mode == "auto":
        mode = "data_parallel" if len(gpus) > 1 else "none"
    if mode == "none":
        return contextlib.nullcontext(), 1, "one device", lambda: None
    devices = gpus or cpus
    kind = "GPU" if gpus else "CPU"
    if backend == "jax":
        import keras

        previous = keras.distribution.distribution()
        names = keras.distribution.list_devices("gpu" if gpus else "cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
        return (contextlib.nullcontext(), len(names),
                f"jax DataParallel over {len(names)} {kind} device(s)",
                lambda: keras.distribution.set_distribution(previous))
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    n = strategy.num_replicas_in_sync
    return strategy.scope(), n, f"tf MirroredStrategy over {n} {kind} replica(s)", lambda: None


@contextlib.contextmanager
def _hardware(cfg: TrainConfig, backend: str):
    """Mixed precision policy and distribution for one run; the previous global ones after."""
    import keras

    policy = keras.mixed_precision.global_policy()
    undo = None
    try:
        if cfg.hardware.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        scope, replicas, text, undo = _distribution(cfg, backend)
        if cfg.run.batch_size % replicas:
            raise ConfigError(f"run.batch_size = {cfg.run.batch_size} must be a multiple of the "
                              f"{replicas} data-parallel replicas (it is the global batch, split "
                              "evenly over them); change run.batch_size or hardware.distribution")
        yield scope, replicas, text
    finally:
        if undo is not None:
            undo()
        keras.mixed_precision.set_global_policy(policy)


def _whole_replicas(rows, replicas: int, split: str, batch_size: int):
    """Rows of ``split`` such that every batch splits evenly over the replicas.

    Data parallel needs equal shares: JAX shards each batch with the layout Keras takes
    from the first batch of a pass, and TF's MirroredStrategy fails on a last batch of
    8 + 7 rows (keras 3.15, TF 2.21). Shuffled training uses whole batches only; a split
    whose last batch does not divide loses its last (< replicas) structures, with a note.
    """
    n = len(rows)
    last = n % batch_size if n >= batch_size else n
    if split == "train" and n >= batch_size:
        return rows  # shuffled training uses whole batches only
    cut = last % replicas
    if cut:
        print(f"[train] note: data parallel over {replicas} replicas: the {split} split's last "
              f"batch ({last} structures) is cut to {last - cut}; {n - cut} of {n} {split} "
              "structures used", file=sys.stderr)
        return rows[:n - cut]
    return rows


def compile_model(model, cfg: TrainConfig):
    import keras

    from phasenet.training.losses import SignLoss, sign_metrics

    o = cfg.optimizer
    kw = {"learning_rate": o.learning_rate}
    if o.clipnorm > 0:
        kw["clipnorm"] = o.clipnorm
    opt = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
           "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[o.name](**kw)
    if cfg.data.task == "sign":
        loss = SignLoss(cfg.loss.weight, cfg.loss.origin, cfg.data.max_index, cfg.data.r2_max)
        metrics = sign_metrics(cfg.loss.weight, cfg.data.max_index, cfg.data.r2_max)
    else:
        loss, metrics = "mse", ["mae"]
    model.compile(optimizer=opt, loss=loss, metrics=metrics)
    return model


def _rng_states(model) -> dict:
    """{layer name: seed-generator state} of the layers that draw random numbers (dropout).

    Keras saves these states as zeros (keras 3.15), so a checkpoint keeps them itself.
    """
    import numpy as np
    from keras import ops

    out = {}
    for layer in model._flatten_layers(include_self=False):
        sg = getattr(layer, "seed_generator", None)
        if sg is not None:
            out[layer.name] = np.asarray(ops.convert_to_numpy(sg.state.value)).tolist()
    return out


def _restore_rng_states(model, states: dict):
    import numpy as np

    for layer in model._flatten_layers(include_self=False):
        sg = getattr(layer, "seed_generator", None)
        if sg is not None and layer.name in states:
            sg.state.assign(np.asarray(states[layer.name], dtype=sg.state.dtype))


def _make_checkpointer(out: Path, rows: list, keep: int, cfg_dict: dict, t0: list):
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """After every epoch: checkpoint folder (atomic rename), then history.csv."""

        def on_epoch_begin(self, epoch, logs=None):
            t0[0] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1}
            for k, v in sorted((logs or {}).items()):
                name = "test_" + k[4:] if k.startswith("val_") else "train_" + k
                row[name] = float(v)
            row["seconds"] = round(time.perf_counter() - t0[0], 3)
            rows.append(row)
            ck = out / "checkpoints"
            ck.mkdir(parents=True, exist_ok=True)
            final = ck / f"epoch-{epoch + 1:04d}"
            tmp = ck / f"epoch-{epoch + 1:04d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            self.model.save(tmp / "model.keras")
            (tmp / "state.json").write_text(json.dumps(
                {"epoch": epoch + 1, "history": rows, "config": cfg_dict,
                 "rng_states": _rng_states(self.model)}, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_atomic(out / "history.csv", _history_csv(rows))
            old = sorted(p for p in ck.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp"))
            for p in old[:-keep]:
                shutil.rmtree(p, ignore_errors=True)

    return EpochCheckpoint()


def _seed_everything(seed: int, backend: str):
    """keras.utils.set_random_seed, without importing TensorFlow into a JAX run (~5 s)."""
    import keras

    if backend == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:  # what set_random_seed does besides seeding TF
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils import rng_utils

        global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except (ImportError, AttributeError):
        keras.utils.set_random_seed(seed)


def _tensorboard(out: Path):
    import importlib.util

    missing = [m for m in ("tensorflow", "tensorboard") if importlib.util.find_spec(m) is None]
    if missing:  # keras' TensorBoard callback writes with tf.summary, which needs both
        print(f"[train] TensorBoard logs skipped: {' and '.join(missing)} not installed "
              "(pip install tensorboard)", file=sys.stderr)
        return None
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard"), write_graph=False,
                                       profile_batch=0)


def prepare_run(cfg: TrainConfig, data=None):
    """Checks that need no Keras: the data path, the dataset against the config, the splits."""
    from phasenet.io.hdf5 import DatasetReader
    from phasenet.training.data import check_dataset, select_rows

    if cfg.data.source != "stored":  # structure factors made on the fly
        from phasenet.training.onthefly import prepare_sources

        path = Path(data or cfg.data.path) if str(data or cfg.data.path) else None
        train_rows, test_rows = prepare_sources(cfg, path)
        return path, train_rows, test_rows
    path = Path(data or cfg.data.path)
    if not str(data or cfg.data.path):
        raise ConfigError("data.path is empty: give --data DATA.h5 or set data.path in the config")
    with DatasetReader(path) as ds:
        check_dataset(ds, cfg)
        train_rows = select_rows(ds, "train", cfg)
        test_rows = select_rows(ds, "test", cfg)
    if cfg.run.batch_size > len(train_rows):
        print(f"[train] note: batch_size {cfg.run.batch_size} > {len(train_rows)} training structures",
              file=sys.stderr)
    return path, train_rows, test_rows


def train(cfg: TrainConfig, *, data=None, out=None, resume: bool = False, epochs: int | None = None,
          verbose: int | None = None) -> RunResult:
    """Train ``cfg`` on ``data`` (default cfg.data.path) into ``out`` (default runs/<name>)."""
    import copy

    cfg = copy.deepcopy(cfg)
    if epochs is not None:
        cfg.run.epochs = int(epochs)
    backend = select_backend(cfg.hardware.backend)
    path, train_rows, test_rows = prepare_run(cfg, data)
    cfg.data.path = str(path) if path is not None else ""
    out = Path(out or Path("runs") / (cfg.run.name or "run"))
    latest = _latest_checkpoint(out)
    if latest is not None and not resume:
        raise RunError(f"{out} already holds a run ({latest.relative_to(out)}); pass --resume to "
                       "continue it, or choose another --out")
    cfg_dict = cfg.to_dict(with_sweep=False)
    state = None
    if latest is not None:
        state = json.loads((latest / "state.json").read_text())
        if _comparable(state["config"]) != _comparable(cfg_dict):
            raise RunError(f"{out}: the config differs from the one the run was started with "
                           f"(see {out / 'config.toml'}); only run.epochs, data.path and [output] "
                           "may change on --resume")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "config.toml", cfg.to_toml(with_sweep=False))

    from phasenet.training import losses  # noqa: F401  (registers the custom objects)

    if backend == "tensorflow" and cfg.run.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    _seed_everything(cfg.run.seed, backend)
    with _hardware(cfg, backend) as (scope, replicas, dist_text):
        return _fit(cfg, cfg_dict, backend, path, train_rows, test_rows, out, state, latest,
                    scope, replicas, dist_text, verbose)


def _fit(cfg, cfg_dict, backend, path, train_rows, test_rows, out, state, latest, scope,
         replicas, dist_text, verbose) -> RunResult:
    import keras

    from phasenet.training.data import BatchSource, keras_dataset
    from phasenet.training.models import build_model, export_model

    if replicas > 1 and cfg.data.source != "synth":
        train_rows = _whole_replicas(train_rows, replicas, "train", cfg.run.batch_size)
        test_rows = _whole_replicas(test_rows, replicas, "test", cfg.run.batch_size)
    if cfg.data.source == "stored":
        train_src = BatchSource(path, cfg, "train", shuffle=True, rows=train_rows)
        test_src = BatchSource(path, cfg, "test", shuffle=False, rows=test_rows)
    else:
        from phasenet.training.onthefly import OnTheFlySource

        train_src = OnTheFlySource(cfg, "train", shuffle=True, path=path, rows=train_rows)
        test_src = OnTheFlySource(cfg, "test", shuffle=False, path=path, rows=test_rows)
    try:  # the reader processes and files are released whatever happens (Ctrl-C too)
        start_epoch = state["epoch"] if state else 0
        rows = list(state["history"]) if state else []
        with scope:
            if state:
                from phasenet.training.registry import load_custom_objects

                load_custom_objects(cfg)
                model = keras.saving.load_model(latest / "model.keras")
                _restore_rng_states(model, state.get("rng_states", {}))
            else:
                model = compile_model(build_model(cfg, train_src.n_reflections), cfg)
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        print(f"[train] {cfg.run.name}: {cfg.data.task} model {model.name}, {model.count_params():,} "
              f"parameters, backend {backend}, {dist_text}; {train_src.n} train / {test_src.n} test "
              + ("structures" if cfg.data.source == "stored" else
                 f"{'samples per epoch' if cfg.data.source == 'synth' else 'structures'} made on the fly "
                 f"({cfg.data.source})")
              + f", {train_src.n_reflections} reflections; epochs {start_epoch + 1}..{cfg.run.epochs}"
              + (f" (resumed from {latest.name})" if state else ""), flush=True)
        t0 = [0.0]
        callbacks = [_make_checkpointer(out, rows, cfg.output.keep_checkpoints, cfg_dict, t0)]
        if cfg.output.tensorboard:
            tb = _tensorboard(out)
            if tb is not None:
                callbacks.append(tb)
        started = time.perf_counter()
        if start_epoch < cfg.run.epochs:
            model.fit(keras_dataset(train_src, start_batch=start_epoch * train_src.steps_per_epoch),
                      validation_data=keras_dataset(test_src), epochs=cfg.run.epochs,
                      initial_epoch=start_epoch, steps_per_epoch=train_src.steps_per_epoch,
                      callbacks=callbacks, verbose=verbose, shuffle=False)
        elapsed = time.perf_counter() - started
        _write_atomic(out / "history.csv", _history_csv(rows))
        model_path = out / "model.keras"
        export_model(model, cfg.data.task).save(model_path)
        from phasenet.version import __version__

        info = {"task": cfg.data.task, "max_index": cfg.data.max_index, "r2_max": cfg.data.r2_max,
                "n_reflections": train_src.n_reflections, "input_transform": cfg.data.input_transform,
                "cell_input": cfg.model.cell_input,
                # "stored": the dataset's intensity column; "network": the dict {"intensity":
                # |E|², "mask"} of phasenet.training.inputs.network_input
                "input": cfg.input_kind(), "data_source": cfg.data.source,
                "output": "sign_probability" if cfg.data.task == "sign" else "reconstruction",
                "backend": backend, "keras_version": keras.__version__, "phasenet_version": __version__,
                "epochs": len(rows), "dataset": str(path) if path is not None else "",
                "hardware": {"distribution": dist_text, "replicas": replicas,
                             "mixed_precision": cfg.hardware.mixed_precision}}
        _write_atomic(out / MODEL_INFO, json.dumps(info, indent=1))
        if cfg.output.plots:
            from phasenet.training import plots

            plots.plot_history(out / "history.csv", out / "learning_curves.png", title=cfg.run.name)
            if cfg.data.task == "autoencoder":
                errors = plots.reflection_errors(model, test_src)
                errors.to_csv(out / "reflection_errors.csv", index=False)
                plots.plot_reflection_errors({cfg.run.name: errors}, out / "reflection_errors.png")
    finally:
        train_src.close()
        test_src.close()
    import pandas as pd

    return RunResult(out=out, history=pd.DataFrame(rows), epochs_done=len(rows),
                     resumed_from=start_epoch, model_path=model_path, seconds=elapsed)
