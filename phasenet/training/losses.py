"""Sign loss and metrics, written with ``keras.ops`` (TensorFlow and JAX alike).

Targets ``y_true`` are (B, R, 3): sign label s (1: phase 0, 0: phase π, -1: no
label), the intensity the weights are made from, and I_calc = |F|². Predictions
``y_pred`` are logits (B, R): P(s = 1) = sigmoid(logit).

Per structure b, with weights w_r (0 where s_r = -1):

    loss_b = Σ_r w_r · BCE(s_r, logit_r) / Σ_r w_r

Weights: ``intensity`` w = max(I, 0); ``exp_intensity`` w = exp(min(I, 50));
``uniform`` w = 1. The batch loss is the mean over structures.

Origins. Moving the origin of a centrosymmetric cell by t ∈ {0,½}³ multiplies F(h)
by f_t(h) = (-1)^(2h·t): the label becomes s where f = +1 and 1 - s where f = -1
(:func:`phasenet.reflections.origin_sign_flips`). ``origin = "invariant"`` takes, per
structure, the minimum of the loss over the 8 origins (as PhAI does); ``fixed``
uses the labels as stored (the study's setting). A 4th target channel (on-the-fly data
with ``data.hint``) marks samples whose origin the network was given (a phase hint:
partly right signs at the stored origin); they are scored at the stored origin.

Metrics (per structure, then averaged over structures):

- ``weighted_accuracy``: Σ w·[pred = s] / Σ w (weights as the loss);
- ``accuracy``: the fraction of labelled reflections with the right sign;
- ``map_corr``: R = Σ|F|² cos Δφ / Σ|F|² over labelled reflections, which for signs
  is 2·(|F|²-weighted accuracy) − 1;
- ``*_best``: the same at the best of the 8 origins (maximum per structure).

With the weights made from |F|² (``weight="intensity"``, ``weight_source="calc"``, or a
dataset whose input is proportional to I_calc), map_corr = 2·weighted_accuracy − 1.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from phasenet.reflections import canonical_hkl, origin_sign_flips

WEIGHTS = ("intensity", "exp_intensity", "uniform")
ORIGINS = ("fixed", "invariant")
_EPS = 1e-12


def flip_masks(max_index: int, r2_max: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(R, 8) float32 masks of the reflections whose sign stays (f=+1) / flips (f=-1) per origin."""
    f = origin_sign_flips(canonical_hkl(max_index, r2_max or None)).T  # (R, 8)
    return (f > 0).astype(np.float32), (f < 0).astype(np.float32)


def reflection_weights(intensity, weight: str):
    if weight == "intensity":
        return ops.maximum(intensity, 0.0)
    if weight == "exp_intensity":
        return ops.exp(ops.minimum(intensity, 50.0))
    if weight == "uniform":
        return ops.ones_like(intensity)
    raise ValueError(f"loss weight {weight!r}: allowed values: {', '.join(WEIGHTS)}")


