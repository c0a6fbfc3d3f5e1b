"""Throughput of on-the-fly training data against training the study's MLP, and memory
over a long stream (docs/training-on-the-fly.md).

In one run, on the same machine:

1. **train**: samples/s of training the study's origin-invariant MLP (709 -> 1024 -> 1024
   -> 709, batch 64, JAX unless --backend) on *stored* data held in memory (phasenet's
   own batch stream, ``data.in_memory``): what a data source has to keep up with;
2. **source**: samples/s that an on-the-fly source delivers (``OnTheFlySource.batch`` in a
   loop, nothing trained) with 1 and 2 worker processes, for ``atoms`` (the atomic models of
   a ``phasenet synth`` dataset, --data or made here) and ``synth`` (dense packing,
   ``data.repeats`` 8 and 16; fast packing, 8);
3. **end to end**: samples/s of training the same MLP (network input: |E|² + mask) fed by
   the on-the-fly source (training and workers share the CPUs);
4. **memory** (--memory-structures N): RSS of the training process and the workers while a
   ``synth`` source streams N distinct structures.

The first batches (worker start, imports, numba compilation) are not timed. The machine
may be shared: the load average is printed with every number.

    python benchmarks/bench_onthefly.py                        # everything, ~5 min on 2 cores
    python benchmarks/bench_onthefly.py --skip memory --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STUDY = {"model.widths": [1024, 1024], "loss.origin": "invariant", "data.r2_max": 50,
         "run.batch_size": 64, "optimizer.learning_rate": 1e-3}


def _load() -> str:
    return "%.2f" % os.getloadavg()[0]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_stored(path: Path, n: int, seed: int = 0) -> Path:
    """A schema-v1 file of random rows (709 reflections; what stored training reads)."""
    import h5py
    import numpy as np

    from phasenet.io.hdf5 import SCHEMA_VERSION, STR
    from phasenet.reflections import canonical_hkl

    if path.exists():
        return path
    hkl = canonical_hkl(10, 50)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as h5:
        h5["hkl"] = hkl
        x = rng.exponential(1.0, (n, len(hkl))).astype(np.float32)
        h5.create_dataset("intensity", data=x, chunks=(1, len(hkl)))
        h5.create_dataset("intensity_calc", data=x, chunks=(1, len(hkl)))
        h5.create_dataset("sign", data=rng.integers(0, 2, x.shape).astype(np.int8), chunks=(1, len(hkl)))
        g = h5.create_group("structures")
        g.create_dataset("split", data=np.array(["test" if i % 7 == 0 else "train" for i in range(n)],
                                                dtype=object), dtype=STR)
        g["centric_origin"] = np.ones(n, bool)
        g["cell"] = np.tile([10.0, 11.0, 12.0, 90.0, 100.0, 90.0], (n, 1))
        h5.attrs.update(schema_version=SCHEMA_VERSION, complete=True, phasenet_version="bench",
                        build_options=json.dumps({"normalisation": "wilson", "max_index": 10,
                                                  "r2_max": 50}), failures="[]")
    os.replace(tmp, path)
    return path


def atoms_dataset(path: Path, n: int, seed: int = 1) -> Path:
    """A ``phasenet synth`` dataset of ``n`` structures (709 reflections) for the atoms source."""
    from phasenet.synth.generate import SynthOptions, synth_dataset

    if not path.exists():
        synth_dataset(n, path, SynthOptions(seed=seed, r2_max=50, workers=2), progress=False)
    return path


def _config(overrides: dict):
    from phasenet.training.config import TrainConfig, apply_overrides

    return apply_overrides(TrainConfig(), list({**STUDY, **overrides}.items()))


def measure_training(cfg, src, epochs: int, start_batch: int = 0) -> float:
    """samples/s of model.fit over epochs 2..N (the first compiles), from batch ``start_batch``."""
    from phasenet.training import losses  # noqa: F401
    from phasenet.training.data import keras_dataset
    from phasenet.training.models import build_model
    from phasenet.training.run import compile_model

    from bench_train import timed_fit  # the same timing loop (benchmarks/ is on sys.path)

    model = compile_model(build_model(cfg, src.n_reflections), cfg)
    times = timed_fit(model, keras_dataset(src, start_batch=start_batch), epochs, src.steps_per_epoch)
    return src.steps_per_epoch * cfg.run.batch_size * (len(times) - 1) / sum(times[1:])


def warm_up_batches(src) -> int:
    """Batches before a stream's cost per batch is steady: (R - 1)·D·LANES."""
    from phasenet.training.onthefly import LANES

    return (src.repeats - 1) * src.spacing * LANES


def measure_source(src, seconds: float, warm: int = 4) -> dict:
    """samples/s of ``src.batch(i)`` in a loop after ``warm`` batches."""
    for i in range(warm):
        src.batch(i)
    t0, i, n = time.perf_counter(), warm, 0
    while time.perf_counter() - t0 < seconds:
        x, y = src.batch(i)
        n += len(y)
        i += 1
    dt = time.perf_counter() - t0
    return {"samples_per_s": n / dt, "batches": i - warm, "seconds": dt}


#: Source cases: name -> (data.source, data.repeats, data.synth_packing).
CASES = {"atoms:1": ("atoms", 1, "dense"), "atoms:4": ("atoms", 4, "dense"),
         "synth-dense:1": ("synth", 1, "dense"), "synth-dense:8": ("synth", 8, "dense"),
         "synth-dense:16": ("synth", 16, "dense"), "synth-fast:8": ("synth", 8, "fast")}


