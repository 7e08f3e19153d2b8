"""Every file a user edits fails in one line: sweep YAML, profile YAML and the appendix tables a sweep's `table:`
entry expands, each broken in several ways, through the CLI (exit code 2, at most 2 lines on stderr naming the
file, no traceback); and `make` with a profile that does not name its sweeps."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hypersphere import resources
from hypersphere.__main__ import main

ROOT = Path(__file__).parents[1]
GOOD_ROW = (
    "row,contr_w,contr_tau,align_w,align_alpha,unif_w,unif_t,init,epochs,batch_size,lr,dim\n"
    "1,1,0.5,0,,0,,rand,2,128,0.06,16\n"
)
# each way to break a file: its bytes (None: the file does not exist) and what the one line must say
BROKEN_YAML = {
    "syntax error": (b'runs:\n  - {objective: "align(alpha=2)"\n', r":3:1: YAML syntax error.*line 2, column 5"),
    "bad indentation": (b"runs:\n  - {objective: 'align'}\n   epochs: 2\n", r":3:4: YAML syntax error"),
    "wrong top-level type": (b"- runs\n- defaults\n", "top level must be a mapping.*holds a list"),
    "scalar top level": (b"just some words\n", "top level must be a mapping.*holds a string"),
    "empty": (b"  \n", "is empty"),
    "binary bytes": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8", "not UTF-8 text"),
    "NUL bytes": (b"runs:\x00\x00\n", ":1:6: holds binary data"),
    "missing file": (None, "no such file|no profile"),
}
BROKEN_CSV = {
    "syntax error": (GOOD_ROW.encode() + b"2,1,0.5,0,,0,,rand,2,128,0.06,16,extra,cells\n", r":3: not a CSV table"),
    "wrong top-level type": (b"runs:\n  - {objective: align}\n", "lacks the columns"),
    "non-numeric cell": (GOOD_ROW.replace("128", "many").encode(), ":2: column batch_size must hold numbers"),
    "empty": (b"\n", "is empty"),
    "binary bytes": (b"\xff\xfe\x00r\x00o\x00w", "not UTF-8 text"),
    "missing file": (None, "no reference file"),
}


def _write(path: Path, content: bytes | None) -> Path:
    if content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return path


def _assert_one_line(capsys, code: int, name: str, pattern: str) -> None:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert name in err, err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("way", BROKEN_YAML)
def test_a_broken_sweep_file_fails_in_one_line(tmp_path, capsys, way):
    content, pattern = BROKEN_YAML[way]
    path = _write(tmp_path / "mysweep.yaml", content)
    _assert_one_line(capsys, main(["sweep", str(path), "--profile", "smoke", "--dry-run"]), "mysweep.yaml", pattern)


@pytest.mark.parametrize("way", BROKEN_YAML)
def test_a_broken_profile_fails_in_one_line(tmp_path, capsys, monkeypatch, way):
    content, pattern = BROKEN_YAML[way]
    monkeypatch.setattr(resources, "configs", lambda: tmp_path)
    _write(tmp_path / "sweeps" / "mine" / "s.yaml", b"runs:\n  - {objective: 'align'}\n")
    (tmp_path / "profiles").mkdir()
    _write(tmp_path / "profiles" / "mine.yaml", content)
    _assert_one_line(capsys, main(["sweep", "s", "--profile", "mine", "--dry-run"]), "mine", pattern)


@pytest.mark.parametrize("way", BROKEN_CSV)
def test_a_broken_appendix_table_fails_in_one_line(tmp_path, capsys, monkeypatch, way):
    content, pattern = BROKEN_CSV[way]
    real = resources._folder
    monkeypatch.setattr(resources, "_folder", lambda a, b: tmp_path / "ref" if a == "reference" else real(a, b))
    (tmp_path / "ref").mkdir()
    _write(tmp_path / "ref" / "mytable.csv", content)
    sweep = _write(
        tmp_path / "s.yaml", b"defaults: {dataset: digits}\nruns:\n  - {table: data/reference/mytable.csv}\n"
    )
    _assert_one_line(capsys, main(["sweep", str(sweep), "--profile", "smoke", "--dry-run"]), "mytable.csv", pattern)


def test_the_good_table_row_expands_into_a_run(tmp_path, capsys, monkeypatch):
    """The broken tables above differ from this one only in what breaks them."""
    real = resources._folder
    monkeypatch.setattr(resources, "_folder", lambda a, b: tmp_path if a == "reference" else real(a, b))
    _write(tmp_path / "mytable.csv", GOOD_ROW.encode())
    sweep = _write(
        tmp_path / "s.yaml", b"defaults: {dataset: digits}\nruns:\n  - {table: data/reference/mytable.csv}\n"
    )
    assert main(["sweep", str(sweep), "--profile", "smoke", "--dry-run", "--set", f"runs_dir={tmp_path}"]) == 0
    assert "contrastive(tau=0.5)" in capsys.readouterr().out


def test_the_issue_example_exits_2_with_one_line_from_a_real_process(tmp_path):
    path = _write(tmp_path / "mysweep.yaml", b'runs:\n  - {objective: "align(alpha=2)"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "hypersphere", "sweep", str(path), "--profile", "smoke"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {path}:3:1: YAML syntax error"), proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    "profile, message",
    [
        ("description: no sweeps line\nworkers: 2\n", "has no line `sweeps: [a, b]`"),
        ("sweeps:\n  - cloud\n", "has no line `sweeps: [a, b]`"),  # a multi-line list would run zero sweeps
        (None, "does not exist"),
    ],
)
def test_make_stops_in_one_line_on_a_profile_without_its_sweeps_line(tmp_path, profile, message):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    _write(tmp_path / "configs" / "profiles" / "mine.yaml", None if profile is None else profile.encode())
    proc = subprocess.run(["make", "-C", str(tmp_path), "PROFILE=mine"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0] and "mine.yaml" in lines[0], proc.stderr
    assert not (tmp_path / ".venv").exists()  # stopped before any work
