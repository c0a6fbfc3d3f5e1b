"""The files phasenet ships besides code: training configs (``training/``), dataset recipes
(``datasets/``) and Slurm scripts (``slurm/``).

They live in the repository's top-level folders, where people read and edit them. A
wheel carries copies as ``phasenet/resources/<folder>/`` (``pyproject.toml`` maps the
folders there). :func:`resource_dir` finds the repository's folder when phasenet runs
from a checkout (editable install, or the checkout on ``PYTHONPATH``), else the
installed copy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The folders shipped with phasenet.
FOLDERS = ("training", "datasets", "slurm")


def resource_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`FOLDERS`) of this phasenet."""
    if name not in FOLDERS:
        raise ValueError(f"unknown resource folder {name!r}; phasenet ships {', '.join(FOLDERS)}")
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    installed = resources.files(__name__) / name
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    raise FileNotFoundError(f"phasenet's {name}/ folder is missing: neither {checkout / name} (a "
                            f"checkout) nor {installed} (an installed phasenet); reinstall phasenet")


def resource_path(name: str, filename: str) -> Path:
    """A file of a shipped folder, e.g. ``resource_path("training", "demo.toml")``."""
    path = resource_dir(name) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found among phasenet's {name}/ files")
    return path
