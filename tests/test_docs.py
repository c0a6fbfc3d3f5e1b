"""The examples in the documentation run and give what they say."""

import phasenet  # noqa: F401  (first: cctbx import order)

import doctest
import re

import pytest

import phasenet.reflections
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"


def _python_blocks():
    if not README.is_file():
        return []
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_module_doctests():
    for module in (phasenet.reflections,):
        result = doctest.testmod(module, verbose=False)
        assert result.attempted > 0, f"{module.__name__} has no examples"
        assert result.failed == 0, f"{result.failed} examples of {module.__name__} failed"


def test_readme_doctests(tmp_path, monkeypatch):
    if not README.is_file():
        pytest.skip("no README.md")
    blocks = [b for b in _python_blocks() if ">>>" in b]
    if not blocks:
        pytest.skip("README.md has no >>> examples")
    monkeypatch.chdir(tmp_path)
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {}
    for i, block in enumerate(blocks):
        test = parser.get_doctest(block, globs, f"README.md[python block {i}]", str(README), 0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} README examples failed (see the output above)"


def test_readme_code_blocks_compile():
    """Blocks without >>> (reading a dataset) at least compile."""
    for i, block in enumerate(_python_blocks()):
        if ">>>" in block:
            continue
        compile(block, f"README.md[python block {i}]", "exec")
