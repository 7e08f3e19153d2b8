"""The checks of `make lint`: ruff (settings in pyproject.toml) on src, tests and bench, as linter and as formatter."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(check):
    """`python -m ruff check src tests bench` exits 0 (no line over 120 characters, unused or undefined name or
    style error), and so does `python -m ruff format --check src tests bench` (every file as `ruff format` writes
    it: run that to fix one)."""
    pytest.importorskip("ruff")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *check, "--no-cache", "src", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"ruff {' '.join(check)} src tests bench:\n{proc.stdout}{proc.stderr}"
