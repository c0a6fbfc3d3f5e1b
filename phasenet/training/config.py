"""Training configuration: dataclasses with defaults, read from TOML, validated.

A config file has the sections below (every key optional; see ``training/*.toml``)::

    [run]       name, seed, epochs, batch_size, deterministic
    [data]      path, recipe, task, max_index, r2_max, normalisation, input_transform,
                max_train, max_test, block_rows, shuffle_buffer, prefetch, in_memory,
                source; on-the-fly data (source = "atoms" | "synth", see
                docs/training-on-the-fly.md): u_iso, d_min, drop, scale, origin_shift,
                repeats, workers, epoch_size, space_groups, synth_atoms, synth_packing,
                synth_max_edge
    [model]     width, depth, widths, activation, dropout, batch_norm, l2,
                cell_input, bottleneck, output_activation, architecture
    [loss]      weight, weight_source, origin
    [optimizer] name, learning_rate, clipnorm
    [hardware]  backend, distribution, mixed_precision
    [output]    tensorboard, keep_checkpoints, plots
    [sweep]     "section.key" = [values, ...], mode = "product" | "zip"

Unknown sections or keys, wrong types and values outside the allowed set raise
:class:`ConfigError` naming the key and what is allowed. ``--set section.key=value``
overrides parse ``value`` as TOML (``100``, ``true``, ``"relu"``, ``[25, 50]``; a bare
word is taken as a string).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(ValueError):
    """A bad configuration: the message names the key and the allowed values."""


@dataclass
class RunSection:
    name: str = ""  # default: the config file's stem
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    deterministic: bool = True  # TF: enable_op_determinism


@dataclass
class DataSection:
    path: str = ""  # HDF5 dataset; relative paths are taken from the current directory
    recipe: str = ""  # the recipe of the dataset it expects: "datasets/NAME.toml" (see recipe_path)
    task: str = "sign"
    max_index: int = 10  # the reflection set the model expects: canonical_hkl(max_index, r2_max)
    r2_max: int = 0  # 0: no sphere cut (4630 reflections); 50: the study's 709
    normalisation: str = "any"  # require the dataset's build normalisation
    input_transform: str = "none"
    max_train: int = 0  # 0: every training structure; else a seeded random subset of this size
    max_test: int = 0
    block_rows: int = 64  # rows read together (chunks are one structure each)
    shuffle_buffer: int = 4096  # rows shuffled together (a window of shuffled blocks)
    prefetch: bool = True  # read the next window in a background thread
    in_memory: bool = False  # load the selected rows into memory (small data, benchmarks)
    # where the batches come from: "stored" (the dataset's rows, as built), "atoms" (the
    # dataset's atomic models, structure factors computed per batch) or "synth" (structures
    # synthesised per batch); the last two give the network input of phasenet.training.inputs
    source: str = "stored"
    # on-the-fly sources, drawn per sample ([lo, hi] uniform; scale log-uniform):
    u_iso: list = field(default_factory=lambda: [0.005, 0.06])  # Å², every atom; []: the model's own
    d_min: list = field(default_factory=lambda: [0.8, 2.5])  # Å; []: no resolution cut
    drop: list = field(default_factory=lambda: [0.0, 0.15])  # fraction of the reflections to d_min
    scale: list = field(default_factory=lambda: [0.5, 2.0])  # overall scale of F
    origin_shift: bool = True  # a random permissible origin per sample
    repeats: int = 1  # training samples per structure (in different batches), each with its own
    # draws; run.batch_size must be a multiple
    workers: int = 2  # processes computing batches ahead (0: in the training process)
    epoch_size: int = 0  # synth: training samples per epoch (0: 51 200)
    space_groups: list = field(default_factory=lambda: ["P-1", "P21/c"])  # synth
    synth_atoms: list = field(default_factory=lambda: [8, 50])  # synth: non-H atoms per asymmetric unit
    synth_packing: str = "dense"  # synth: phasenet.synth.generate.PACKINGS
    synth_max_edge: float = 15.0  # synth: longest cell edge, Å
    # phasing-net: phase hints in training ([lo, hi] fraction of wrong signs; []: none), given to
    # a share of the samples (phasenet.training.onthefly.phase_hint)
    hint: list = field(default_factory=list)
    hint_share: float = 0.5


@dataclass
class ModelSection:
    width: Any = 100  # int or "input" (as wide as the input)
    depth: int = 1  # hidden layers (autoencoder: before the bottleneck, mirrored after)
    widths: list = field(default_factory=list)  # explicit hidden widths; overrides width/depth
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    l2: float = 0.0
    cell_input: bool = False  # add the 6 cell parameters as a second input
    bottleneck: int = 100  # autoencoder
    output_activation: str = "linear"  # autoencoder reconstruction
    # a registered model (phasenet.training.registry); "": mlp for sign, autoencoder
    architecture: str = ""
    # phasing-net (phasenet.training.phasing_net, docs/phasing-network.md)
    filters: int = 32  # 3-D convolution filters (the stem and the residual blocks)
    conv_blocks: int = 1  # residual 3-D convolution blocks on the coarse grid
    mixer_blocks: int = 2  # MLP-mixer blocks over the coarse voxels
    mixer_channels: int = 0  # channels of the mixer tokens (0: 2 x filters)
    head_filters: int = 8  # channels of the full-grid head
    token_width: int = 256  # hidden width of the token-mixing MLP
    channel_width: int = 128  # hidden width of the channel-mixing MLP
    cycles: int = 2  # recycling: the training model unrolls this many cycles (1..cycles drawn per sample)


@dataclass
class LossSection:
    weight: str = "intensity"
    weight_source: str = "input"  # which intensity the weights use: model input or I_calc
    origin: str = "fixed"


@dataclass
class OptimizerSection:
    name: str = "adam"
    learning_rate: float = 1e-3
    clipnorm: float = 0.0  # 0: no clipping


@dataclass
class HardwareSection:
    backend: str = "auto"  # auto: $KERAS_BACKEND, else tensorflow
    distribution: str = "auto"
    mixed_precision: bool = False


@dataclass
class OutputSection:
    tensorboard: bool = True
    keep_checkpoints: int = 1
    plots: bool = True


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    hardware: HardwareSection = field(default_factory=HardwareSection)
    output: OutputSection = field(default_factory=OutputSection)
    sweep: dict = field(default_factory=dict)  # {"section.key": [values]}, plus "mode"

    # ---- derived -------------------------------------------------------------------
    def hidden_widths(self, n_inputs: int) -> list[int]:
        widths = self.model.widths or [self.model.width] * self.model.depth
        return [n_inputs if w == "input" else int(w) for w in widths]

    def r2_max_or_none(self) -> int | None:
        return self.data.r2_max or None

    def input_kind(self) -> str:
        """What the network is shown: "stored" (the dataset's ``intensity`` column) or
        "network" (:func:`phasenet.training.inputs.network_input`: {"intensity", "mask"})."""
        return "stored" if self.data.source == "stored" else "network"

    def to_dict(self, with_sweep: bool = True) -> dict:
        d = dataclasses.asdict(self)
        if not with_sweep or not d["sweep"]:
            d.pop("sweep")
        return d

    def to_toml(self, with_sweep: bool = True) -> str:
        return dict_to_toml(self.to_dict(with_sweep))

    def get(self, dotted: str):
        section, key = _split_key(dotted)
        return getattr(getattr(self, section), key)


SECTIONS = {"run": RunSection, "data": DataSection, "model": ModelSection, "loss": LossSection,
            "optimizer": OptimizerSection, "hardware": HardwareSection, "output": OutputSection}

#: Allowed values of the string keys that are choices.
CHOICES = {
    "data.task": ("sign", "autoencoder"),
    "data.normalisation": ("any", "linreg", "max", "mean", "median", "wilson"),
    "data.input_transform": ("none", "max", "log1p"),
    "data.source": ("stored", "atoms", "synth"),
    "data.synth_packing": ("dense", "fast"),
    "model.activation": ("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish", "leaky_relu"),
    "model.output_activation": ("linear", "relu", "sigmoid", "softplus"),
    "loss.weight": ("intensity", "exp_intensity", "uniform"),
    "loss.weight_source": ("input", "calc"),
    "loss.origin": ("fixed", "invariant"),
    "optimizer.name": ("adam", "adamw", "sgd", "rmsprop"),
    "hardware.backend": ("auto", "tensorflow", "jax"),
    "hardware.distribution": ("auto", "none", "data_parallel"),
}
#: (minimum, maximum or None) of numeric keys.
RANGES = {
    "run.epochs": (0, None), "run.batch_size": (1, None), "data.max_index": (1, 30),
    "data.r2_max": (0, None), "data.max_train": (0, None), "data.max_test": (0, None),
    "data.block_rows": (1, None), "data.shuffle_buffer": (1, None), "model.depth": (0, 64),
    "model.dropout": (0.0, 0.99), "model.l2": (0.0, None), "model.bottleneck": (1, None),
    "optimizer.learning_rate": (0.0, None), "optimizer.clipnorm": (0.0, None),
    "output.keep_checkpoints": (1, None),
    "data.repeats": (1, None), "data.workers": (0, 64), "data.epoch_size": (0, None),
    "data.synth_max_edge": (5.0, None), "data.hint_share": (0.0, 1.0),
    "model.filters": (1, 1024), "model.conv_blocks": (0, 64), "model.mixer_blocks": (0, 64),
    "model.mixer_channels": (0, 4096), "model.head_filters": (1, 1024), "model.token_width": (1, None), "model.channel_width": (1, None),
    "model.cycles": (1, 8),
}
#: [lo, hi] pairs: (minimum, maximum or None, may be empty []).
PAIRS = {
    "data.u_iso": (0.0, 1.0, True), "data.d_min": (0.0, None, True), "data.drop": (0.0, 0.95, False),
    "data.scale": (0.0, None, False), "data.synth_atoms": (1, None, False),
    "data.hint": (0.0, 1.0, True),
}
#: The source-independent default of each on-the-fly key (a stored-data config must leave them).
ONTHEFLY_KEYS = ("u_iso", "d_min", "drop", "scale", "origin_shift", "repeats", "workers",
                 "epoch_size", "space_groups", "synth_atoms", "synth_packing", "synth_max_edge",
                 "hint", "hint_share")

SWEEP_MODES = ("product", "zip")


def _split_key(dotted: str) -> tuple[str, str]:
    if dotted.count(".") != 1:
        raise ConfigError(f"key {dotted!r} must be 'section.key' with section one of "
                          f"{', '.join(SECTIONS)}")
    section, key = dotted.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r} in {dotted!r}; allowed: {', '.join(SECTIONS)}")
    allowed = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in allowed:
        raise ConfigError(f"unknown key {dotted!r}; allowed in [{section}]: {', '.join(allowed)}")
    return section, key


def _check_value(dotted: str, value, default):
    """Coerce/validate one value against the type of its default and the rules above."""
    def bad(what):
        return ConfigError(f"{dotted} = {value!r}: {what}")

    if dotted == "model.width":
        if value == "input" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise bad('must be a positive integer or "input"')
    if dotted == "model.widths":
        if not isinstance(value, list) or not all(
                w == "input" or (isinstance(w, int) and not isinstance(w, bool) and w >= 1) for w in value):
            raise bad('must be a list of positive integers or "input"')
        return list(value)
    if dotted in PAIRS:
        lo, hi, may_be_empty = PAIRS[dotted]
        integer = dotted == "data.synth_atoms"
        ok = isinstance(value, list) and (len(value) == 2 or (may_be_empty and not value)) and all(
            isinstance(v, int) if integer else isinstance(v, (int, float)) for v in value) and not any(
            isinstance(v, bool) for v in value)
        if not ok:
            raise bad("must be a list [lo, hi] of " + ("integers" if integer else "numbers")
                      + (" (or [] for none)" if may_be_empty else ""))
        value = [v if integer else float(v) for v in value]
        strict = dotted in ("data.d_min", "data.scale")  # must be positive
        if value and not (value[0] <= value[1] and (value[0] > lo if strict else value[0] >= lo)
                          and (hi is None or value[1] <= hi)):
            raise bad(f"must have lo <= hi, lo {'>' if strict else '>='} {lo}"
                      + (f", hi <= {hi}" if hi is not None else ""))
        return value
    if dotted == "data.space_groups":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad('must be a non-empty list of space group names, e.g. ["P-1", "P21/c"]')
        return list(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("must be a string")
    if dotted == "data.recipe" and value and not (value.startswith("datasets/") and value.endswith(".toml")):
        raise bad('must name a recipe of the datasets/ folder: "datasets/NAME.toml"')
    if dotted in CHOICES and value not in CHOICES[dotted]:
        raise bad(f"allowed values: {', '.join(CHOICES[dotted])}")
    if dotted in RANGES:
        lo, hi = RANGES[dotted]
        if value < lo or (hi is not None and value > hi):
            raise bad(f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    return value


def _set(cfg: TrainConfig, dotted: str, value) -> None:
    section, key = _split_key(dotted)
    sec = getattr(cfg, section)
    setattr(sec, key, _check_value(dotted, value, getattr(SECTIONS[section](), key)))


def _check_sweep(sweep: dict) -> dict:
    sweep = dict(sweep)
    mode = sweep.get("mode", "product")
    if mode not in SWEEP_MODES:
        raise ConfigError(f"sweep.mode = {mode!r}: allowed values: {', '.join(SWEEP_MODES)}")
    sweep["mode"] = mode
    lengths = []
    for k, v in sweep.items():
        if k == "mode":
            continue
        _split_key(k)
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep.{k!r} must be a non-empty list of values, got {v!r}")
        lengths.append(len(v))
    if mode == "zip" and len(set(lengths)) > 1:
        raise ConfigError(f"sweep mode 'zip' needs lists of equal length, got lengths {lengths}")
    return sweep


def _flatten(table: dict, source: str) -> list[tuple[str, Any]]:
    items = []
    for section, body in table.items():
        if section == "sweep":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; allowed: "
                              f"{', '.join(list(SECTIONS) + ['sweep'])}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in body.items():
            items.append((f"{section}.{key}", value))
    return items


def config_from_dict(table: dict, source: str = "config") -> TrainConfig:
    cfg = TrainConfig()
    for dotted, value in _flatten(table, source):
        _set(cfg, dotted, value)
    if "sweep" in table:
        if not isinstance(table["sweep"], dict):
            raise ConfigError(f"{source}: [sweep] must be a table")
        cfg.sweep = _check_sweep(table["sweep"])
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Checks across keys (single values were checked when set)."""
    from phasenet.training.registry import UnknownModel, resolve_architecture

    try:
        resolve_architecture(cfg.model.architecture, cfg.data.task)
    except UnknownModel as exc:
        raise ConfigError(f"model.architecture = {cfg.model.architecture!r}: {exc}") from None
    if cfg.data.r2_max and cfg.data.r2_max < 2:
        raise ConfigError(f"data.r2_max = {cfg.data.r2_max}: use 0 for no sphere cut or a value >= 2")
    if cfg.data.task == "autoencoder" and cfg.loss.origin == "invariant":
        raise ConfigError('loss.origin = "invariant" applies to data.task = "sign" only')
    if cfg.data.task == "autoencoder" and cfg.model.cell_input:
        raise ConfigError('model.cell_input = true applies to data.task = "sign" only')
    d = cfg.data
    if d.source != "stored":
        if d.task != "sign":
            raise ConfigError(f'data.source = "{d.source}" makes sign labels: it needs data.task = "sign"')
        if d.normalisation != "any":
            raise ConfigError(f'data.normalisation = "{d.normalisation}" selects stored datasets; '
                              f'data.source = "{d.source}" normalises on the fly (leave it "any")')
        if cfg.run.batch_size % d.repeats:
            raise ConfigError(f"run.batch_size = {cfg.run.batch_size} must be a multiple of "
                              f"data.repeats = {d.repeats} (a batch brings batch_size / repeats "
                              "new structures)")
        if d.epoch_size and d.source != "synth":
            raise ConfigError('data.epoch_size applies to data.source = "synth" only (an "atoms" '
                              "epoch is one pass over the dataset's structures)")
    else:
        default = DataSection()
        changed = [k for k in ONTHEFLY_KEYS if getattr(d, k) != getattr(default, k)]
        if changed:
            raise ConfigError(f"data.{changed[0]} applies to on-the-fly data only "
                              '(data.source = "atoms" or "synth"); data.source is "stored"')


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.width=100"`` -> ("model.width", 100); values are TOML, bare words strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(cfg: TrainConfig, overrides) -> TrainConfig:
    """A copy of ``cfg`` with ``section.key=value`` strings or (key, value) pairs applied."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or ():
        key, value = parse_override(item) if isinstance(item, str) else item
        if key.startswith("sweep."):
            raise ConfigError(f"{key}: sweeps are set in the config file's [sweep] table")
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides=()) -> TrainConfig:
    """Read a TOML config, apply overrides, validate; ``run.name`` defaults to the file stem."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    cfg = config_from_dict(table, str(path))
    cfg = apply_overrides(cfg, overrides)
    if not cfg.run.name:
        cfg.run.name = path.stem
    return cfg


def recipe_path(cfg: TrainConfig, config_path: str | Path) -> Path | None:
    """The file of ``data.recipe`` (None if the config names none): ``datasets/`` is the
    folder beside the config's own folder (the repository's, or the copy installed with
    phasenet). A recipe that is not there raises ConfigError."""
    if not cfg.data.recipe:
        return None
    path = Path(config_path).resolve().parent.parent / cfg.data.recipe
    if not path.is_file():
        raise ConfigError(f"{config_path}: data.recipe = {cfg.data.recipe!r}: no such recipe ({path})")
    return path


# ---- a small TOML writer (the resolved config of every run) -------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dict_to_toml(d: dict) -> str:
    out = []
    for section, body in d.items():
        out.append(f"[{section}]")
        for k, v in body.items():
            key = k if k.replace("_", "").isalnum() else _toml_value(k)
            out.append(f"{key} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)
