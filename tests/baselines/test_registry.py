"""The registry of phasing methods (phasenet.baselines.registry) and its documentation page,
whose example (a toy method) runs here through evaluate_dataset and the command line."""

import phasenet  # noqa: F401  (first: cctbx import order)

import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from phasenet.baselines import (BATCHED, FORKED, NEEDS, NotApplicable, PhasingMethod, UnknownMethod,
                                check_method_name, get_method, method_names, problem_for, register_method,
                                unregister_method)
from phasenet.cli import main
from phasenet.evaluation.evaluate import EvaluateOptions, EvaluationError, evaluate_dataset, run_task, task_seed
from phasenet.evaluation.problem import DatasetRows, PhasingProblem
from phasenet.reflection_data import ReflectionData
from phasenet.structure import AtomicModel

DOC = REPO_ROOT / "docs" / "adding-a-phasing-method.md"
PLAIN = ("true", "random", "patterson", "charge-flipping", "sg-flipping", "net")
FAMILIES = ("model:RUN_DIR", "net:RUN_DIR")
BUILT_IN = PLAIN + FAMILIES
LISTED = "registered methods: " + ", ".join(BUILT_IN)
FILES = ["cod-tools_2231779.cif",  # P-1, I
         "NoSpherA2_epoxide.cif",  # P2₁/n, C2H4O
         "cod-tools_2219444.cif"]  # Pca2₁: no inversion centre


def doc_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def registered():
    """Names registered by a test, forgotten afterwards (the registry is per process)."""
    names = []
    yield names
    for name in names:
        if name in method_names():
            unregister_method(name)


@pytest.mark.real_data
def test_documented_example_runs(real_cif_dir, tmp_path, monkeypatch, capsys, registered):
    """The page's python blocks register a toy method and evaluate it; its command lines run."""
    blocks = doc_blocks("python")
    files = [b for b in blocks if b.startswith("# file: ")]
    code = [b for b in blocks if not b.startswith("# file: ")]
    assert files and code, f"{DOC}: expected a '# file: NAME.py' block and code using it"
    for block in files:
        name = block.splitlines()[0].removeprefix("# file: ").strip()
        (tmp_path / name).write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    phasenet.build_dataset([real_cif_dir / f for f in FILES], tmp_path / "data.h5", phasenet.BuildOptions(workers=1),
                           progress=False)
    registered.append("my-method")
    namespace = {}
    for i, block in enumerate(code):
        exec(compile(block, f"{DOC.name}[python block {i}]", "exec"), namespace)
    assert method_names() == PLAIN + ("my-method",) + FAMILIES

    rows = namespace["result"].rows
    mine = rows[rows.method == "my-method"].set_index(["id", "d_min"])
    assert len(mine) == 3 * 2 and len(rows[rows.method == "random"]) == 3 * 2
    acentric = mine[mine.index.get_level_values("id").str.contains("2219444")]
    assert (acentric.status == "not-applicable").all()
    assert acentric.reason.str.contains("phases are not signs").all()
    ok = mine[mine.status == "ok"]
    assert len(ok) == 4 and ok.centric_origin.all()
    assert ok.map_cc.between(-1, 0.5).all() and not ok.solved.any()  # random signs solve nothing
    assert ok.sign_accuracy.between(0.2, 0.8).all()
    # the method got the task's seed: the same row again, phased in this process
    with DatasetRows(tmp_path / "data.h5") as src:
        for idx, d in ((0, 1.0), (2, 2.0)):
            problem = src.problem(idx)
            row = run_task(problem, "my-method", d, task_seed(0, idx, "my-method", d), EvaluateOptions())
            assert row["status"] == "ok"
            assert row["phase_error"] == pytest.approx(mine.loc[(problem.id, d), "phase_error"], abs=1e-9)

    capsys.readouterr()
    commands = [line for b in doc_blocks("bash") for line in b.splitlines() if line.startswith("phasenet evaluate")]
    assert commands, f"{DOC}: no 'phasenet evaluate' command"
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line
    import pandas as pd

    cli = pd.read_csv(tmp_path / "report-cli" / "evaluation.csv")
    assert set(cli.method) == {"my-method", "random"} and len(cli) == 3 * 2

    documented = re.search(r"^\s*(phasenet evaluate: error: .*)$", DOC.read_text(), flags=re.M).group(1)
    assert main(["evaluate", "data.h5", "-o", "r", "--method", "my-methd", "--quiet"]) == 2
    assert documented in capsys.readouterr().err


@pytest.mark.real_data
def test_method_that_cannot_load_is_an_evaluation_error(real_cif_dir, tmp_path, registered):
    h5 = tmp_path / "one.h5"
    phasenet.build_dataset([real_cif_dir / FILES[0]], h5, phasenet.BuildOptions(workers=1), progress=False)
    registered.append("broken")
    register_method("broken", "phasenet_no_such_module:Method")
    options = EvaluateOptions(methods=("random", "broken"), d_min=(2.0,))  # the name alone is fine
    with pytest.raises(EvaluationError, match="'broken': cannot load phasenet_no_such_module:Method"):
        evaluate_dataset(h5, tmp_path / "r", options, progress=False)


def test_unknown_names_rejected_with_the_list():
    assert method_names() == BUILT_IN
    for bad in ("magic", "Random", "model", "charge_flipping", "true:x"):
        with pytest.raises(UnknownMethod, match=re.escape(f"Unknown phasing method {bad!r}; {LISTED}")):
            get_method(bad)
        with pytest.raises(UnknownMethod, match="registered methods"):
            check_method_name(bad)
        with pytest.raises(EvaluationError, match=re.escape(f"Unknown phasing method {bad!r}; {LISTED}")):
            EvaluateOptions(methods=("true", bad))
    with pytest.raises(UnknownMethod, match=re.escape("'model:' needs a RUN_DIR: model:RUN_DIR")):
        check_method_name("model:")
    with pytest.raises(UnknownMethod, match="registered methods"):
        unregister_method("magic")


