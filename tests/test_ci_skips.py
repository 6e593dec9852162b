"""Under CI=true a skipped test fails, unless it needs a GPU (tests/conftest.py): so the browser,
FAISS and MiniLM tests cannot silently stop running in CI."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

INNER = '''
import pytest

def test_needs_a_browser():
    pytest.skip("no browser at /usr/bin/chromium")

@pytest.mark.skipif(True, reason="needs CUDA")
def test_needs_a_gpu():
    pass

def test_runs():
    pass
'''


def run_inner(pytester, monkeypatch, ci: str | None):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER, test_module_skip="import pytest\npytest.importorskip('no_such_module_x')\n"
                        "def test_x():\n    pass\n")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")


def test_outside_ci_skips_stay_skips(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=3)


def test_under_ci_a_skip_fails_unless_it_needs_cuda(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "true")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("skipped") == 1  # the CUDA test may skip
    assert outcomes.get("failed") == 1 and outcomes.get("errors", outcomes.get("error")) == 1  # test + module
    result.stdout.fnmatch_lines(["*skipped under CI=true, where it must run*no browser*"])
    result.stdout.fnmatch_lines(["*skipped under CI=true, where it must run*no_such_module_x*"])
    assert result.ret != 0
