"""A non-editable install finds the files phasenet ships (training configs, dataset
recipes, sbatch scripts) inside the package: pyproject.toml maps the top-level folders to
``phasenet.resources.*``."""

import phasenet  # noqa: F401  (first: cctbx import order)

import os
import shutil
import subprocess
import sys

import pytest
from tests.conftest import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from phasenet.resources import FOLDERS, resource_dir, resource_path

SHIPPED = {"training": "*.toml", "datasets": "*.toml", "slurm": "*.sbatch"}


def test_pyproject_lists_every_package_and_maps_the_folders():
    setup = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.relative_to(REPO_ROOT).parent.parts)
             for p in (REPO_ROOT / "phasenet").rglob("__init__.py")}
    listed = set(setup["packages"])
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for name in FOLDERS:
        assert setup["package-dir"][f"phasenet.resources.{name}"] == name
        assert f"phasenet.resources.{name}" in listed
        assert setup["package-data"][f"phasenet.resources.{name}"]


def test_resources_in_the_checkout():
    for name in FOLDERS:
        assert resource_dir(name) == REPO_ROOT / name
    assert resource_path("training", "demo.toml") == REPO_ROOT / "training" / "demo.toml"
    with pytest.raises(FileNotFoundError, match="nope.toml: not found"):
        resource_path("datasets", "nope.toml")
    with pytest.raises(ValueError, match="unknown resource folder"):
        resource_dir("models")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """phasenet installed (not editable) into a folder, from a copy of the source (the
    build leaves build/ and *.egg-info/ behind); the dependencies are the running venv's."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.h5", "*.h5.parts")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for name in ("phasenet", *FOLDERS):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--quiet", "--target", str(target), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


def _run(target, cwd, *code_or_args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASENET_")}
    env["PYTHONPATH"] = str(target)  # only the installed copy: not the checkout
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, cwd=cwd, env=env)


def test_installed_package_carries_the_folders(installed):
    for name, pattern in SHIPPED.items():
        here = sorted(p.name for p in (REPO_ROOT / name).glob(pattern))
        there = sorted(p.name for p in (installed / "phasenet" / "resources" / name).glob(pattern))
        assert here and there == here, name
    assert (installed / "phasenet" / "resources" / "slurm" / "site.sh").is_file()
    assert (installed / "phasenet" / "resources" / "slurm" / "job.sh").is_file()


def test_non_editable_install_finds_its_files(installed, real_cif_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    code = ("import phasenet, phasenet.resources as r\n"
            "from phasenet.pipeline.demo import demo_files, demo_recipe\n"
            "from phasenet.pipeline.slurm import scripts_dir\n"
            "print(phasenet.__file__)\n"
            "for p in (*demo_files(), scripts_dir(), r.resource_dir('datasets')): print(p)\n"
            "print(demo_recipe().get('n'))\n")
    r = _run(installed, work, "-c", code)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    res = installed / "phasenet" / "resources"
    assert lines[0] == str(installed / "phasenet" / "__init__.py")
    assert lines[1:5] == [str(res / "datasets" / "demo.toml"), str(res / "training" / "demo.toml"),
                          str(res / "slurm"), str(res / "datasets")]
    assert int(lines[5]) >= 1

    # phasenet slurm build --dry-run: the sbatch scripts and a recipe by name, from the package
    cif = work / "cif"
    cif.mkdir()
    for n in ("StructureFinder_P-1.cif", "PyXtal_NaCl.cif"):
        shutil.copy2(real_cif_dir / n, cif / n)
    r = _run(installed, work, "-m", "phasenet.cli", "slurm", "build", "cif", "-o", "out.h5", "--shards", "2",
             "--recipe", "computed_709", "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    sbatch = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("sbatch ")]
    assert len(sbatch) == 2
    assert str(res / "slurm" / "build-array.sbatch") in sbatch[0]
    assert sbatch[0][-2:] == ["--recipe", str(res / "datasets" / "computed_709.toml")]
    assert str(res / "slurm" / "merge.sbatch") in sbatch[1]
    assert not (work / "out.h5.slurm.json").exists()

    r = _run(installed, work, "-m", "phasenet.cli", "demo", "--help")
    assert r.returncode == 0 and "(default 200, from datasets/demo.toml)" in " ".join(r.stdout.split())
    r = _run(installed, work, "-m", "phasenet.cli", "train", str(res / "training" / "demo.toml"),
             "--list-members")
    assert r.returncode == 0 and r.stdout.startswith("0\t"), r.stderr[-2000:]
