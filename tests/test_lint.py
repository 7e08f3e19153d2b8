"""The linter of `make lint`: ruff (settings in pyproject.toml) on src, tests and bench."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    """`python -m ruff check src tests bench` exits 0: no line over 120 characters, unused or undefined name or
    style error."""
    pytest.importorskip("ruff")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check src tests bench:\n{proc.stdout}{proc.stderr}"
