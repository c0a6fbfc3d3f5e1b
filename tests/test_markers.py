"""The ``real_data`` marker is on exactly the tests that use a real-data fixture."""

import phasenet  # noqa: F401  (first: cctbx import order)

import subprocess
import sys

from tests.conftest import REAL_DATA_FIXTURES, REPO_ROOT, uses_real_data


def test_real_data_marker_equals_the_tests_using_real_data_fixtures(request):
    """Over every test collected in this session: marked ⇔ uses real_data_dir, real_cif_dir,
    manifest, real_cif or structure_of (or a fixture built on them). A hand-written marker
    on a test that needs no real data would hide it from a clone without ../shared."""
    items = request.session.items
    assert request.node in items
    wrong = [(item.nodeid, "marked" if item.get_closest_marker("real_data") else "not marked")
             for item in items
             if (item.get_closest_marker("real_data") is not None) != uses_real_data(item)]
    assert not wrong, f"real_data marker disagrees with the fixtures {sorted(REAL_DATA_FIXTURES)}: {wrong}"


def test_not_real_data_selects_the_tests_without_real_data(tmp_path):
    """``-m "not real_data"`` on a file mixing both kinds keeps exactly the one without,
    including a test whose real-data need comes through a fixture of its own module."""
    test = tmp_path / "test_mixed.py"
    test.write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def built(real_cif_dir):\n"
        "    return real_cif_dir\n"
        "def test_direct(real_cif):\n    pass\n"
        "def test_indirect(built):\n    pass\n"
        "def test_plain(tmp_path):\n    pass\n")
    conftest = tmp_path / "conftest.py"
    conftest.write_text((REPO_ROOT / "tests" / "conftest.py").read_text())

    def collected(expr):
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                            "-m", expr, str(test)], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
        return {line.split("::")[-1] for line in r.stdout.splitlines() if "::" in line}

    assert collected("not real_data") == {"test_plain"}
    assert collected("real_data") == {"test_direct", "test_indirect"}
