"""The one error of ``phasenet solve``: what is wrong, with which file."""

from __future__ import annotations

#: The kinds of :class:`SolveError`, as the summary and the tests name them.
KINDS = ("unreadable", "unsupported-space-group", "too-few-reflections", "inconsistent-cell",
         "bad-option", "no-method")


class SolveError(ValueError):
    """Solving cannot go on: ``kind`` (one of :data:`KINDS`), ``path`` (the file concerned)
    and the reason. ``str()`` reads ``PATH: reason``."""

    def __init__(self, path, kind: str, reason: str):
        if kind not in KINDS:
            raise ValueError(f"unknown SolveError kind {kind!r}; known: {', '.join(KINDS)}")
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(f"{path}: {reason}")
