"""Small real-schema datasets for the training tests (random P-1 / P2₁/c structures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, n: int = 60, seed: int = 1, r2_max: int | None = 50) -> Path:
    """Build (once) a dataset of ``n`` random structures, max-normalised, 1/4 test."""
    from phasenet.pipeline.build import BuildOptions, build_dataset
    from phasenet.pipeline.demo import write_random_cifs

    out = folder / f"random_{n}_{seed}_{r2_max}.h5"
    if not out.exists():
        write_random_cifs(folder / f"cif_{n}_{seed}", n, seed=seed)
        build_dataset([folder / f"cif_{n}_{seed}"], out,
                      BuildOptions(normalisation="max", r2_max=r2_max, test_fraction=0.25, workers=1),
                      overwrite=True, progress=False)
    return out


def stream_config(**keys):
    """A small-batch config for the batch-stream tests (709 reflections, batch 8, blocks
    of 4, windows of 12). ``seed``/``batch_size`` go to ``run``, ``cell_input`` to
    ``model``, every other key to ``data``."""
    from phasenet.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.data.r2_max = 50
    cfg.run.batch_size = 8
    cfg.data.block_rows = 4
    cfg.data.shuffle_buffer = 12
    for k, v in keys.items():
        if k in ("seed", "batch_size"):
            setattr(cfg.run, k, v)
        elif k == "cell_input":
            cfg.model.cell_input = v
        else:
            setattr(cfg.data, k, v)
    return cfg


def run_phasenet(args, backend: str, cwd=None, timeout=240, **popen):
    """``python -m phasenet.cli ARGS`` in a fresh process with KERAS_BACKEND=backend."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "phasenet.cli", *map(str, args)]
    if popen.pop("background", False):
        return subprocess.Popen(cmd, env=env, cwd=cwd or REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **popen)
    return subprocess.run(cmd, env=env, cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, **popen)
