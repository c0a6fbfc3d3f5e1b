"""Fixtures of the training tests: one small synthetic-style dataset shared by the files
that stream, train and evaluate on it (made once per session by ``make_dataset``)."""

import phasenet  # noqa: F401  (first: cctbx import order)

import pytest

from tests.training_helpers import make_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """60 random structures (cctbx, P-1 and P2₁/c), the 709 reflections (r2 < 50),
    max-normalised, about 1/4 test."""
    return make_dataset(tmp_path_factory.getbasetemp(), n=60)
