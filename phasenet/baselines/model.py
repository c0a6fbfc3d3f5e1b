"""``model:RUN_DIR``: a trained sign network as a phasing method.

The network itself, and how a run folder is loaded, live in :mod:`phasenet.training.predict`
(``load_predictor(RUN_DIR).predict_sign_probability(intensity, cell)``), imported only
when the evaluation prepares the method, so that naming a model method imports no Keras.
The method is batched: it runs in the main process, on all structures at once, after the
forked methods (TensorFlow/JAX and fork do not mix). It predicts the signs of the
reflections the model was trained on (those of the dataset it needs), so it applies only
to structures with an inversion centre at the origin, on the dataset's own reflections.
"""

from __future__ import annotations

import numpy as np

from phasenet.baselines.registry import BATCHED, NotApplicable, PhasingFailed, PhasingMethod


def load_model(run_dir: str):
    """``phasenet.training.predict.load_predictor(run_dir)``, imported only now."""
    import importlib

    try:
        predict = importlib.import_module("phasenet.training.predict")
    except ImportError as exc:
        raise RuntimeError(f"model methods need phasenet.training.predict (from the training work), "
                           f"which is not available: {exc}") from None
    return predict.load_predictor(run_dir)


class ModelMethod(PhasingMethod):
    """The family ``model:RUN_DIR``; ``ModelMethod(run_dir)`` is the method ``model:run_dir``."""

    needs = frozenset({"intensity"})  # the dataset's normalised intensities, the network's input
    execution = BATCHED

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.name = f"model:{run_dir}"
        self.predictor = None
        self.positions = None  # where the model's reflections sit in the dataset's
        self.n_reflections = 0  # of the dataset

    def prepare(self, hkl, options):
        if options.reflections != "dataset":
            raise NotApplicable("model methods need the dataset's reflections (reflections='dataset')")
        self.predictor = load_model(self.run_dir)
        want = np.asarray(self.predictor.hkl, dtype=np.int64)
        from phasenet.reflections import lookup

        pos = lookup(np.asarray(hkl, dtype=np.int64), want)
        if (pos < 0).any():
            raise PhasingFailed(f"the model expects {int((pos < 0).sum())} reflections that the dataset lacks "
                                f"(e.g. {want[pos < 0][0].tolist()})")
        self.positions = pos
        self.n_reflections = len(hkl)

    def check(self, problem, options):
        if not problem.centric_origin:
            raise NotApplicable("no inversion centre at the origin: the model predicts signs")

    def phases_batch(self, problems, options):
        pos = self.positions
        x = np.stack([p.intensity[pos] for p in problems]).astype(np.float32)
        cells = np.stack([np.asarray(p.cell, dtype=np.float32) for p in problems])
        prob = np.asarray(self.predictor.predict_sign_probability(x, cells))
        if prob.shape != x.shape:
            raise ValueError(f"predict_sign_probability returned shape {prob.shape}, expected {x.shape}")
        prob = prob.astype(np.float64)
        out = np.full((len(problems), self.n_reflections), np.nan)
        out[:, pos] = np.where(np.isnan(prob), np.nan, np.where(prob > 0.5, 0.0, np.pi))
        return out
