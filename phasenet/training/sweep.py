"""Sweeps: a config with a ``[sweep]`` table stands for several runs.

::

    [sweep]
    "model.width" = [25, 50, 100]          # one member per value
    "loss.weight" = ["intensity", "uniform"]
    mode = "product"                       # or "zip": the lists side by side

Members are numbered in order (``--member K`` runs one, e.g. as a Slurm array task);
member K lives in ``OUT/KK-<key>=<value>...`` and the comparison figure of all members
with a history is ``OUT/sweep_comparison.png`` (autoencoders: also
``OUT/reflection_errors.png``).
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from phasenet.training.config import ConfigError, TrainConfig, apply_overrides


@dataclass
class Member:
    index: int
    label: str
    folder: str
    config: TrainConfig


def _fmt(v) -> str:
    return "-".join(map(str, v)) if isinstance(v, list) else str(v)


def expand(cfg: TrainConfig) -> list[Member]:
    """The runs a config stands for (one member, index 0, without a [sweep] table)."""
    base = copy.deepcopy(cfg)
    sweep = dict(base.sweep)
    base.sweep = {}
    if not sweep:
        return [Member(0, base.run.name, "", base)]
    mode = sweep.pop("mode", "product")
    keys = list(sweep)
    combos = list(zip(*sweep.values())) if mode == "zip" else list(itertools.product(*sweep.values()))
    members = []
    for i, combo in enumerate(combos):
        c = apply_overrides(base, list(zip(keys, combo)))
        label = ",".join(f"{k.split('.')[1]}={_fmt(v)}" for k, v in zip(keys, combo))
        c.run.name = f"{base.run.name}[{label}]"
        folder = f"{i:02d}-" + re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label)
        members.append(Member(i, label, folder, c))
    return members


def member_dirs(cfg: TrainConfig, out) -> list[tuple[Member, Path]]:
    out = Path(out)
    return [(m, out / m.folder if m.folder else out) for m in expand(cfg)]


def run_sweep(cfg: TrainConfig, *, data=None, out=None, member: int | None = None, resume=False,
              epochs=None, verbose=None) -> list:
    """Run every member (or only ``member``), then draw the comparison figure."""
    from phasenet.training.run import train

    out = Path(out or Path("runs") / cfg.run.name)
    pairs = member_dirs(cfg, out)
    if member is not None:
        if not 0 <= member < len(pairs):
            raise ConfigError(f"--member {member}: this sweep has members 0..{len(pairs) - 1}")
        pairs = [pairs[member]]
    results = []
    for m, folder in pairs:
        if cfg.sweep:
            print(f"[sweep] member {m.index}/{len(member_dirs(cfg, out)) - 1}: {m.label} -> {folder}",
                  flush=True)
        results.append(train(m.config, data=data, out=folder, resume=resume, epochs=epochs,
                             verbose=verbose))
        import keras

        keras.backend.clear_session()
    if cfg.sweep:
        compare(cfg, out)
    return results


def compare(cfg: TrainConfig, out) -> Path | None:
    """Comparison figure(s) of the members that have a history; None if none has."""
    from phasenet.training import plots

    out = Path(out)
    histories, errors = {}, {}
    for m, folder in member_dirs(cfg, out):
        if (folder / "history.csv").is_file():
            histories[m.label] = folder / "history.csv"
        if (folder / "reflection_errors.csv").is_file():
            import pandas as pd

            errors[m.label] = pd.read_csv(folder / "reflection_errors.csv")
    if not histories:
        return None
    png = plots.plot_sweep(histories, out / "sweep_comparison.png", title=cfg.run.name)
    if errors:
        plots.plot_reflection_errors(errors, out / "reflection_errors.png")
    print(f"[sweep] comparison of {len(histories)} member(s): {png}", flush=True)
    return png
