"""Load a trained run for inference: ``load_predictor(run_dir).predict_sign_probability(...)``.

The run folder's ``model.keras`` is a plain Keras model (sign models end in a sigmoid:
they output P(sign label = 1), i.e. P(phase 0)); ``phasenet_model.json`` says which
reflections it expects and how its input was prepared. Keras is imported when a
predictor is loaded, with whatever backend ``KERAS_BACKEND`` names.

**Which input** (``"input"`` in ``phasenet_model.json``, from the config's ``data.source``: ``stored`` gives
``"stored"``, the on-the-fly sources ``"network"``;
absent in older runs, which means ``"stored"``):

- ``"stored"``: the model was trained on the dataset's stored ``intensity`` column; its
  Keras input is ``intensity`` (N, G) (plus ``cell`` (N, 6) with ``model.cell_input``);
- ``"network"``: trained on :func:`phasenet.training.inputs.network_input` features; its
  Keras inputs are the dict ``{"intensity": e2 (N, G), "mask": mask (N, G)}`` (plus
  ``"cell"``), where e2 is |E|² (0 where not given) and mask is 1 where a reflection was
  given. :meth:`Predictor.predict_sign_probability` then needs ``mask``.

``input_transform`` (none / max / log1p) is applied to the ``intensity`` input in both
cases, as in training. The contract is written down in ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phasenet.reflections import canonical_hkl


class PredictorError(ValueError):
    pass


@dataclass
class Predictor:
    run_dir: Path
    model: object  # keras.Model
    hkl: np.ndarray  # (R, 3) the reflection set, in the order the model expects
    config: object  # phasenet.training.config.TrainConfig
    info: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def input(self) -> str:
        """What the model was trained on: ``"stored"`` (the dataset's ``intensity`` column) or
        ``"network"`` (``network_input`` features: e2 and mask)."""
        return self.info.get("input", "stored")

    def _inputs(self, intensity, cell, mask=None):
        from phasenet.training.data import cell_features, prepare_input

        x = np.asarray(intensity, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.hkl):
            raise PredictorError(f"intensity must be (N, {len(self.hkl)}) for this model "
                                 f"({self.run_dir}), got shape {x.shape}")
        x = prepare_input(x, self.info.get("input_transform", "none"))
        inputs = {"intensity": x}
        if self.input == "network":
            if mask is None:
                raise PredictorError(f"{self.run_dir}: this model was trained on network_input features; "
                                     "pass mask (N, R) with the e2 intensities")
            mask = np.asarray(mask, dtype=np.float32)
            if mask.shape != x.shape:
                raise PredictorError(f"mask must be {x.shape} like the intensities, got {mask.shape}")
            inputs["mask"] = mask
        elif self.input != "stored":
            raise PredictorError(f"{self.run_dir}: unknown input {self.input!r} in phasenet_model.json "
                                 "(known: stored, network)")
        if self.info.get("cell_input"):
            if cell is None:
                raise PredictorError(f"{self.run_dir}: this model takes the cell as input; pass cell (N, 6)")
            cell = np.asarray(cell, dtype=np.float64)
            if cell.shape != (len(x), 6):
                raise PredictorError(f"cell must be ({len(x)}, 6), got {cell.shape}")
            inputs["cell"] = cell_features(cell)
        return inputs if len(inputs) > 1 else x

    @property
    def takes_phase(self) -> bool:
        """True for a recycling model (:mod:`phasenet.training.phasing_net`): its inputs include
        ``"phase"``, the current estimate of the signs (expected sign in [-1, 1], 0 = none)."""
        names = self.model.input_names if hasattr(self.model, "input_names") else []
        inputs = self.model.input if isinstance(self.model.input, dict) else {}
        return "phase" in inputs or "phase" in names

    def predict(self, intensity, cell=None, batch_size: int = 256, mask=None, phase=None) -> np.ndarray:
        """The model output (N, R): sign probabilities, or the reconstruction."""
        x = self._inputs(intensity, cell, mask)
        if self.takes_phase:
            phase = np.zeros_like(x["intensity"]) if phase is None else np.asarray(phase, dtype=np.float32)
            if phase.shape != x["intensity"].shape:
                raise PredictorError(f"phase must be {x['intensity'].shape} like the intensities, got {phase.shape}")
            x["phase"] = phase
        elif phase is not None:
            raise PredictorError(f"{self.run_dir}: this model takes no phase estimate (no recycling)")
        return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)

    def predict_sign_probability(self, intensity: np.ndarray, cell: np.ndarray | None = None,
                                 batch_size: int = 256, mask: np.ndarray | None = None,
                                 phase: np.ndarray | None = None) -> np.ndarray:
        """(N, R) probability that the sign label is 1 (phase 0), at the stored origin.

        ``intensity``: the stored intensities (``input`` "stored") or network_input's e2
        (``input`` "network", with ``mask``); ``phase``: a recycling model's current
        estimate (default: none, zeros)."""
        if self.task != "sign":
            raise PredictorError(f"{self.run_dir}: a {self.task} model predicts no signs")
        return self.predict(intensity, cell, batch_size, mask=mask, phase=phase)


def load_predictor(run_dir: str | Path) -> Predictor:
    """The model of a finished run folder (``phasenet train --out RUN_DIR``)."""
    run_dir = Path(run_dir)
    info_path, model_path = run_dir / "phasenet_model.json", run_dir / "model.keras"
    if not info_path.is_file() or not model_path.is_file():
        raise PredictorError(f"{run_dir}: not a finished training run (needs model.keras and "
                             "phasenet_model.json)")
    info = json.loads(info_path.read_text())
    from phasenet.training.config import load_config

    config = load_config(run_dir / "config.toml")
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from phasenet.training.registry import load_custom_objects

    load_custom_objects(config)
    model = keras.saving.load_model(model_path)
    hkl = canonical_hkl(info["max_index"], info["r2_max"] or None)
    if len(hkl) != info["n_reflections"]:
        raise PredictorError(f"{run_dir}: {info['n_reflections']} reflections recorded, "
                             f"but max_index/r2_max give {len(hkl)}")
    return Predictor(run_dir=run_dir, model=model, hkl=hkl, config=config, info=info)
