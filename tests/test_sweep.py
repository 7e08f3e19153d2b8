"""Sweeps: validation, ordering, caching, the results table, kill -9 resumption, failures, Ray."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hypersphere import runs
from hypersphere.sweep import SWEEPS_DIR, load_sweep, run_sweep, status

FAST = {"dataset": "digits", "dim": 8, "epochs": 1, "batch_size": 256, "probe_mode": "cached", "probe_epochs": 3,
        "cv_folds": 0, "taps": ["output"], "device": "cpu"}


def write_sweep(tmp_path, body: str, name="s.yaml") -> Path:
    defaults = ", ".join(f"{k}: {v}" for k, v in {**FAST, "runs_dir": str(tmp_path / "runs")}.items())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(f"defaults: {{{defaults}}}\n{body}")
    return path


SMALL = """runs:
  - {init: parent, objective: "align(alpha=2) + uniform(t=2)"}
  - {id: parent, objective: "contrastive(tau=2.5)"}
  - grid: {objective: ["contrastive(tau=0.5)", "uniform(t=2)"], dim: [4, 8]}
"""


def test_grid_expansion_ids_and_parent_ordering(tmp_path):
    sweep_runs = load_sweep(write_sweep(tmp_path, SMALL))
    assert len(sweep_runs) == 6
    names = [r.config.run_dir() for r in sweep_runs]
    child = next(r for r in sweep_runs if r.parent)
    assert names.index(Path(child.parent)) < names.index(child.config.run_dir())
    assert len(set(names)) == 6


@pytest.mark.parametrize("body, message", [
    ("runs:\n  - {objectiv: 'align'}\n", "entry 1.*unknown config keys"),
    ("runs:\n  - {objective: 'align', epochs: -3}\n", "entry 1.*epochs must be"),
    ("runs:\n  - {objective: 'align'}\n  - {objective: 'unifrom(t=2)'}\n", "entry 2.*unifrom"),
    ("runs:\n  - {init: ghost, objective: 'align'}\n", "ghost.*no entry"),
    ("run:\n  - {objective: 'align'}\n", "unknown top-level keys"),
])
def test_bad_sweeps_are_reported_with_their_entry(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(write_sweep(tmp_path, body))


def test_every_shipped_sweep_file_validates():
    files = sorted(SWEEPS_DIR.glob("*/*.yaml"))
    assert {f.parent.name for f in files} >= {"smoke", "quick", "paper"}
    for f in files:
        assert load_sweep(f), f


def test_paper_cloud_reproduces_the_table_configs():
    sweep_runs = load_sweep(SWEEPS_DIR / "paper" / "cloud.yaml")
    table = pd.read_csv(Path(__file__).parents[1] / "data" / "reference" / "stl10_encoders.csv")
    assert len(sweep_runs) == len(table)
    by_row = {int(r.paper["paper_row"]): r for r in sweep_runs}
    row_194 = by_row[194].config  # square: 0.75*align(alpha=2) + uniform(t=2), batch 768, lr 0.36
    assert row_194.canonical_objective == "0.75*align(alpha=2) + uniform(t=2)"
    assert (row_194.batch_size, row_194.lr, row_194.dim, row_194.epochs) == (768, 0.36, 128, 200)
    assert Path(by_row[261].config.init).name == row_194.run_dir().name  # fine-tunes from the square
    assert by_row[1].paper["paper_val_out_linear"] == 19.31


def test_sweep_runs_once_and_caches(tmp_path):
    sweep_runs = load_sweep(write_sweep(tmp_path, SMALL))
    table = tmp_path / "results" / "s.csv"
    df = run_sweep(sweep_runs, table, progress=False)
    assert list(df["status"]) == ["done"] * 6 and len(pd.read_csv(table)) == 6
    for col in ("run", "objective", "batch_size", "dim", "init", "w_align", "val_output_linear", "align", "uniform"):
        assert col in df.columns
    stamps = {r.config.run_dir(): os.stat(r.config.run_dir() / runs.RESULT).st_mtime_ns for r in sweep_runs}
    t0 = time.perf_counter()
    again = run_sweep(load_sweep(write_sweep(tmp_path, SMALL)), table, progress=False)
    assert time.perf_counter() - t0 < 5
    assert all(os.stat(d / runs.RESULT).st_mtime_ns == s for d, s in stamps.items())
    pd.testing.assert_frame_equal(df, again)


def test_diverged_run_is_recorded_and_retried_on_request(tmp_path):
    body = "runs:\n  - {objective: 'contrastive(tau=0.5)', lr: 1.0e+12, weight_decay: 0}\n  - {objective: 'align + uniform'}\n"
    path = write_sweep(tmp_path, body)
    df = run_sweep(load_sweep(path), tmp_path / "t.csv", progress=False)
    assert list(df["status"]) == ["failed", "done"]
    assert df.loc[0, "failed_epoch"] >= 1 and "nan" in df.loc[0, "failed_reason"]
    again = run_sweep(load_sweep(path), tmp_path / "t.csv", progress=False)  # not retried by default
    assert list(again["status"]) == ["failed", "done"]
    failed_file = Path(load_sweep(path)[0].config.run_dir()) / runs.FAILED
    stamp = os.stat(failed_file).st_mtime_ns
    run_sweep(load_sweep(path), tmp_path / "t.csv", retry_failed=True, progress=False)
    assert os.stat(failed_file).st_mtime_ns != stamp


def test_unwritable_output_directory_fails_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    sweep_runs = load_sweep(write_sweep(tmp_path, "runs:\n  - {objective: align}\n"))
    with pytest.raises(OSError, match="cannot write to"):
        run_sweep(sweep_runs, blocker / "sub" / "t.csv", progress=False)


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    body = "runs:\n  - {epochs: 3, grid: {objective: ['align + uniform', 'contrastive(tau=0.5)'], dim: [4, 6, 8]}}\n"
    path = write_sweep(tmp_path, body)
    cmd = [sys.executable, "-m", "hypersphere", "sweep", str(path), "--results-dir", str(tmp_path / "res"), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep_runs = load_sweep(path)
    deadline = time.time() + 120
    while sum(status(r) == "done" for r in sweep_runs) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r.config.run_dir(): os.stat(r.config.run_dir() / runs.RESULT).st_mtime_ns
                   for r in sweep_runs if status(r) == "done"}
    assert 2 <= len(done_before) < len(sweep_runs), "kill the sweep mid-way"
    for r in sweep_runs:  # nothing half-written: a record is complete, or it has no result at all
        assert status(r) == "done" or not (r.config.run_dir() / runs.RESULT).exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert all(status(r) == "done" for r in sweep_runs)
    assert all(os.stat(d / runs.RESULT).st_mtime_ns == s for d, s in done_before.items())


def test_ray_executor_gives_the_local_table(tmp_path):
    """Both executors run each task with one CPU thread: they must give the very same numbers."""
    ray = pytest.importorskip("ray")
    body = "runs:\n  - {id: p, objective: 'contrastive(tau=1)'}\n  - {init: p, objective: 'align + uniform'}\n" \
           "  - {objective: 'uniform(t=2)'}\n"
    local = run_sweep(load_sweep(write_sweep(tmp_path / "a", body)), tmp_path / "a.csv", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(load_sweep(write_sweep(tmp_path / "b", body)), tmp_path / "b.csv", executor="ray",
                           cpus_per_run=1, progress=False)
    finally:
        ray.shutdown()
    assert list(remote["run"]) == list(local["run"]) and list(remote["status"]) == ["done"] * 3
    assert Path(remote.loc[1, "run_dir"]).parent == tmp_path / "b" / "runs"
    for col in ("val_output_linear", "val_output_5nn", "align", "uniform", "final_loss"):
        assert list(remote[col]) == pytest.approx(list(local[col]), abs=1e-9), col
