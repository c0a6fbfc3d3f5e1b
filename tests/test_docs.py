"""The examples in the documentation run and give what they say.

Every page of documentation (README.md and docs/**/*.md) is checked:

- ``>>>`` examples in ```python blocks are doctests (the blocks of one page share names);
- other ```python blocks run as scripts, each in a fresh interpreter, in a scratch
  folder laid out like the repository root (``../shared/data/real`` and ``training/``
  resolve there), so an example that needs a dataset makes its own;
- every ``phasenet ...`` command line in a ```sh or ```console block is parsed by the
  real argument parser (an option that does not exist fails), and the repository
  files it names (``training/*.toml``, ``slurm/*``) exist;
- the README's tour runs, command by command, on a small input;
- relative links point at files (and headings) that exist.
"""

import phasenet  # noqa: F401  (first: cctbx import order)

import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import phasenet.reflections
from tests.conftest import REAL_DATA_DIR, REPO_ROOT, real_data_available

README = REPO_ROOT / "README.md"
PAGES = [README] + sorted((REPO_ROOT / "docs").rglob("*.md"))
#: Pages another part of issue 11 writes; links to them may point ahead until it lands.
PAGES_WRITTEN_ELSEWHERE: set[str] = set()
#: Pages whose python blocks build on each other (a module written by one block, used by the
#: next): a test of their own runs them together, in order.
PAGES_RUN_ELSEWHERE = {"docs/adding-a-phasing-method.md": "tests/baselines/test_registry.py"}
#: Images shown in the README stay small (the repository carries them).
MAX_IMAGE_BYTES = 100_000
#: What the tour test shrinks, so that the README's tour runs in well under a minute.
TOUR_SMALLER = {"-n 200": "-n 24", "--limit 12": "--limit 2"}

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def page_id(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def code_blocks(path: Path, *langs: str) -> list[tuple[int, str]]:
    """(line number, text) of the fenced blocks of ``path`` in one of ``langs``."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) in langs]


def section(path: Path, heading: str) -> str:
    """The text of one ``## heading`` section of a page."""
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def command_lines(block: str, lang: str) -> list[str]:
    """The ``phasenet`` command lines of a shell block: continuations joined, comments cut;
    in a console block only the lines after a ``$ `` prompt (the rest is output)."""
    lines, current = [], None
    for line in (ln.rstrip() for ln in block.splitlines()):
        if current is None:
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            current = ""
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = None
    lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in lines]  # comments
    return [line for line in lines if line.startswith("phasenet ")]


def shell_lines(block: str) -> list[str]:
    """Every non-comment line of a shell block (to check the repository files they name)."""
    return [re.sub(r"(^|\s)#.*$", "", ln).strip() for ln in block.splitlines()]


# --- Python examples -------------------------------------------------------------------


def test_module_doctests():
    for module in (phasenet.reflections,):
        result = doctest.testmod(module, verbose=False)
        assert result.attempted > 0, f"{module.__name__} has no examples"
        assert result.failed == 0, f"{result.failed} examples of {module.__name__} failed"


DOCTEST_PAGES = [p for p in PAGES if any(">>>" in b for _, b in code_blocks(p, "python"))]
SCRIPT_BLOCKS = [(p, line, b) for p in PAGES for line, b in code_blocks(p, "python")
                 if ">>>" not in b and page_id(p) not in PAGES_RUN_ELSEWHERE]


def test_pages_run_elsewhere_are_run_there():
    for page, test in PAGES_RUN_ELSEWHERE.items():
        name = page.rsplit("/", 1)[1]
        assert name in (REPO_ROOT / test).read_text(), f"{test} does not run {page}"


def test_the_docs_have_examples():
    """The collection below is not empty by accident (a renamed fence, a moved page)."""
    assert README in DOCTEST_PAGES
    assert len(SCRIPT_BLOCKS) >= 3
    assert sum(len(code_blocks(p, "sh", "console")) for p in PAGES) >= 15


@pytest.mark.parametrize("page", DOCTEST_PAGES, ids=page_id)
def test_doctest_examples(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {}
    for line, block in code_blocks(page, "python"):
        if ">>>" in block:
            name = f"{page_id(page)}:{line}"
            runner.run(parser.get_doctest(block, globs, name, str(page), line - 1))
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} examples of {page_id(page)} failed (see the output above)"


