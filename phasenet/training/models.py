"""Keras models: dense sign networks and autoencoders, from the config's [model] section.

Only standard Keras layers (functional API), so a saved model loads with plain
``keras.saving.load_model`` and no phasenet import. Outputs are float32 even under
mixed precision (the loss is computed in float32).
"""

from __future__ import annotations

import keras
from keras import layers


def _hidden(x, widths, m, seed, prefix):
    reg = keras.regularizers.L2(m.l2) if m.l2 > 0 else None
    for i, width in enumerate(widths):
        x = layers.Dense(width, activation=None if m.batch_norm else m.activation,
                         kernel_regularizer=reg, name=f"{prefix}_dense_{i}")(x)
        if m.batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}_bn_{i}")(x)
            x = layers.Activation(m.activation, name=f"{prefix}_act_{i}")(x)
        if m.dropout > 0:
            x = layers.Dropout(m.dropout, seed=seed + 1000 * i + len(prefix),
                               name=f"{prefix}_dropout_{i}")(x)
    return x


def build_model(cfg, n_reflections: int) -> keras.Model:
    """The network of ``cfg`` for ``n_reflections`` inputs: the builder registered as
    ``[model] architecture`` (default: ``mlp`` for sign tasks, ``autoencoder``), see
    :mod:`phasenet.training.registry`."""
    from phasenet.training.registry import get_model_builder, resolve_architecture

    name = resolve_architecture(cfg.model.architecture, cfg.data.task)
    return get_model_builder(name)(cfg, n_reflections)


def model_inputs(cfg, n_reflections: int):
    """(Keras inputs, the tensor a model starts from): ``intensity`` alone, or a dict with
    ``mask`` (network input, :mod:`phasenet.training.inputs`) and ``cell`` (``model.cell_input``)
    whose tensors are concatenated."""
    intensity = keras.Input((n_reflections,), name="intensity")
    network_input = cfg.input_kind() == "network"  # {"intensity": |E|², "mask"}
    if not (cfg.model.cell_input or network_input):
        return intensity, intensity
    inputs, parts = {"intensity": intensity}, [intensity]
    if network_input:
        inputs["mask"] = keras.Input((n_reflections,), name="mask")
        parts.append(inputs["mask"])
    if cfg.model.cell_input:
        inputs["cell"] = keras.Input((6,), name="cell")
        parts.append(inputs["cell"])
    return inputs, layers.Concatenate(name="intensity_and_" + "_and_".join(list(inputs)[1:]))(parts)


def build_mlp(cfg, n_reflections: int) -> keras.Model:
    """The study's dense sign network: hidden layers of ``cfg.model`` widths, sign logits."""
    m = cfg.model
    widths = cfg.hidden_widths(n_reflections)
    reg = keras.regularizers.L2(m.l2) if m.l2 > 0 else None
    inputs, x = model_inputs(cfg, n_reflections)
    x = _hidden(x, widths, m, cfg.run.seed, "hidden")
    out = layers.Dense(n_reflections, kernel_regularizer=reg, dtype="float32", name="sign_logits")(x)
    return keras.Model(inputs, out, name=f"sign_{'x'.join(map(str, widths)) or 'linear'}")


def build_autoencoder(cfg, n_reflections: int) -> keras.Model:
    """The study's autoencoder: encoder, bottleneck, mirrored decoder, reconstruction."""
    m = cfg.model
    widths = cfg.hidden_widths(n_reflections)
    reg = keras.regularizers.L2(m.l2) if m.l2 > 0 else None
    intensity = keras.Input((n_reflections,), name="intensity")
    x = _hidden(intensity, widths, m, cfg.run.seed, "encoder")
    x = layers.Dense(m.bottleneck, activation=m.activation, kernel_regularizer=reg, name="bottleneck")(x)
    x = _hidden(x, widths[::-1], m, cfg.run.seed, "decoder")
    out = layers.Dense(n_reflections, activation=m.output_activation, kernel_regularizer=reg,
                       dtype="float32", name="reconstruction")(x)
    return keras.Model(intensity, out, name=f"autoencoder_{m.bottleneck}")


def export_model(model: keras.Model, task: str) -> keras.Model:
    """An uncompiled copy for ``model.keras``: sign models output probabilities P(sign = 1).
    A recycling model (:mod:`phasenet.training.phasing_net`) exports its core, which takes
    the phase estimate as a third input."""
    from phasenet.training.phasing_net import CORE_NAME, export_core

    if any(layer.name == CORE_NAME for layer in model.layers):
        return export_core(model)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if task != "sign":
        return clone
    prob = layers.Activation("sigmoid", dtype="float32", name="sign_probability")(clone.output)
    return keras.Model(clone.input, prob, name=model.name)
