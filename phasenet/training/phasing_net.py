"""The phasing network: 3-D convolutions over the reflection grid, token mixing, recycling.

A PhAI-class sign network (Larsen et al., Science 2024; ``docs/phasing-network.md``),
written with standard Keras 3 layers and ``keras.ops`` so that it runs on JAX and
TensorFlow alike. Registered as ``[model] architecture = "phasing-net"``.

**Grid.** The model takes the flat inputs of every phasenet sign network (``"intensity"``:
|E|² and ``"mask"``, :mod:`phasenet.training.inputs`, on ``canonical_hkl(max_index)``) and
scatters them onto the Friedel half of reciprocal space, h = 0..H, k, l = -H..H (the
asymmetric unit of P-1; P2₁/c uses the same grid, its mirror-related reflections both
present). The h = 0 plane holds both mates of a pair (same |E|, same sign). Channels:
|E|, mask, and the current phase estimate (the expected sign, in [-1, 1]; 0 = unknown).

**Core** (``sign_core``, a functional sub-model ``{"intensity", "mask", "phase"}`` →
logits): a stride-2 3×3×3 convolution stem to a grid of half the size per axis,
``conv_blocks`` residual 3-D convolution blocks, ``mixer_blocks`` MLP-mixer blocks over
the coarse voxels (tokens) and channels, a transposed convolution (kernel 2, stride 2) back to the full grid
added to a per-voxel (1×1×1) view of the input, and a 3×3×3 convolution to one logit per
voxel, plus a direct linear (1×1×1) path from the voxel's input to its logit, read back at
each reflection's voxel. The work is on the coarse grid (an eighth of
the voxels): what makes it train on a CPU.

**Recycling.** The training model unrolls ``cycles`` applications of the core: cycle 0
starts from no phases (or, with probability ½, from random signs of random strength,
as inference's random starts do; or, with ``data.hint``, for a share of the samples from
the true signs with a random fraction of them wrong, so that the network learns to
improve a partly right phase set, what a classical polish hands it); each later cycle is given tanh(logit/2)·mask of the
one before, with the gradient stopped; the final application, the only one trained,
starts from the estimate after a number of cycles drawn per sample (1..``cycles``).
Inference (:mod:`phasenet.training.predict`) runs the exported core as many cycles as
asked, from as many random starts as asked.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from phasenet.reflections import canonical_hkl, friedel_representative, lookup

CORE_NAME = "sign_core"


def grid_shape(max_index: int) -> tuple[int, int, int]:
    n = 2 * max_index + 1
    return (max_index + 1, n, n)


def grid_indices(max_index: int, r2_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(voxel → flat index (V,), R for voxels with no reflection; flat → voxel (R,)) for
    the grid of :func:`grid_shape` and ``canonical_hkl(max_index, r2_max)``."""
    hkl = np.asarray(canonical_hkl(max_index, r2_max), dtype=np.int64)
    h = np.arange(0, max_index + 1)
    r = np.arange(-max_index, max_index + 1)
    vox = np.stack(np.meshgrid(h, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    rep, _ = friedel_representative(vox)
    to_flat = lookup(hkl, rep)
    to_flat = np.where(to_flat >= 0, to_flat, len(hkl)).astype(np.int32)
    shape = grid_shape(max_index)
    to_voxel = np.ravel_multi_index((hkl[:, 0], hkl[:, 1] + max_index, hkl[:, 2] + max_index), shape)
    return to_flat, to_voxel.astype(np.int32)


@keras.saving.register_keras_serializable(package="phasenet")
class ToGrid(layers.Layer):
    """(B, R, C) per reflection → (B, H+1, 2H+1, 2H+1, C) on the grid (0 where no reflection)."""

    def __init__(self, max_index=10, r2_max=0, **kwargs):
        super().__init__(**kwargs)
        self.max_index, self.r2_max = int(max_index), int(r2_max or 0)
        self._index = grid_indices(self.max_index, self.r2_max or None)[0]

    def call(self, x):
        pad = ops.zeros_like(x[:, :1, :])
        g = ops.take(ops.concatenate([x, pad], axis=1), self._index, axis=1)
        return ops.reshape(g, (-1, *grid_shape(self.max_index), ops.shape(x)[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *grid_shape(self.max_index), input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "max_index": self.max_index, "r2_max": self.r2_max}


@keras.saving.register_keras_serializable(package="phasenet")
class FromGrid(layers.Layer):
    """(B, H+1, 2H+1, 2H+1) grid → (B, R): each reflection's voxel."""

    def __init__(self, max_index=10, r2_max=0, **kwargs):
        super().__init__(**kwargs)
        self.max_index, self.r2_max = int(max_index), int(r2_max or 0)
        self._index = grid_indices(self.max_index, self.r2_max or None)[1]

    def call(self, g):
        flat = ops.reshape(g, (ops.shape(g)[0], -1))
        return ops.take(flat, self._index, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self._index))

    def get_config(self):
        return {**super().get_config(), "max_index": self.max_index, "r2_max": self.r2_max}


@keras.saving.register_keras_serializable(package="phasenet")
class AmplitudeE(layers.Layer):
    """|E| from the |E|² input (0 where not given)."""

    def call(self, e2):
        return ops.sqrt(ops.maximum(e2, 0.0))


@keras.saving.register_keras_serializable(package="phasenet")
class StartPhase(layers.Layer):
    """The phase estimate the first cycle starts from: 0 at inference; in training, the
    sample's hint where it has one (``data.hint``: partly right signs), else 0 for half the
    samples and random signs · U(0, 1) (on the given reflections) for the rest."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, mask, hint=None, training=False):
        if not training:
            return ops.zeros_like(mask)
        b = ops.shape(mask)[0]
        signs = ops.sign(keras.random.uniform(ops.shape(mask), -1.0, 1.0, seed=self.seed_generator))
        strength = keras.random.uniform((b, 1), 0.0, 1.0, seed=self.seed_generator)
        use = ops.cast(keras.random.uniform((b, 1), 0.0, 1.0, seed=self.seed_generator) < 0.5, mask.dtype)
        start = signs * strength * use * mask
        if hint is None:
            return start
        has_hint = ops.cast(ops.max(ops.abs(hint), axis=-1, keepdims=True) > 0, mask.dtype)
        return has_hint * hint * mask + (1.0 - has_hint) * start

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="phasenet")
class Recycle(layers.Layer):
    """The next cycle's phase estimate from logits: tanh(z/2)·mask = E[sign], gradient stopped."""

    def call(self, logits, mask):
        return ops.stop_gradient(ops.tanh(0.5 * ops.cast(logits, mask.dtype)) * mask)


@keras.saving.register_keras_serializable(package="phasenet")
class CycleChoice(layers.Layer):
    """Which estimate the trained (last) cycle starts from: in training, the one after a
    number of cycles drawn per sample from 0..n-1 (so 1..n cycles in all); at inference,
    the last."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed + 1)

    def call(self, estimates, training=False):
        if not training or len(estimates) == 1:
            return estimates[-1]
        stack = ops.stack(estimates, axis=1)  # (B, n, R)
        b, n = ops.shape(stack)[0], len(estimates)
        pick = keras.random.randint((b,), 0, n, seed=self.seed_generator)
        onehot = ops.one_hot(pick, n, dtype=stack.dtype)  # (B, n)
        return ops.sum(stack * onehot[:, :, None], axis=1)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _conv(x, filters, name, strides=1, kernel=3, activation="gelu"):
    return layers.Conv3D(filters, kernel, strides=strides, padding="same", activation=activation,
                         name=name)(x)


def _mixer_block(x, tokens, channels, m, i):
    """One MLP-mixer block on (B, T, C): token mixing, then channel mixing, both residual."""
    y = layers.LayerNormalization(name=f"mixer_{i}_norm_tokens")(x)
    y = layers.Permute((2, 1), name=f"mixer_{i}_to_tokens")(y)
    y = layers.Dense(m.token_width, activation="gelu", name=f"mixer_{i}_token_in")(y)
    y = layers.Dense(tokens, name=f"mixer_{i}_token_out")(y)
    y = layers.Permute((2, 1), name=f"mixer_{i}_from_tokens")(y)
    x = layers.Add(name=f"mixer_{i}_token_residual")([x, y])
    y = layers.LayerNormalization(name=f"mixer_{i}_norm_channels")(x)
    y = layers.Dense(m.channel_width, activation="gelu", name=f"mixer_{i}_channel_in")(y)
    y = layers.Dense(channels, name=f"mixer_{i}_channel_out")(y)
    return layers.Add(name=f"mixer_{i}_channel_residual")([x, y])


def build_core(cfg, n_reflections: int) -> keras.Model:
    """``sign_core``: {"intensity" (B, R) |E|², "mask" (B, R), "phase" (B, R)} → logits (B, R)."""
    m, d = cfg.model, cfg.data
    hkl = canonical_hkl(d.max_index, d.r2_max or None)
    if len(hkl) != n_reflections:
        raise ValueError(f"phasing-net: {n_reflections} reflections, but max_index {d.max_index} / "
                         f"r2_max {d.r2_max} give {len(hkl)}")
    e2 = keras.Input((n_reflections,), name="intensity")
    mask = keras.Input((n_reflections,), name="mask")
    phase = keras.Input((n_reflections,), name="phase")
    # |E| rather than |E|² (tamer range); channels stacked per reflection
    amp = layers.Reshape((n_reflections, 1), name="amplitude_channel")(AmplitudeE(name="amplitude_e")(e2))
    per_refl = layers.Concatenate(name="amp_mask")([amp, layers.Reshape((n_reflections, 1),
                                                                         name="mask_channel")(mask)])
    phase_ch = layers.Reshape((n_reflections, 1), name="phase_channel")(phase)
    channels_in = layers.Concatenate(name="channels")([per_refl, phase_ch])  # (B, R, 3)
    grid = ToGrid(d.max_index, d.r2_max, name="to_grid")(channels_in)
    f = m.filters
    # the stem: one stride-2 convolution (amplitude, mask and phase channels together;
    # PhAI's separate amplitude and phase stems, summed, are this convolution split in two)
    x = _conv(grid, f, "stem", strides=2)
    for i in range(m.conv_blocks):
        y = _conv(x, f, f"block_{i}_conv_0")
        y = _conv(y, f, f"block_{i}_conv_1", activation=None)
        x = layers.Activation("gelu", name=f"block_{i}_act")(layers.Add(name=f"block_{i}_residual")([x, y]))
    full = grid_shape(d.max_index)
    coarse = tuple(-(-s // 2) for s in full)
    tokens = int(np.prod(coarse))
    channels = m.mixer_channels or f
    t = layers.Reshape((tokens, f), name="tokens")(x)
    if channels != f:
        t = layers.Dense(channels, name="token_embedding")(t)
    for i in range(m.mixer_blocks):
        t = _mixer_block(t, tokens, channels, m, i)
    t = layers.LayerNormalization(name="mixer_norm")(t)
    x = layers.Reshape((*coarse, channels), name="untokens")(t)
    # back to every reflection: a transposed convolution, joined with a per-voxel view of the input
    # a transposed convolution of kernel 2, stride 2 written as a dense layer and a
    # depth-to-space reshape (Conv3DTranspose is ~15x slower on the CPU)
    hf = m.head_filters
    up = layers.Dense(8 * hf, name="up")(x)
    up = layers.Reshape((*coarse, 2, 2, 2, hf), name="up_split")(up)
    up = layers.Permute((1, 4, 2, 5, 3, 6, 7), name="up_interleave")(up)
    up = layers.Reshape(tuple(2 * c for c in coarse) + (hf,), name="up_grid")(up)
    up = layers.Cropping3D(tuple((0, 2 * c - s) for c, s in zip(coarse, full)), name="up_crop")(up)
    skip = layers.Conv3D(m.head_filters, 1, name="skip")(grid)
    y = layers.Activation("gelu", name="head_act")(layers.Add(name="head_join")([up, skip]))
    y = layers.Conv3D(1, 3, padding="same", dtype="float32", name="head_logit")(y)
    # a direct linear path from each voxel's input (|E|, mask, phase estimate) to its logit:
    # keeping or turning over a given estimate is learnt at once, not through the whole net
    direct = layers.Conv3D(1, 1, dtype="float32", name="direct_logit")(grid)
    y = layers.Add(name="logit_sum", dtype="float32")([y, direct])
    y = layers.Reshape(full, name="logit_grid")(y)
    logits = FromGrid(d.max_index, d.r2_max, dtype="float32", name="sign_logits")(y)
    return keras.Model({"intensity": e2, "mask": mask, "phase": phase}, logits, name=CORE_NAME)


def build_phasing_net(cfg, n_reflections: int) -> keras.Model:
    """The training model: the core unrolled over ``model.cycles`` recycling cycles
    ({"intensity", "mask"} → logits of the last cycle)."""
    core = build_core(cfg, n_reflections)
    e2 = keras.Input((n_reflections,), name="intensity")
    mask = keras.Input((n_reflections,), name="mask")
    inputs = {"intensity": e2, "mask": mask}
    seed = cfg.run.seed
    if cfg.data.hint:  # training hints (phasenet.training.onthefly.phase_hint), unused at inference
        inputs["hint"] = keras.Input((n_reflections,), name="hint")
        estimates = [StartPhase(seed, name="start_phase")(mask, inputs["hint"])]
    else:
        estimates = [StartPhase(seed, name="start_phase")(mask)]
    for c in range(cfg.model.cycles - 1):
        z = core({"intensity": e2, "mask": mask, "phase": estimates[-1]})
        estimates.append(Recycle(name=f"recycle_{c}")(z, mask))
    start = CycleChoice(seed, name="cycle_choice")(estimates)
    logits = core({"intensity": e2, "mask": mask, "phase": start})
    return keras.Model(inputs, logits, name=f"phasing_net_f{cfg.model.filters}_m{cfg.model.mixer_blocks}")


def export_core(model: keras.Model) -> keras.Model:
    """The exported inference model: the core, ending in P(sign = 1) (a copy)."""
    core = model.get_layer(CORE_NAME)
    clone = keras.models.clone_model(core)
    clone.set_weights(core.get_weights())
    prob = layers.Activation("sigmoid", dtype="float32", name="sign_probability")(clone.output)
    return keras.Model(clone.input, prob, name=model.name)