def test_registration_errors(registered):
    with pytest.raises(ValueError, match="registered already"):
        register_method("random", "phasenet.baselines.random:RandomPhases")
    for bad in ("", "my method", "my:method"):
        with pytest.raises(ValueError, match="name must be"):
            register_method(bad, "phasenet.baselines.random:RandomPhases")
    for bad in ("phasenet.baselines.random", "a:b:c", ":RandomPhases", 3):
        with pytest.raises(ValueError, match="factory must be"):
            register_method("toy", bad)
    assert "toy" not in method_names()

    class Misnamed(PhasingMethod):
        name = "something-else"

    registered.append("toy")
    register_method("toy", Misnamed)
    with pytest.raises(ValueError, match="registered as 'toy' calls itself 'something-else'"):
        get_method("toy")
    register_method("toy", "phasenet.baselines.random:random_phase", replace=True)
    with pytest.raises(ImportError, match="'toy': cannot load phasenet.baselines.random:random_phase"):
        get_method("toy")


def test_listing_names_imports_no_method_module():
    """Listing and checking names (what the command line does) loads none of the methods."""
    code = ("import json, sys\n"
            "import phasenet.baselines as b\n"
            "names = b.method_names()\n"
            "for n in names: b.check_method_name(n.replace('RUN_DIR', 'runs/x'))\n"
            "from phasenet.evaluation.evaluate import EvaluateOptions\n"
            "EvaluateOptions(methods=('true', 'charge-flipping', 'model:runs/x'))\n"
            "print(json.dumps({'names': names, 'modules': sorted(sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(result["names"]) == BUILT_IN
    modules = set(result["modules"])
    heavy = sorted(m for m in modules if m.split(".")[0] in ("smtbx", "keras", "tensorflow", "jax"))
    assert not heavy, f"listing methods imported {heavy}"
    # the evaluation module imports charge_flipping (for its options), never the model family
    assert "phasenet.baselines.model" not in modules and "phasenet.training.predict" not in modules

    code = "import sys, phasenet.baselines as b; b.method_names(); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    loaded = set(eval(out.stdout))  # noqa: S307  (our own child's output)
    methods = {f"phasenet.baselines.{m}" for m in ("true", "random", "patterson", "charge_flipping", "model")}
    assert not loaded & methods and "phasenet.baselines.registry" in loaded


def test_every_registered_name_resolves():
    for listed in method_names():
        name = listed.replace("RUN_DIR", "runs/some-run")
        method = get_method(name)
        assert method.name == name and method.execution in (FORKED, BATCHED)
        assert set(method.needs) <= set(NEEDS)
        assert callable(method.phases if method.execution == FORKED else method.phases_batch)
    assert get_method("model:runs/a").run_dir == "runs/a"


def _problem():
    """A small P-1 problem with two atoms (a real PhasingProblem; values are not used for scoring)."""
    atoms = AtomicModel(label=np.array(["I1", "C1"]), element=np.array(["I", "C"]), charge=np.zeros(2, np.int8),
                        frac=np.array([[0.1, 0.2, 0.3], [0.4, 0.1, 0.2]]), occupancy=np.ones(2),
                        u_iso=np.full(2, 0.03), u_aniso=np.full((2, 6), np.nan), u_defaulted=np.zeros(2, bool))
    hkl = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    reflections = ReflectionData(hkl=hkl, cell=(5.0, 6.0, 7.0, 90.0, 90.0, 90.0), symops=("x,y,z", "-x,-y,-z"),
                                 space_group="P -1", intensity_calc=np.ones(4),
                                 phase_calc=np.array([0, np.pi, 0, np.pi]), intensity=np.ones(4, np.float32),
                                 sign=np.array([0, 1, 0, 1], np.int8))
    return PhasingProblem(id="toy", reflections=reflections, atoms=atoms)


def test_methods_see_only_what_they_need():
    p, options = _problem(), EvaluateOptions()
    seen = problem_for(get_method("random"), p, options)
    assert np.isnan(seen.phase_true).all() and seen.atoms is None and seen.intensity is None
    assert np.array_equal(seen.hkl, p.hkl) and np.array_equal(seen.amplitude, p.amplitude) and seen.centric_origin
    seen = problem_for(get_method("true"), p, options)
    assert np.array_equal(seen.phase_true, p.phase_true) and seen.atoms is None
    seen = problem_for(get_method("patterson"), p, options)  # the composition, never the positions
    assert list(seen.atoms.element) == ["I", "C"] and np.array_equal(seen.atoms.occupancy, p.atoms.occupancy)
    assert np.isnan(seen.atoms.frac).all() and np.isnan(seen.atoms.u_iso).all()
    assert np.isnan(seen.phase_true).all() and np.isfinite(p.atoms.frac).all()  # the original is untouched
    from dataclasses import replace

    with pytest.raises(NotApplicable, match="no composition"):
        problem_for(get_method("patterson"), replace(p, atoms=None), options)
    light = replace(p, atoms=replace(p.atoms, element=np.array(["O", "C"])))
    with pytest.raises(NotApplicable, match="heaviest element O"):
        problem_for(get_method("patterson"), light, options)
    with pytest.raises(NotApplicable, match="inversion centre"):
        problem_for(get_method("model:runs/x"), replace(p, reflections=replace(p.reflections, symops=("x,y,z",))), options)
