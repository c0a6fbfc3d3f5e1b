"""Shared fixtures: the real CIF corpus next to the repository, and its manifest.

``import phasenet`` must stay the very first import: cctbx (loaded by phasenet)
segfaults if gemmi, scipy.linalg or matplotlib.pyplot were imported before it.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

from pathlib import Path

import pytest

#: ../shared/data/real relative to the repository root; never copied into the repo.
REAL_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: the project's own small test files (tests/data, made by tests/data/make_test_data.py)
TEST_DATA_DIR = REPO_ROOT / "tests" / "data"


#: The fixtures that read ../shared/data/real. A test that uses any of them (directly or
#: through another fixture) gets the ``real_data`` marker automatically, so that
#: ``pytest -m "not real_data"`` is exactly the suite a clone without ../shared runs.
REAL_DATA_FIXTURES = frozenset({"real_data_dir", "real_cif_dir", "manifest", "real_cif", "structure_of"})


def uses_real_data(item) -> bool:
    """Whether a collected test needs a real-data fixture (its fixture closure names one)."""
    return bool(REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection
def pytest_collection_modifyitems(config, items):
    for item in items:
        if uses_real_data(item) and item.get_closest_marker("real_data") is None:
            item.add_marker(pytest.mark.real_data)


def real_data_available() -> bool:
    return (REAL_DATA_DIR / "manifest.csv").is_file() and (REAL_DATA_DIR / "cif").is_dir()


def _skip_without_real_data():
    if not real_data_available():
        pytest.skip(f"../shared/data/real not found: {REAL_DATA_DIR} (with manifest.csv and cif/) "
                    "is needed for tests on real CIF files")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real-data folder (skips the test when it is absent)."""
    _skip_without_real_data()
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def real_cif_dir(real_data_dir) -> Path:
    return real_data_dir / "cif"


@pytest.fixture(scope="session")
def manifest(real_data_dir):
    """manifest.csv as a DataFrame, with ``path`` (absolute) and ``notes`` ('' if empty)."""
    import pandas as pd

    m = pd.read_csv(real_data_dir / "manifest.csv")
    m["notes"] = m["notes"].fillna("")
    m["path"] = [str(real_data_dir / f) for f in m["file"]]
    return m


@pytest.fixture(scope="session")
def real_cif(real_cif_dir):
    """real_cif("name.cif") -> Path, failing clearly if the corpus lacks that file."""

    def get(name: str) -> Path:
        p = real_cif_dir / name
        if not p.is_file():
            pytest.fail(f"expected real file {name} in {real_cif_dir}")
        return p

    return get


def first_structure(path):
    """The first Structure read from ``path`` (fails the test if there is none)."""
    from phasenet.io.cif import read_cif
    from phasenet.structure import Structure

    items = read_cif(path)
    for item in items:
        if isinstance(item, Structure):
            return item
    pytest.fail(f"{path}: no structure read: {[str(i) for i in items]}")


@pytest.fixture(scope="session")
def structure_of(real_cif):
    """structure_of("name.cif") -> the file's first Structure."""
    return lambda name: first_structure(real_cif(name))


@pytest.fixture(scope="session")
def test_data():
    """test_data("name.cif") -> Path of a file in tests/data (fails clearly if missing)."""

    def get(name: str) -> Path:
        p = TEST_DATA_DIR / name
        if not p.is_file():
            pytest.fail(f"{p} missing: run tests/data/make_test_data.py")
        return p

    return get
