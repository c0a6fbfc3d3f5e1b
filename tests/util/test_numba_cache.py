"""The first-run message for numba kernels compiled with cache=True."""

import phasenet  # noqa: F401  (first: cctbx import order)

import importlib.util
import io

from phasenet.util.numba_cache import announce_compilation, is_cached


def test_announces_only_what_is_neither_compiled_nor_cached(tmp_path):
    (tmp_path / "kern.py").write_text("from numba import njit\n\n@njit(cache=True)\n"
                                      "def twice(x):\n    return 2 * x\n")
    spec = importlib.util.spec_from_file_location("kern", tmp_path / "kern.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = io.StringIO()
    assert not is_cached(mod.twice)
    assert announce_compilation([mod.twice], "the test kernels", "1 s", stream=out)
    assert "compiling the test kernels once (~1 s); later runs load them from the cache" in out.getvalue()
    assert mod.twice(3) == 6  # compiled, and written to the cache
    assert is_cached(mod.twice)
    out = io.StringIO()
    assert not announce_compilation([mod.twice], "the test kernels", "1 s", stream=out)
    assert out.getvalue() == ""
