"""Figures of training runs: learning curves, sweep comparisons, autoencoder errors.

- :func:`plot_history`: one run, loss and accuracy (or MAE) against epoch, train and test
  (the study's Fig. 7-8);
- :func:`plot_sweep`: the runs of a sweep in one figure, test solid, train dashed
  (Fig. 9-19);
- :func:`reflection_errors` / :func:`plot_reflection_errors`: autoencoder error per
  reflection, reflections sorted by (h²+k²+l², h, k, l), absolute and relative, raw
  and as a 50-point moving average (Fig. 20-21).
"""

from __future__ import annotations

from pathlib import Path


import numpy as np
import pandas as pd

SMOOTH = 50


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(history: pd.DataFrame) -> list[tuple[str, str]]:
    """(column stem, axis label) of the panels for a history table."""
    panels = [("loss", "loss")]
    for stem, label in (("weighted_accuracy", "weighted accuracy"), ("accuracy", "accuracy"),
                        ("map_corr_best", "map correlation R, best origin"), ("mae", "mean abs. error")):
        if f"train_{stem}" in history or f"test_{stem}" in history:
            panels.append((stem, label))
    return panels


def plot_history(history_csv, out_png, title: str = "") -> Path:
    plt = _plt()
    h = pd.read_csv(history_csv)
    panels = _panels(h)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (stem, label) in zip(axes[0], panels):
        for split, style in (("train", "--"), ("test", "-")):
            col = f"{split}_{stem}"
            if col in h:
                ax.plot(h["epoch"], h[col], style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or Path(out_png).parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_sweep(histories: dict, out_png, title: str = "") -> Path:
    """``histories``: {member label: history DataFrame or CSV path}; one line colour per member."""
    plt = _plt()
    tables = {k: (v if isinstance(v, pd.DataFrame) else pd.read_csv(v)) for k, v in histories.items()}
    tables = {k: v for k, v in tables.items() if len(v)}
    if not tables:
        raise ValueError("no member has a history yet")
    panels = _panels(next(iter(tables.values())))[:3]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (stem, label) in zip(axes[0], panels):
        for i, (name, h) in enumerate(tables.items()):
            c = colours[i % len(colours)]
            if f"test_{stem}" in h:
                ax.plot(h["epoch"], h[f"test_{stem}"], "-", color=c, label=f"{name} test")
            if f"train_{stem}" in h:
                ax.plot(h["epoch"], h[f"train_{stem}"], "--", color=c, alpha=0.6, label=f"{name} train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(title + "  (solid: test, dashed: train)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def moving_average(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Mean over a centred window (shorter at the ends), same length as ``values``."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    n = len(v)
    lo = np.clip(np.arange(n) - window // 2, 0, n)
    hi = np.clip(lo + window, 0, n)
    lo = np.clip(hi - window, 0, n)
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def reflection_errors(model, source, window: int = SMOOTH) -> pd.DataFrame:
    """Per reflection over ``source`` (streamed): MSE, mean |error|, relative error.

    Relative error = mean |error| / mean |intensity| of that reflection. Rows are in
    the canonical order, which is already (h²+k²+l², h, k, l).
    """
    r = source.n_reflections
    se, ae, ax, n = np.zeros(r), np.zeros(r), np.zeros(r), 0
    for i in range(source.steps_per_epoch):
        x, y = source.batch(i)
        pred = np.asarray(model.predict_on_batch(x), dtype=np.float64)
        err = pred - y
        se += (err**2).sum(0)
        ae += np.abs(err).sum(0)
        ax += np.abs(y).sum(0)
        n += len(y)
    hkl = source.hkl
    df = pd.DataFrame({"h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2], "r2": (hkl**2).sum(1)})
    df["mse"] = se / max(n, 1)
    df["abs_error"] = ae / max(n, 1)
    df["mean_abs_intensity"] = ax / max(n, 1)
    df["rel_error"] = df["abs_error"] / np.where(df["mean_abs_intensity"] > 0, df["mean_abs_intensity"], np.nan)
    order = np.lexsort((df["l"], df["k"], df["h"], df["r2"]))
    df = df.iloc[order].reset_index(drop=True)
    for col in ("mse", "abs_error", "rel_error"):
        df[f"{col}_smooth{window}"] = moving_average(np.nan_to_num(df[col].to_numpy()), window)
    return df


def plot_reflection_errors(tables: dict, out_png, window: int = SMOOTH) -> Path:
    """2×2: absolute / relative error, raw / moving average; one line per table (bottleneck)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for name, df in tables.items():
        x = np.arange(len(df))
        axes[0, 0].plot(x, df["abs_error"], lw=0.5, label=name)
        axes[0, 1].plot(x, df[f"abs_error_smooth{window}"], lw=1.2, label=name)
        axes[1, 0].plot(x, df["rel_error"], lw=0.5, label=name)
        axes[1, 1].plot(x, df[f"rel_error_smooth{window}"], lw=1.2, label=name)
    axes[0, 0].set_title("absolute error, raw")
    axes[0, 1].set_title(f"absolute error, {window}-point moving average")
    axes[1, 0].set_title("relative error, raw")
    axes[1, 1].set_title(f"relative error, {window}-point moving average")
    axes[0, 0].set_ylabel("mean |I_pred − I|")
    axes[1, 0].set_ylabel("mean |I_pred − I| / mean |I|")
    for ax in axes[1]:
        ax.set_xlabel("reflection, sorted by (h²+k²+l², h, k, l)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
