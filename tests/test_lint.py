"""The linter of `make lint`: flake8 (settings in .flake8) on src, tests and bench."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_flake8_finds_nothing():
    """`python -m flake8 src tests bench` exits 0: no line over 120 characters, unused name or style error."""
    pytest.importorskip("flake8")
    proc = subprocess.run([sys.executable, "-m", "flake8", "src", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"flake8 src tests bench:\n{proc.stdout}{proc.stderr}"
