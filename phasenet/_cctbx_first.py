"""Load cctbx's C++ runtime before anything else can.

The cctbx-base wheel ships its own libstdc++. If gemmi, scipy.linalg or
matplotlib.pyplot load the system libstdc++ first, importing cctbx afterwards
segfaults the interpreter (BRIEF §6). Importing ``phasenet`` imports this module
first, so through phasenet the crash cannot happen: either cctbx's runtime is
loaded first (the normal case, ~40 ms), or an offending module was already
imported by the caller and we raise a clear ImportError instead of crashing later.
"""

from __future__ import annotations

import sys

#: Modules that, imported before cctbx, make a later cctbx import segfault.
CONFLICTING_MODULES = ("gemmi", "scipy.linalg", "matplotlib.pyplot")


def ensure_cctbx_runtime_first() -> None:
    if "boost_adaptbx.boost.python" in sys.modules:
        return
    early = [name for name in CONFLICTING_MODULES if name in sys.modules]
    if early:
        raise ImportError(
            "phasenet must be imported before "
            + ", ".join(early)
            + ": cctbx ships its own C++ runtime and importing it after "
            "gemmi/scipy.linalg/matplotlib.pyplot crashes Python (segfault). "
            "Put `import phasenet` first in your script or notebook."
        )
    import boost_adaptbx.boost.python  # noqa: F401  (loads cctbx's libstdc++)


ensure_cctbx_runtime_first()
