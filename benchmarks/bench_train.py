"""Training throughput (samples/s) of the study's main models on each Keras backend, and
streaming from HDF5 vs the same rows held in memory.

Models: ``dense4630`` (two hidden layers of 4630 + 4630 output: the study's first model),
``dense709x1`` / ``dense709x3`` (1 and 3 hidden layers of 709 on 709 inputs),
``ae100`` (autoencoder 4630 -> 100 -> 4630). Data: an HDF5 file in the phasenet schema
(lzf, one chunk per structure) with random intensities and signs, written once into
--workdir; throughput does not depend on the values. Each measurement trains with
``model.fit`` through phasenet's own data stream; the first epoch (compilation, reader
process start) is not timed. "stream" reads the HDF5 file, "memory" (``data.in_memory``)
holds the same rows in memory; both assemble batches in phasenet's reader process, so
only the source differs. Stream and memory runs alternate ``--repeats`` times; the table
gives the best of each (the machine is shared: the best is the least disturbed run),
their ratio, and the ratio of the medians (less sensitive to one lucky run).
``--compression lzf|gzip|none`` sets the file's compression (default lzf, as build;
random values do not compress, so HDF5 stores lzf chunks raw).
dense4630 trains on a 640-row subset (``data.max_train``) to keep its epochs short.

    python benchmarks/bench_train.py                       # both backends, all models
    python benchmarks/bench_train.py --backend jax --models ae100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = {  # name: (reflections r2_max, task, overrides)
    "dense4630": (0, "sign", {"model.widths": ["input", "input"], "data.max_train": 640}),
    "dense709x1": (50, "sign", {"model.width": "input", "model.depth": 1}),
    "dense709x3": (50, "sign", {"model.width": "input", "model.depth": 3}),
    "ae100": (0, "autoencoder", {"model.depth": 0, "model.bottleneck": 100}),
}


def timed_fit(model, dataset, epochs: int, steps_per_epoch: int) -> list[float]:
    """``model.fit`` on ``dataset``; the seconds of each epoch (the first one compiles)."""
    import keras

    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[Timer()],
              verbose=0, shuffle=False)
    return times


def write_dataset(path: Path, n: int, r2_max: int, seed: int = 0, compression: str | None = "lzf") -> Path:
    """A schema-v1 file with random rows (only the arrays training reads)."""
    import h5py
    import numpy as np

    import phasenet  # noqa: F401
    from phasenet.io.hdf5 import SCHEMA_VERSION, STR
    from phasenet.reflections import canonical_hkl

    if path.exists():
        return path
    hkl = canonical_hkl(10, r2_max or None)
    r = len(hkl)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as h5:
        h5["hkl"] = hkl
        kw = dict(shape=(n, r), chunks=(1, r), compression=compression)
        ds = {k: h5.create_dataset(k, dtype=np.float32, **kw) for k in ("intensity", "intensity_calc")}
        sign = h5.create_dataset("sign", dtype=np.int8, **kw)
        for lo in range(0, n, 1000):
            m = min(1000, n - lo)
            x = rng.exponential(0.05, (m, r)).astype(np.float32)
            ds["intensity"][lo:lo + m] = x
            ds["intensity_calc"][lo:lo + m] = x
            sign[lo:lo + m] = rng.integers(0, 2, (m, r))
        g = h5.create_group("structures")
        g.create_dataset("split", data=np.array(["test" if i % 7 == 0 else "train" for i in range(n)],
                                                dtype=object), dtype=STR)
        g["centric_origin"] = np.ones(n, bool)
        g["cell"] = np.tile([10.0, 11.0, 12.0, 90.0, 100.0, 90.0], (n, 1))
        h5.attrs.update(schema_version=SCHEMA_VERSION, complete=True, phasenet_version="bench",
                        build_options=json.dumps({"normalisation": "max", "max_index": 10,
                                                  "r2_max": r2_max or None}), failures="[]")
    os.replace(tmp, path)
    return path


def measure(model_name: str, data: Path, batch: int, epochs: int, in_memory: bool, seed: int) -> dict:
    """Train one model in this process; samples/s over epochs 2..N."""
    import keras

    from phasenet.training import losses  # noqa: F401
    from phasenet.training.config import TrainConfig, apply_overrides
    from phasenet.training.data import BatchSource, keras_dataset
    from phasenet.training.models import build_model
    from phasenet.training.run import compile_model

    r2, task, over = MODELS[model_name]
    cfg = apply_overrides(TrainConfig(), [("data.r2_max", r2), ("data.task", task),
                                          ("run.batch_size", batch), ("run.seed", seed),
                                          ("data.in_memory", in_memory), *over.items()])
    src = BatchSource(data, cfg, "train", shuffle=True)
    model = compile_model(build_model(cfg, src.n_reflections), cfg)
    times = timed_fit(model, keras_dataset(src), epochs, src.steps_per_epoch)
    src.close()
    samples = src.steps_per_epoch * batch
    timed = times[1:] or times
    return {"model": model_name, "backend": keras.backend.backend(), "in_memory": in_memory,
            "params": model.count_params(), "batch_size": batch, "samples_per_epoch": samples,
            "samples_per_s": samples * len(timed) / sum(timed), "epoch_seconds": times}


def _child(args) -> list[dict]:
    out = []
    for name in args.models:
        comp = None if args.compression == "none" else args.compression
        data = write_dataset(Path(args.workdir) / f"bench_{args.n}_{MODELS[name][0]}_{args.compression}.h5",
                             args.n, MODELS[name][0], args.seed, comp)
        modes = (False, True) if args.stream_vs_memory else (False,)
        for repeat in range(args.repeats):
            for in_memory in modes:
                r = measure(name, data, args.batch_size, args.epochs, in_memory, args.seed)
                r["repeat"] = repeat
                print(f"  {r['backend']:10s} {name:11s} {'memory' if in_memory else 'stream':6s} "
                      f"{r['samples_per_s']:9.0f} samples/s  (load {os.getloadavg()[0]:.2f})",
                      file=sys.stderr, flush=True)
                out.append(r)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["tensorflow", "jax", "both"], default="both")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("-n", type=int, default=3500, help="structures in the benchmark file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement (first not timed)")
    p.add_argument("--repeats", type=int, default=2,
                   help="stream / memory measurements per model, alternated; the best is kept")
    p.add_argument("--no-stream-vs-memory", dest="stream_vs_memory", action="store_false",
                   help="only the streaming measurement")
    p.add_argument("--workdir", default="/tmp/phasenet-bench-train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", choices=["lzf", "gzip", "none"], default="lzf",
                   help="compression of the benchmark file (default %(default)s, as phasenet build)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    results = []
    backends = ["tensorflow", "jax"] if args.backend == "both" else [args.backend]
    for b in backends:  # one process per backend: Keras fixes it at import
        cmd = [sys.executable, __file__, "--child", "--models", *args.models, "-n", str(args.n),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--workdir", args.workdir, "--seed", str(args.seed), "--repeats", str(args.repeats),
               "--compression", args.compression]
        if not args.stream_vs_memory:
            cmd.append("--no-stream-vs-memory")
        env = dict(os.environ, KERAS_BACKEND=b, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            print(f"{b}: benchmark failed", file=sys.stderr)
            return 1
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"load_average": load, "cpus": os.cpu_count(), "results": results}, indent=1))
        return 0
    import numpy as np

    print(f"{'backend':10s} {'model':11s} {'params':>11s} {'stream':>10s} {'memory':>10s} {'ratio':>6s} "
          f"{'median ratio':>12s}")
    keyed, runs = {}, {}  # the best of the repeats; all of them
    for r in results:
        k = (r["backend"], r["model"], r["in_memory"])
        runs.setdefault(k, []).append(r["samples_per_s"])
        if k not in keyed or r["samples_per_s"] > keyed[k]["samples_per_s"]:
            keyed[k] = r
    for b in backends:
        for m in args.models:
            s, mem = keyed.get((b, m, False)), keyed.get((b, m, True))
            ratio = f"{s['samples_per_s'] / mem['samples_per_s']:.2f}" if s and mem else ""
            med = ""
            if s and mem:  # ratio of the medians: less sensitive to one lucky run
                med = f"{np.median(runs[(b, m, False)]) / np.median(runs[(b, m, True)]):.2f}"
            print(f"{b:10s} {m:11s} {s['params']:11,d} {s['samples_per_s']:10.0f} "
                  f"{mem['samples_per_s'] if mem else float('nan'):10.0f} {ratio:>6s} {med:>12s}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
