"""phasenet: machine learning for the crystallographic phase problem.

Import order matters for cctbx (see :mod:`phasenet._cctbx_first`); importing
phasenet first makes gemmi, scipy and matplotlib safe to import afterwards.
"""

from phasenet import _cctbx_first  # noqa: F401  (must stay the first import)

__version__ = "0.1.0"

from phasenet.reflections import canonical_hkl  # noqa: E402
from phasenet.build import BuildOptions, BuildSummary, build_dataset  # noqa: E402
from phasenet.dataset import dataset_info, read_structures_table  # noqa: E402

# Loaded on first use, so that ``import phasenet`` stays light (numba, Keras, smtbx).
_LAZY = {
    "SynthOptions": "phasenet.synth",
    "synth_dataset": "phasenet.synth",
    "generate_structure": "phasenet.synth",
    "merge_shards": "phasenet.shards",
    "EvaluateOptions": "phasenet.evaluate",
    "evaluate_dataset": "phasenet.evaluate",
    "score_phases": "phasenet.metrics",
    "patterson_map": "phasenet.patterson",
    "charge_flip": "phasenet.charge_flipping",
    "load_predictor": "phasenet.predict",
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
