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
    """The network of ``cfg`` for ``n_reflections`` inputs (sign logits or reconstruction)."""
    m = cfg.model
    seed = cfg.run.seed
    widths = cfg.hidden_widths(n_reflections)
    reg = keras.regularizers.L2(m.l2) if m.l2 > 0 else None
    intensity = keras.Input((n_reflections,), name="intensity")
    inputs = intensity
    x = intensity
    if cfg.data.task == "sign":
        network_input = cfg.input_kind() == "network"  # {"intensity": |E|², "mask"}
        if m.cell_input or network_input:
            inputs, parts = {"intensity": intensity}, [intensity]
            if network_input:
                inputs["mask"] = keras.Input((n_reflections,), name="mask")
                parts.append(inputs["mask"])
            if m.cell_input:
                inputs["cell"] = keras.Input((6,), name="cell")
                parts.append(inputs["cell"])
            x = layers.Concatenate(name="intensity_and_" + "_and_".join(list(inputs)[1:]))(parts)
        x = _hidden(x, widths, m, seed, "hidden")
        out = layers.Dense(n_reflections, kernel_regularizer=reg, dtype="float32",
                           name="sign_logits")(x)
        name = f"sign_{'x'.join(map(str, widths)) or 'linear'}"
    else:
        x = _hidden(x, widths, m, seed, "encoder")
        x = layers.Dense(m.bottleneck, activation=m.activation, kernel_regularizer=reg,
                         name="bottleneck")(x)
        x = _hidden(x, widths[::-1], m, seed, "decoder")
        out = layers.Dense(n_reflections, activation=m.output_activation, kernel_regularizer=reg,
                           dtype="float32", name="reconstruction")(x)
        name = f"autoencoder_{m.bottleneck}"
    return keras.Model(inputs, out, name=name)


def export_model(model: keras.Model, task: str) -> keras.Model:
    """An uncompiled copy for ``model.keras``: sign models output probabilities P(sign = 1)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if task != "sign":
        return clone
    prob = layers.Activation("sigmoid", dtype="float32", name="sign_probability")(clone.output)
    return keras.Model(clone.input, prob, name=model.name)