def repository_like(tmp_path: Path) -> Path:
    """A scratch folder ``work/`` where ``../shared/data/real`` and ``training/`` resolve
    as they do from the repository root."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "real").symlink_to(REAL_DATA_DIR)
    (work / "training").symlink_to(REPO_ROOT / "training")
    return work


def run_phasenet_process(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("page,line,block", SCRIPT_BLOCKS,
                         ids=[f"{page_id(p)}:{line}" for p, line, _ in SCRIPT_BLOCKS])
def test_python_examples_run(page, line, block, tmp_path):
    if "../shared/data/real" in block and not real_data_available():
        pytest.skip(f"the example needs the real CIF corpus at {REAL_DATA_DIR}")
    work = repository_like(tmp_path)
    (work / "example.py").write_text(block)
    done = run_phasenet_process(["example.py"], work)
    assert done.returncode == 0, (f"the example at {page_id(page)}:{line} failed:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


# --- shell examples --------------------------------------------------------------------


SHELL_COMMANDS = [(p, line, cmd) for p in PAGES for line, b in code_blocks(p, "sh")
                  for cmd in command_lines(b, "sh")]
SHELL_COMMANDS += [(p, line, cmd) for p in PAGES for line, b in code_blocks(p, "console")
                   for cmd in command_lines(b, "console")]


def test_command_lines_were_found():
    commands = {cmd.split()[1] for _, _, cmd in SHELL_COMMANDS}
    assert commands >= {"build", "synth", "info", "train", "evaluate", "merge", "slurm", "demo"}
    for page in sorted((REPO_ROOT / "docs" / "commands").glob("*.md")):
        shown = [cmd for p, _, cmd in SHELL_COMMANDS if p == page and cmd.split()[1] == page.stem]
        assert shown, f"{page_id(page)} shows no `phasenet {page.stem}` command line"


@pytest.mark.parametrize("page,line,command", SHELL_COMMANDS,
                         ids=[f"{page_id(p)}:{line}:{'-'.join(c.split()[:2])}" for p, line, c in SHELL_COMMANDS])
def test_command_lines_parse(page, line, command, capsys):
    from phasenet.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help / --version
            pytest.fail(f"{page_id(page)}:{line}: `{command}` is refused by the parser:\n"
                        f"{capsys.readouterr().err}")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_shell_examples_name_existing_files(page):
    """``training/x.toml`` and ``slurm/x.sbatch`` in an example are files of the repository."""
    missing = []
    for line, block in code_blocks(page, "sh", "console"):
        for text in shell_lines(block):
            for name in re.findall(r"(?<![\w/.-])((?:training|slurm)/[\w.-]+\.(?:toml|sbatch|sh))", text):
                if not (REPO_ROOT / name).is_file():
                    missing.append(f"{page_id(page)}:{line}: {name}")
    assert not missing, "examples name files that do not exist:\n" + "\n".join(missing)


# --- the README's tour, run ------------------------------------------------------------


TOUR_HEADING = "## A five-minute tour"


def tour_commands() -> list[str]:
    text = section(README, TOUR_HEADING)
    blocks = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "sh"]
    return [cmd for b in blocks for cmd in command_lines(b, "sh")]


def test_tour_goes_synth_build_info_train_evaluate():
    steps = [cmd.split()[1] for cmd in tour_commands()]
    assert steps == ["synth", "build", "info", "train", "evaluate"]
    for big, small in TOUR_SMALLER.items():
        assert any(big in cmd for cmd in tour_commands()), f"the tour no longer says {big!r}"


@pytest.mark.slow
def test_readme_tour_runs(tmp_path):
    """The tour's commands, one after the other, on 24 structures instead of 200."""
    work = repository_like(tmp_path)
    outputs = {}
    for command in tour_commands():
        for big, small in TOUR_SMALLER.items():
            command = command.replace(big, small)
        argv = shlex.split(command)[1:]
        done = run_phasenet_process(["-m", "phasenet.cli", *argv], work)
        assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs[argv[0]] = done.stdout
    tour = work / "tour"
    for name in ("synth.h5", "built.h5", "run/model.keras", "run/history.csv", "run/learning_curves.png",
                 "report/summary.md", "report/evaluation.csv", "report/phase_error_vs_dmin.png",
                 "report/config.json"):
        assert (tour / name).is_file(), f"the tour promises tour/{name}"
    assert any((tour / "cif").rglob("*.cif"))
    # `phasenet info` prints what the README shows, line for line (numbers aside: fewer structures)
    shown = next(b for _, b in code_blocks(README, "console") if "phasenet dataset, schema" in b)
    labels = [ln.split()[0] for ln in shown.splitlines()]
    printed = outputs["info"].splitlines()
    assert [ln.split()[0] for ln in printed] == labels
    assert "4630 reflections each" in outputs["info"] and "4630 reflections each" in shown
    assert "| model:tour/run |" in outputs["evaluate"]  # the trained model is on the table


def test_readme_images_exist_and_are_small():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert len(images) >= 2
    for name in images:
        path = REPO_ROOT / name
        assert path.is_file(), f"README shows {name}, which does not exist"
        assert path.stat().st_size < MAX_IMAGE_BYTES, f"{name} is {path.stat().st_size} bytes"


def test_readme_stays_a_front_door():
    text = README.read_text()
    assert len(text.encode()) <= 10_500, "README.md is the front door: reference goes in docs/"
    assert "load average" not in text.lower()


# --- links -----------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, mailto:
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if name and not path.exists():
            if path.relative_to(REPO_ROOT).as_posix() not in PAGES_WRITTEN_ELSEWHERE:
                broken.append(target)
            continue
        if anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{page_id(page)} links to what does not exist: {broken}"
