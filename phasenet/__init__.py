"""phasenet: machine learning for the crystallographic phase problem.

Import order matters for cctbx (see :mod:`phasenet._cctbx_first`); importing
phasenet first makes gemmi, scipy and matplotlib safe to import afterwards.
"""

from phasenet import _cctbx_first  # noqa: F401  (must stay the first import)

__version__ = "0.1.0"

from phasenet.reflections import canonical_hkl  # noqa: E402
from phasenet.build import BuildOptions, BuildSummary, build_dataset  # noqa: E402
from phasenet.dataset import dataset_info, read_structures_table  # noqa: E402

__all__ = [
    "__version__",
    "canonical_hkl",
    "BuildOptions",
    "BuildSummary",
    "build_dataset",
    "dataset_info",
    "read_structures_table",
]
