"""Say so when numba compiles (``cache=True``) kernels for the first time on a machine.

The first ``phasenet synth`` on a fresh install spends ~30-60 s compiling its kernels;
without a word it looks hung. :func:`announce_compilation` prints one line to stderr
when some kernel has no entry in numba's on-disk cache yet (later runs load it).
"""

from __future__ import annotations

import os
import sys


def is_cached(dispatcher) -> bool:
    """True if numba's on-disk cache holds an index for this ``@njit(cache=True)``
    function (its compiled versions are then loaded, not compiled). True when unsure."""
    try:
        return os.path.exists(dispatcher._cache._cache_file._index_path)
    except Exception:  # another numba version, no cache locator: say nothing
        return True


def announce_compilation(dispatchers, what: str, seconds: str, stream=None) -> bool:
    """Print "compiling WHAT once (~SECONDS); later runs load them from the cache" when
    some of ``dispatchers`` is neither compiled in this process nor cached on disk.
    Returns True if it printed."""
    todo = [d for d in dispatchers if not getattr(d, "signatures", None) and not is_cached(d)]
    if not todo:
        return False
    print(f"phasenet: compiling {what} once (~{seconds}); later runs load them from the cache",
          file=stream or sys.stderr, flush=True)
    return True
