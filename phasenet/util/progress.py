"""The progress bar of every long command (build, synth, evaluate): one look, on stderr."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None = None):
    """A tqdm bar over ``total`` items on stderr; ``enabled=None`` shows it when stderr is
    a terminal. Use it as a context manager or call ``close()``."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
