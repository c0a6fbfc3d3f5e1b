"""A deliberately leaking probe model for the leak tests (tests/evaluation/test_honest.py).

A real Keras model, saved as a run folder that ``phasenet.training.predict.load_predictor``
loads like any trained run. It has memorised the true signs s_j of one structure on its
reflection grid (the study's 709: h² + k² + l² < 50) and is wired to *leak*: its sign
logit for grid reflection j is

    c · s_j · Σ_{k ∈ H} (x_k + m_k) + b_j

where H are the grid reflections with d < ``d_leak`` in that structure's cell, x the
intensity input, m the mask input (network-input models only) and b_j small random
biases. Given anything at all beyond d_leak it answers the true signs (a perfect score);
given nothing there (the honest protocol at d_min = d_leak) it answers the random signs
of its biases (chance).

Run as a script (``python -m tests.evaluation.probe_model SPEC.json``) in a fresh
process, since Keras must not be imported in a process that later forks workers: it
writes the run folders and the probe's answers on the *old* code path (the dataset's
stored ``intensity`` column on every grid reflection, mask 1), to be scored by the test.
"""

from __future__ import annotations

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import sys
from pathlib import Path

import numpy as np

from phasenet.reflections import canonical_hkl, d_spacings, lookup

MAX_INDEX, R2_MAX = 10, 50
GAIN = 10.0


def probe_weights(grid_hkl, cell, signs, d_leak: float, kind: str, seed: int = 0):
    """(kernel, bias) of the probe's one Dense layer; inputs [intensity, mask] or [intensity]."""
    g = len(grid_hkl)
    leak = d_spacings(np.asarray(grid_hkl), cell) < d_leak
    s = np.where(signs, 1.0, -1.0)
    n_in = 2 * g if kind == "network" else g
    kernel = np.zeros((n_in, g), dtype=np.float32)
    kernel[np.flatnonzero(leak)] = GAIN * s
    if kind == "network":
        kernel[g + np.flatnonzero(leak)] = GAIN * s
    bias = (0.5 * np.random.default_rng(seed).choice([-1.0, 1.0], g)).astype(np.float32)
    return kernel, bias, int(leak.sum())


def write_probe_run(run_dir, kind: str, cell, signs, d_leak: float, seed: int = 0) -> int:
    """A finished run folder holding the probe (kind "network" or "stored"); returns |H|."""
    import keras
    from keras import layers

    from phasenet.training.config import TrainConfig

    grid = canonical_hkl(MAX_INDEX, R2_MAX)
    g = len(grid)
    kernel, bias, n_leak = probe_weights(grid, cell, signs, d_leak, kind, seed)
    intensity = keras.Input((g,), name="intensity")
    if kind == "network":
        mask = keras.Input((g,), name="mask")
        inputs = {"intensity": intensity, "mask": mask}
        x = layers.Concatenate(name="intensity_and_mask")([intensity, mask])
    else:
        inputs, x = intensity, intensity
    dense = layers.Dense(g, name="sign_logits")
    out = layers.Activation("sigmoid", name="sign_probability")(dense(x))
    model = keras.Model(inputs, out, name=f"leak_probe_{kind}")
    dense.set_weights([kernel, bias])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    cfg = TrainConfig()
    cfg.data.max_index, cfg.data.r2_max = MAX_INDEX, R2_MAX
    if hasattr(cfg.data, "input"):
        cfg.data.input = kind
    (run_dir / "config.toml").write_text(cfg.to_toml())
    info = {"task": "sign", "max_index": MAX_INDEX, "r2_max": R2_MAX, "n_reflections": g,
            "input_transform": "none", "input": kind, "cell_input": False, "output": "sign_probability"}
    (run_dir / "phasenet_model.json").write_text(json.dumps(info, indent=1))
    return n_leak


def main(spec_path) -> None:
    from phasenet.evaluation.problem import DatasetRows
    from phasenet.training.predict import load_predictor

    spec = json.loads(Path(spec_path).read_text())
    grid = canonical_hkl(MAX_INDEX, R2_MAX)
    with DatasetRows(spec["dataset"]) as rows:
        p = rows.problem(int(spec["index"]))
        pos = lookup(rows.hkl, grid)
        assert (pos >= 0).all(), "the dataset must hold the probe's grid"
        signs = np.cos(p.phase_true[pos]) > 0
        stored = np.asarray(p.intensity, dtype=np.float32)[pos][None]  # the old path's input
    result = {"n_leak": {}, "old_path_probability": {}}
    for kind, run_dir in spec["runs"].items():
        result["n_leak"][kind] = write_probe_run(run_dir, kind, p.cell, signs, spec["d_leak"])
        pred = load_predictor(run_dir)
        assert pred.input == kind
        mask = np.ones_like(stored) if kind == "network" else None
        prob = pred.predict_sign_probability(stored, np.asarray([p.cell], np.float32), mask=mask)
        result["old_path_probability"][kind] = np.asarray(prob)[0].tolist()
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
