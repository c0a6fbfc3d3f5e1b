"""cctbx import order: through phasenet the segfault cannot happen."""

import phasenet  # noqa: F401  (first: cctbx import order)

import subprocess
import sys

import pytest


def _run(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("first", ["gemmi", "scipy.linalg", "matplotlib.pyplot"])
def test_conflicting_module_first_raises_clear_import_error(first):
    if first != "gemmi":
        pytest.importorskip(first.split(".")[0])
    r = _run(f"import {first}\nimport phasenet\n")
    assert r.returncode == 1, f"returncode {r.returncode} (-11 is a segfault): {r.stderr[-2000:]}"
    assert "ImportError" in r.stderr
    assert "phasenet must be imported before" in r.stderr
    assert first in r.stderr
    assert "import phasenet" in r.stderr  # tells what to do


def test_phasenet_first_makes_everything_safe():
    r = _run("import phasenet\nimport gemmi\nimport cctbx.xray\n"
             "from cctbx import sgtbx\n"
             "print(gemmi.find_spacegroup_by_name('P 21/c').hm, sgtbx.space_group_info('P 21/c'))\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["P", "1", "21/c", "1", "P", "1", "21/c", "1"]


def test_reimport_after_cctbx_is_fine():
    # once cctbx's runtime is loaded, importing phasenet after gemmi is harmless
    r = _run("import cctbx.xray\nimport gemmi\nimport phasenet\nprint(phasenet.__version__)\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == phasenet.__version__


def test_import_phasenet_is_light_and_lazy_exports_resolve():
    """``import phasenet`` loads neither numba nor Keras/TensorFlow/JAX; the lazily
    exported names resolve to the functions of their modules."""
    r = _run("import sys, phasenet\n"
             "heavy = [m for m in ('numba', 'keras', 'tensorflow', 'jax') if m in sys.modules]\n"
             "assert not heavy, heavy\n"
             "import phasenet.cli\n"
             "phasenet.cli.build_parser()  # every subcommand's options: still no numba/Keras\n"
             "heavy = [m for m in ('numba', 'keras', 'tensorflow', 'jax') if m in sys.modules]\n"
             "assert not heavy, heavy\n"
             "from phasenet import synth_dataset, evaluate_dataset, merge_shards, load_predictor\n"
             "import phasenet.synth.generate, phasenet.evaluation.evaluate\n"
             "assert synth_dataset is phasenet.synth.generate.synth_dataset\n"
             "assert evaluate_dataset is phasenet.evaluation.evaluate.evaluate_dataset\n"
             "assert 'keras' not in sys.modules\n"
             "try:\n    phasenet.no_such_name\nexcept AttributeError:\n    print('ok')\n")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