def run(args) -> dict:
    import phasenet  # noqa: F401  (first: cctbx import order)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = None
    if "source" not in args.skip and any(c.startswith("atoms") for c in args.cases):
        # made before Keras (and JAX's threads) are imported: synth forks its workers
        data = Path(args.data) if args.data else atoms_dataset(work / f"atoms_{args.atoms_n}.h5", args.atoms_n)
    import keras
    import numpy as np

    from phasenet.training.data import BatchSource
    from phasenet.training.onthefly import OnTheFlySource, prepare_sources

    out = {"backend": keras.backend.backend(), "cpus": os.cpu_count(), "results": []}

    def note(kind, **r):
        r = {"kind": kind, "load": float(_load()), **r}
        out["results"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)

    def case_config(case, workers, **extra):
        source, repeats, packing = CASES[case]
        over = {"data.source": source, "data.workers": workers, "data.repeats": repeats, **extra}
        if source == "synth":
            over["data.synth_packing"] = packing
        return _config(over)

    if "train" not in args.skip:
        stored = write_stored(work / "stored_709.h5", args.stored_n)
        for batch in args.batch_sizes:
            cfg = _config({"data.in_memory": True, "data.path": str(stored), "run.batch_size": batch})
            with BatchSource(stored, cfg, "train", shuffle=True) as src:
                note("train_stored", model="709-1024-1024-709", batch_size=batch,
                     samples_per_s=measure_training(cfg, src, args.epochs))

    if "source" not in args.skip:
        for case in args.cases:
            for workers in args.workers:
                cfg = case_config(case, workers)
                tr, _ = prepare_sources(cfg, data if cfg.data.source == "atoms" else None)
                if tr is not None:  # as many structures as a large dataset: every F₀ new (the
                    # source keeps F₀ for a pool of 16 x 512 structures; a small dataset's rows
                    # would come back within one pool and be computed once)
                    tr = np.tile(tr, -(-args.atoms_positions // len(tr)))
                with OnTheFlySource(cfg, "train", shuffle=True, path=data, rows=tr) as src:
                    # past the warm-up: from then on B/R new structures per batch
                    r = measure_source(src, args.seconds, warm=warm_up_batches(src) + 8)
                note("source", case=case, workers=workers, **r)

    if "end_to_end" not in args.skip:
        for workers in args.workers:
            cfg = case_config(args.e2e_case, workers, **{"data.epoch_size": args.e2e_samples})
            with OnTheFlySource(cfg, "train", shuffle=True) as src:
                for i in range(warm_up_batches(src)):  # the stream's warm-up, not timed
                    src.batch(i)
                note("train_onthefly", case=args.e2e_case, workers=workers,
                     samples_per_s=measure_training(cfg, src, args.epochs, warm_up_batches(src)))

    if "memory" not in args.skip and args.memory_structures:
        cfg = case_config(args.memory_case, 2)
        with OnTheFlySource(cfg, "train", shuffle=True) as src:
            per_batch = cfg.run.batch_size / cfg.data.repeats  # new structures per batch
            n_batches = int(-(-args.memory_structures // per_batch))
            marks = sorted({max(1, int(n_batches * f)) for f in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)})
            t0 = time.perf_counter()
            for i in range(n_batches):
                src.batch(i)
                if i + 1 in marks:
                    pids = [os.getpid()] + [p.pid for p in src._reader.procs]
                    rss = [round(_rss_mb(p), 1) for p in pids]
                    note("memory", case=args.memory_case, structures=int((i + 1) * per_batch),
                         samples=(i + 1) * cfg.run.batch_size, rss_mb_main=rss[0], rss_mb_workers=rss[1:],
                         seconds=round(time.perf_counter() - t0, 1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["jax", "tensorflow"], default="jax")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "source", "end_to_end", "memory"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--cases", nargs="+", choices=list(CASES),
                   default=["atoms:1", "atoms:4", "synth-dense:8", "synth-dense:16", "synth-fast:8"],
                   help="source cases: SOURCE:REPEATS")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64], help="stored training batch sizes")
    p.add_argument("--e2e-case", choices=list(CASES), default="synth-dense:16")
    p.add_argument("--memory-case", choices=list(CASES), default="synth-fast:8")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per source measurement")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per measurement (first not timed)")
    p.add_argument("--stored-n", type=int, default=7000, help="rows of the stored benchmark file")
    p.add_argument("--e2e-samples", type=int, default=6400, help="samples per end-to-end epoch")
    p.add_argument("--atoms-n", type=int, default=300, help="structures of the atoms dataset made here")
    p.add_argument("--data", help="a phasenet synth/build dataset (709 reflections) for the atoms source")
    p.add_argument("--atoms-positions", type=int, default=20000,
                   help="atoms source: the split's rows repeated to this many structures")
    p.add_argument("--memory-structures", type=int, default=20000)
    p.add_argument("--workdir", default="/tmp/phasenet-bench-onthefly")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    t0 = time.perf_counter()
    out = run(args)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in out["results"]:
        what = {k: v for k, v in r.items() if k not in ("kind", "load")}
        print(f"{r['kind']:15s} load {r['load']:5.2f}  " + "  ".join(
            f"{k} {v:.0f}" if isinstance(v, float) and k != "seconds" else f"{k} {v}" for k, v in what.items()))
    print(f"{out['seconds']} s; load average {out['load_average'][0]:.2f} on {out['cpus']} CPUs")
    return 0


if __name__ == "__main__":  # the workers are spawned: they re-import this file
    sys.exit(main())
