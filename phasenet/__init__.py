"""phasenet: machine learning for the crystallographic phase problem.

**Import order.** The cctbx-base wheel ships its own libstdc++. If gemmi, scipy.linalg or
matplotlib.pyplot load the system libstdc++ first, importing cctbx afterwards segfaults
the interpreter. Every ``phasenet.*`` module is imported through this package, so the
guard below runs before any of them: either cctbx's runtime is loaded first (the normal
case, ~40 ms), or an offending module was already imported by the caller and a clear
``ImportError`` is raised instead of a crash later. This is the project's only guard.
"""

import sys as _sys

#: Modules that, imported before cctbx, make a later cctbx import segfault.
CONFLICTING_MODULES = ("gemmi", "scipy.linalg", "matplotlib.pyplot")


def _ensure_cctbx_runtime_first() -> None:
    if "boost_adaptbx.boost.python" in _sys.modules:
        return
    early = [name for name in CONFLICTING_MODULES if name in _sys.modules]
    if early:
        raise ImportError(
            "phasenet must be imported before "
            + ", ".join(early)
            + ": cctbx ships its own C++ runtime and importing it after "
            "gemmi/scipy.linalg/matplotlib.pyplot crashes Python (segfault). "
            "Put `import phasenet` first in your script or notebook."
        )
    import boost_adaptbx.boost.python  # noqa: F401  (loads cctbx's libstdc++)


_ensure_cctbx_runtime_first()

from phasenet.version import __version__

from phasenet.reflections import canonical_hkl
from phasenet.pipeline.options import BuildOptions
from phasenet.pipeline.build import BuildSummary, build_dataset
from phasenet.io.hdf5 import dataset_info, read_structures_table

# Loaded on first use, so that ``import phasenet`` stays light (numba, Keras, smtbx).
_LAZY = {
    "SynthOptions": "phasenet.synth.options",
    "synth_dataset": "phasenet.synth.generate",
    "generate_structure": "phasenet.synth.generate",
    "merge_shards": "phasenet.pipeline.shards",
    "EvaluateOptions": "phasenet.evaluation.options",
    "evaluate_dataset": "phasenet.evaluation.evaluate",
    "score_phases": "phasenet.evaluation.metrics",
    "patterson_map": "phasenet.baselines.patterson",
    "charge_flip": "phasenet.baselines.charge_flipping",
    "load_predictor": "phasenet.training.predict",
    "predict": "phasenet.baselines.network",
    "NetworkOptions": "phasenet.baselines.network",
    "solve": "phasenet.solving.solver",
    "SolveError": "phasenet.solving.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phasenet' has no attribute {name!r}")


__all__ = [
    "__version__",
    "canonical_hkl",
    "BuildOptions",
    "BuildSummary",
    "build_dataset",
    "dataset_info",
    "read_structures_table",
    *_LAZY,
]
