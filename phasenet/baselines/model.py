"""``model:RUN_DIR``: a trained sign network as a phasing method, on the honest protocol.

The network itself, and how a run folder is loaded, live in :mod:`phasenet.training.predict`
(``load_predictor(RUN_DIR).predict_sign_probability(e2, cell, mask=mask)``), imported only
when the evaluation prepares the method, so that naming a model method imports no Keras.
The method is batched: it runs in the main process, on all structures of one d_min at
once, after the forked methods (TensorFlow/JAX and fork do not mix).

**What the network is given** (``docs/evaluation.md``): exactly what every other method
gets at that d_min — the problem truncated to d ≥ d_min, with the amplitudes of the
evaluation's source (exact, or measured with ``--amplitudes obs``) — turned into the one
network input, :func:`phasenet.training.inputs.network_input` on the model's reflection
grid: |E|² normalised without the answer over all the reflections given, 0 and mask 0
where a grid reflection was not given (beyond d_min, absent, unmeasured, or off the
sphere). Never the dataset's stored ``intensity`` column (fitted to the calculated
intensities by default) nor any reflection beyond d_min.

- a model trained on ``network_input`` features (``"input": "network"`` in its
  ``phasenet_model.json``) receives ``{"intensity": e2, "mask": mask}``;
- a model trained on the stored ``intensity`` column (the study's setting, ``"input":
  "stored"``, the default of older runs) is evaluated through ``network_input`` too: it
  receives e2 in place of its training input, without the mask, and every row says so
  (its numbers measure that model on an answer-free input it was not trained on).

Reflections given but off the model's grid are left unphased and count against it; the
row's ``completeness`` says how much of the sphere it phased. It applies to structures with
an inversion centre at the origin only (it predicts signs).
"""

from __future__ import annotations

import numpy as np

from phasenet.baselines.registry import BATCHED, NotApplicable, PhasingMethod

#: The row note of a model trained on the stored ``intensity`` column.
STORED_INPUT_NOTE = ("trained on the stored 'intensity' column; given network_input |E|² "
                     "(answer-free, 0 beyond d_min) in its place, without a mask")


def load_model(run_dir: str):
    """``phasenet.training.predict.load_predictor(run_dir)``, imported only now."""
    import importlib

    try:
        predict = importlib.import_module("phasenet.training.predict")
    except ImportError as exc:
        raise RuntimeError(f"model methods need phasenet.training.predict (from the training work), "
                           f"which is not available: {exc}") from None
    return predict.load_predictor(run_dir)


def model_inputs(grid_hkl, problems) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(e2 (N, G), mask (N, G), cells (N, 6), positions): the network's view of ``problems``
    (each already truncated to its d_min) on the grid ``grid_hkl``; ``positions[n]`` (len(problem))
    is where each reflection of problem n sits on the grid (-1: off the grid)."""
    from phasenet.reflections import friedel_representative, lookup
    from phasenet.symmetry import symmetry
    from phasenet.training.inputs import network_input

    grid = np.asarray(grid_hkl, dtype=np.int64)
    e2 = np.zeros((len(problems), len(grid)), dtype=np.float32)
    mask = np.zeros_like(e2)
    positions = []
    for n, p in enumerate(problems):
        amplitude = np.where(p.given, p.amplitude, np.nan)
        x = network_input(grid, p.hkl, amplitude, p.cell, symmetry(p.symops))
        e2[n], mask[n] = x.e2, x.mask
        rep, _ = friedel_representative(np.asarray(p.hkl, dtype=np.int64))
        positions.append(lookup(grid, rep))
    cells = np.array([np.asarray(p.cell, dtype=np.float32) for p in problems]).reshape(-1, 6)
    return e2, mask, cells, positions


class ModelMethod(PhasingMethod):
    """The family ``model:RUN_DIR``; ``ModelMethod(run_dir)`` is the method ``model:run_dir``."""

    needs = frozenset()  # amplitudes, cell and symmetry only: no stored model input
    execution = BATCHED

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.name = f"model:{run_dir}"
        self.predictor = None

    @property
    def input_kind(self) -> str:
        """``"network"`` or ``"stored"``: what the model was trained on."""
        return getattr(self.predictor, "input", "stored")

    def prepare(self, options):
        self.predictor = load_model(self.run_dir)

    def check(self, problem, options):
        if not problem.centric_origin:
            raise NotApplicable("no inversion centre at the origin: the model predicts signs")

    def phases_batch(self, problems, options):
        e2, mask, cells, positions = model_inputs(self.predictor.hkl, problems)
        if self.input_kind == "network":
            prob, note = self.predictor.predict_sign_probability(e2, cells, mask=mask), ""
        else:
            prob, note = self.predictor.predict_sign_probability(e2, cells), STORED_INPUT_NOTE
        prob = np.asarray(prob, dtype=np.float64)
        if prob.shape != e2.shape:
            raise ValueError(f"predict_sign_probability returned shape {prob.shape}, expected {e2.shape}")
        out = []
        for n, (p, pos) in enumerate(zip(problems, positions)):
            on = pos >= 0
            phases = np.full(len(p), np.nan)
            q = prob[n, pos[on]]
            phases[on] = np.where(np.isnan(q), np.nan, np.where(q > 0.5, 0.0, np.pi))
            out.append((phases, note))
        return out
