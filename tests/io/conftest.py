"""Fixtures of the reader tests: the project's own small files in tests/data.

(Test modules cannot ``from conftest import`` anything once a folder has its own
conftest.py: both would be the module ``conftest``. Everything here is a fixture.)
"""

import phasenet  # noqa: F401  (first: cctbx import order)

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def test_data():
    """test_data("name.cif") -> Path of a file in tests/data (fails clearly if missing)."""

    def get(name: str) -> Path:
        p = DATA_DIR / name
        if not p.is_file():
            pytest.fail(f"{p} missing: run tests/data/make_test_data.py")
        return p

    return get