def _unpack(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    logits = ops.cast(y_pred, "float32")
    sign = y_true[..., 0]
    labelled = ops.cast(sign >= 0, "float32")
    label = ops.where(sign > 0, 1.0, 0.0)
    return label, labelled, y_true[..., 1], y_true[..., 2], logits


def _per_origin_sum(values_kept, values_flipped, keep, flip):
    """Σ_r over each origin: (B,R)@(R,8) of the values for kept and flipped reflections."""
    return ops.matmul(values_kept, keep) + ops.matmul(values_flipped, flip)


def sign_loss_per_structure(y_true, y_pred, weight="intensity", masks=None):
    """(B,) weighted BCE per structure at the stored origin, or (B, 8) over origins with masks."""
    label, labelled, w_src, _, z = _unpack(y_true, y_pred)
    w = reflection_weights(w_src, weight) * labelled
    base = ops.maximum(z, 0.0) + ops.log1p(ops.exp(-ops.abs(z)))  # BCE = base - z·label
    total = ops.sum(w, axis=-1)
    denom = ops.maximum(total, _EPS)
    if masks is None:
        return ops.sum(w * (base - z * label), axis=-1) / denom
    keep, flip = masks
    # with the label flipped (1 - s), BCE = base - z·(1 - s)
    s_kept = ops.sum(w * base, axis=-1, keepdims=True) - _per_origin_sum(
        w * z * label, w * z * (1.0 - label), keep, flip)
    return s_kept / ops.expand_dims(denom, -1)


def _correct(label, z):
    pred = ops.cast(z > 0, "float32")
    return 1.0 - ops.abs(pred - label)


def weighted_agreement(y_true, y_pred, w, masks=None):
    """Σ w·[pred = s] / Σ w per structure ((B,), or (B, 8) with origin masks)."""
    label, labelled, _, _, z = _unpack(y_true, y_pred)
    w = w * labelled
    c = _correct(label, z)
    denom = ops.maximum(ops.sum(w, axis=-1), _EPS)
    if masks is None:
        return ops.sum(w * c, axis=-1) / denom
    keep, flip = masks
    return _per_origin_sum(w * c, w * (1.0 - c), keep, flip) / ops.expand_dims(denom, -1)


@keras.saving.register_keras_serializable(package="phasenet")
class SignLoss(keras.losses.Loss):
    """Weighted per-reflection binary cross-entropy on logits; fixed or origin-invariant."""

    def __init__(self, weight="intensity", origin="fixed", max_index=10, r2_max=0,
                 name="sign_loss", **kwargs):
        if weight not in WEIGHTS:
            raise ValueError(f"weight {weight!r}: allowed values: {', '.join(WEIGHTS)}")
        if origin not in ORIGINS:
            raise ValueError(f"origin {origin!r}: allowed values: {', '.join(ORIGINS)}")
        super().__init__(name=name, **kwargs)
        self.weight, self.origin = weight, origin
        self.max_index, self.r2_max = int(max_index), int(r2_max or 0)
        self._masks = flip_masks(self.max_index, self.r2_max) if origin == "invariant" else None

    def call(self, y_true, y_pred):
        per = sign_loss_per_structure(y_true, y_pred, self.weight, self._masks)
        if self._masks is None:
            return per
        best = ops.min(per, axis=-1)
        if y_true.shape[-1] > 3:  # a 4th channel: 1 for samples whose origin is fixed (a phase hint)
            fixed = ops.cast(y_true[:, 0, 3], "float32")
            return fixed * per[:, 0] + (1.0 - fixed) * best
        return best

    def get_config(self):
        cfg = super().get_config()
        cfg.update(weight=self.weight, origin=self.origin, max_index=self.max_index,
                   r2_max=self.r2_max)
        return cfg


KINDS = ("weighted_accuracy", "accuracy", "map_corr")


@keras.saving.register_keras_serializable(package="phasenet")
class SignMetric(keras.metrics.MeanMetricWrapper):
    """Mean over structures of a per-structure sign metric (see the module docstring)."""

    def __init__(self, kind="weighted_accuracy", best_origin=False, weight="intensity",
                 max_index=10, r2_max=0, name=None, dtype=None):
        if kind not in KINDS:
            raise ValueError(f"metric {kind!r}: allowed values: {', '.join(KINDS)}")
        self.kind, self.best_origin, self.weight = kind, bool(best_origin), weight
        self.max_index, self.r2_max = int(max_index), int(r2_max or 0)
        masks = flip_masks(self.max_index, self.r2_max) if self.best_origin else None
        super().__init__(fn=self._values, name=name or (kind + ("_best" if best_origin else "")),
                         dtype=dtype)
        self._masks = masks

    def _values(self, y_true, y_pred):
        _, _, w_src, i_calc, _ = _unpack(y_true, y_pred)
        if self.kind == "weighted_accuracy":
            w = reflection_weights(w_src, self.weight)
        elif self.kind == "accuracy":
            w = ops.ones_like(w_src)
        else:
            w = ops.maximum(i_calc, 0.0)
        v = weighted_agreement(y_true, y_pred, w, self._masks)
        if self.kind == "map_corr":
            v = 2.0 * v - 1.0
        return ops.max(v, axis=-1) if self._masks is not None else v

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "kind": self.kind,
                "best_origin": self.best_origin, "weight": self.weight,
                "max_index": self.max_index, "r2_max": self.r2_max}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def sign_metrics(weight="intensity", max_index=10, r2_max=0) -> list:
    """The six metrics of a sign run: each kind at the stored origin and the best origin."""
    return [SignMetric(kind, best, weight, max_index, r2_max) for best in (False, True) for kind in KINDS]
