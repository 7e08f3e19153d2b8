"""Sweeps and profiles: validation, ordering, caching of training and of evaluation, the results table,
kill -9 resumption, failures, Ray."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hypersphere import profiles, resources, runs, train as train_module
from hypersphere.sweep import load_sweep, repeated_rows, run_sweep, status
from hypersphere.train import TRAIN_VERSION

SWEEPS_DIR = resources.configs() / "sweeps"
FAST = {"dataset": "digits", "dim": 8, "epochs": 1, "batch_size": 256, "device": "cpu"}
FAST_EVAL = "evaluation: {taps: [output], cv_folds: 0, l2_grid: [1.0e-3], l2_folds: 2}"


def write_sweep(tmp_path, body: str, name="s.yaml") -> Path:
    defaults = ", ".join(f"{k}: {v}" for k, v in {**FAST, "runs_dir": str(tmp_path / "runs")}.items())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(f"defaults: {{{defaults}}}\n{FAST_EVAL}\n{body}")
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


@pytest.mark.parametrize(
    "body, message",
    [
        ("runs:\n  - {objectiv: 'align'}\n", "entry 1.*unknown training config keys"),
        ("runs:\n  - {objective: 'align', epochs: -3}\n", "entry 1.*epochs must be"),
        ("runs:\n  - {objective: 'align'}\n  - {objective: 'unifrom(t=2)'}\n", "entry 2.*unifrom"),
        ("runs:\n  - {init: ghost, objective: 'align'}\n", "ghost.*no entry"),
        ("run:\n  - {objective: 'align'}\n", "unknown top-level keys"),
    ],
)
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


def test_the_paper_sweeps_train_each_encoder_once_and_repeated_rows_again_with_new_seeds():
    """Runs are named by their resolved config: lr 0.36 written out at batch 768 is the linear-scaling rule's, so
    Fig. 8's parent, Fig. 7's 13 encoders and official.yaml's one-BatchNorm run are the cloud's rows, trained once;
    Fig. 8's fine-tunes are the cloud's rows 274, 279 and 289 (constant lr, as the official trainer runs 12 epochs)
    but for the snapshots they keep. Each appendix row is a run, a repeated config trains again under seed 1, 2, ..."""
    paper = {
        name: load_sweep(SWEEPS_DIR / "paper" / f"{name}.yaml")
        for name in ("cloud", "finetune", "lambda", "official", "moco", "sentences")
    }
    cloud = {r.config.run_dir(): r for r in paper["cloud"]}
    by_row = {int(r.paper["paper_row"]): r.config for r in paper["cloud"]}
    poor, *finetunes = paper["finetune"]
    assert poor.config.run_dir() == by_row[89].run_dir() and poor.config.lr == 0 and by_row[89].lr == 0.36
    assert all(r.config.run_dir() in cloud for r in paper["lambda"]) and paper["official"][1].config.run_dir() in cloud
    fig8 = {by_row[row].canonical_objective: by_row[row] for row in (274, 279, 289)}
    for run in finetunes:
        twin = fig8[run.config.canonical_objective]
        assert twin.lr_decay_at == run.config.lr_decay_at == () and twin.init == run.config.init
        assert {k: v for k, v in run.config.hashed().items() if k != "snapshot_epochs"} == {
            k: v for k, v in twin.hashed().items() if k != "snapshot_epochs"
        }
    assert all(c.lr_decay_at == () for c in by_row.values() if c.epochs == 12)
    assert by_row[1].lr_decay_at == train_module.TrainConfig.lr_decay_at  # the 200-epoch rows decay at 155, 170, 185
    for name, rows, distinct in (("cloud", 309, 303), ("moco", 45, 42), ("sentences", 114, 112)):
        configs = [r.config for r in paper[name]]
        assert len(configs) == len({c.run_dir() for c in configs}) == rows, name
        assert len({c.run_dir() for c in configs if c.seed == 0}) == distinct, name
    assert [(int(r.paper["paper_row"]), r.config.seed) for r in paper["sentences"] if r.config.seed] == [
        (43, 1),
        (44, 2),
    ]
    for name, table in (
        ("cloud", "stl10_encoders"),
        ("moco", "imagenet100_encoders"),
        ("sentences", "bookcorpus_encoders"),
    ):
        seeds = {int(r.paper["paper_row"]): r.config.seed for r in paper[name] if "paper_row" in r.paper}
        groups = repeated_rows(resources.reference(f"{table}.csv"))  # the notebooks' run-to-run groups
        assert sorted(row for g in groups for row in g[1:]) == sorted(row for row, s in seeds.items() if s), name
        assert all([seeds[row] for row in g] == list(range(len(g))) for g in groups), name
    assert train_module.TrainConfig(optimizer="adam", lr=0.36).hashed()["lr"] == 0.36  # the rule is SGD's only


def test_the_paper_profile_crops_cifar10_as_stl10_and_greys_imagenet100_before_the_jitter(tmp_path):
    """Figs. 3-4's CIFAR-10 encoders see 64 px crops (evaluated at Resize(70)), so SmallAlexNet's conv5 is
    192 x 7 x 7 as in the paper's common setup; Table 3's MoCo v1 recipe greys before the colour jitter."""
    from hypersphere import miniature
    from hypersphere.train import load_data, make_encoder

    (run, *_) = load_sweep(SWEEPS_DIR / "paper" / "dim2.yaml", {"data_dir": str(miniature.write("cifar10", tmp_path))})
    data = load_data(run.config)
    assert (data.augment.crop_size, data.eval_resize, make_encoder(run.config, data).feature_dims["conv5"]) == (
        64,
        70,
        9408,
    )
    moco = load_sweep(SWEEPS_DIR / "paper" / "moco.yaml")
    assert all(r.config.augment == {"recipe": "mocov1", "grayscale_first": True} for r in moco)


def test_sweep_runs_once_and_caches(tmp_path):
    sweep_runs = load_sweep(write_sweep(tmp_path, SMALL))
    table = tmp_path / "results" / "s.csv"
    df = run_sweep(sweep_runs, table, progress=False)
    assert list(df["status"]) == ["done"] * 6 and len(pd.read_csv(table)) == 6
    for col in ("run", "objective", "batch_size", "dim", "init", "w_align", "val_output_linear", "align", "uniform"):
        assert col in df.columns
    stamps = {r.config.run_dir(): os.stat(r.config.run_dir() / runs.TRAIN).st_mtime_ns for r in sweep_runs}
    t0 = time.perf_counter()
    again = run_sweep(load_sweep(write_sweep(tmp_path, SMALL)), table, progress=False)
    assert time.perf_counter() - t0 < 5
    assert all(os.stat(d / runs.TRAIN).st_mtime_ns == s for d, s in stamps.items())
    pd.testing.assert_frame_equal(df, again)


def test_a_new_evaluation_setting_reevaluates_without_retraining(tmp_path):
    path = write_sweep(tmp_path, SMALL)
    table = tmp_path / "s.csv"
    first = run_sweep(load_sweep(path), table, progress=False)
    stamps = {r.config.run_dir(): os.stat(r.config.run_dir() / runs.CHECKPOINT).st_mtime_ns for r in load_sweep(path)}
    sweep_runs = load_sweep(path, eval_overrides={"probe": "adam", "probe_epochs": 2})
    assert {status(r) for r in sweep_runs} == {"to evaluate"}
    second = run_sweep(sweep_runs, table, progress=False)
    assert list(second["status"]) == ["done"] * 6
    assert all(os.stat(d / runs.CHECKPOINT).st_mtime_ns == s for d, s in stamps.items())  # no retraining
    assert list(second["align"]) == list(first["align"])  # same encoders, same validation pairs
    assert list(second["val_output_linear"]) != list(first["val_output_linear"])  # another probe
    with pytest.raises(ValueError, match="evaluation: unknown probe"):
        load_sweep(path, eval_overrides={"probe": "svm"})


def test_runs_of_an_older_training_code_version_are_reported_and_retrained(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, "runs:\n  - {objective: 'align + uniform'}\n")
    run_sweep(load_sweep(path), tmp_path / "t.csv", progress=False)
    monkeypatch.setattr(train_module, "TRAIN_VERSION", TRAIN_VERSION + 1)
    monkeypatch.setattr("hypersphere.sweep.TRAIN_VERSION", TRAIN_VERSION + 1)
    assert status(load_sweep(path)[0]) == "stale"
    df = run_sweep(load_sweep(path), tmp_path / "t.csv", progress=False)
    assert "1 finished runs were trained by an older training-code version" in capsys.readouterr().err
    assert list(df["status"]) == ["done"] and df.loc[0, "train_version"] == TRAIN_VERSION + 1


def test_profiles_name_existing_sweeps_and_a_new_profile_copies_one(tmp_path, monkeypatch):
    for name in profiles.names():
        prof = profiles.load(name)
        assert prof.sweeps and prof.workers >= 1 and prof.figures_dir == Path("figures") / name
        notebooks = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")}
        assert prof.notebooks and set(prof.notebooks) <= notebooks, name
    monkeypatch.setattr(resources, "configs", lambda: tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "profiles" / "base.yaml").write_text("sweeps: [s]\nworkers: auto\nnotebooks: {}\n")
    with pytest.raises(ValueError, match="names sweeps"):
        profiles.load("base")
    (tmp_path / "sweeps" / "base").mkdir()
    (tmp_path / "sweeps" / "base" / "s.yaml").write_text("runs: []\n")
    assert profiles.load("base").workers == os.cpu_count()
    profiles.new("mine", "base")
    assert profiles.load("mine").sweeps == ("s",) and (tmp_path / "sweeps" / "mine" / "s.yaml").exists()
    with pytest.raises(FileExistsError):
        profiles.new("mine", "base")
    (tmp_path / "profiles" / "derived.yaml").write_text("sweeps: [s]\nsweeps_from: base\nnotebooks: {}\n")
    assert profiles.load("derived").sweeps_dir == tmp_path / "sweeps" / "base"
    profiles.new("own", "derived")  # its own copies of the sweeps it read, and no sweeps_from
    assert (tmp_path / "sweeps" / "own" / "s.yaml").exists() and profiles.load("own").sweeps_from == ""
    with pytest.raises(FileNotFoundError, match="profile new nope"):
        profiles.load("nope")
    with pytest.raises(KeyError, match="sets no sizes"):
        profiles.load("mine").sizes("01_theory")


def test_diverged_run_is_recorded_and_retried_on_request(tmp_path):
    body = (
        "runs:\n  - {objective: 'contrastive(tau=0.5)', lr: 1.0e+12, weight_decay: 0}\n"
        "  - {objective: 'align + uniform'}\n"
    )
    path = write_sweep(tmp_path, body)
    df = run_sweep(load_sweep(path), tmp_path / "t.csv", progress=False)
    assert list(df["status"]) == ["failed", "done"]
    assert df.loc[0, "failed_epoch"] >= 1 and any(w in df.loc[0, "failed_reason"] for w in ("nan", "left the sphere"))
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
    """Two workers take the six runs in order, so the fourth starts once two runs are finished; it SIGKILLs its
    worker after its first epoch (train.py's kill hook), which breaks the sweep. Rerun: the finished runs are kept,
    the fourth resumes from its saved state, the rest train."""
    body = "runs:\n  - {epochs: 3, grid: {objective: ['align + uniform', 'contrastive(tau=0.5)'], dim: [4, 6, 8]}}\n"
    path = write_sweep(tmp_path, body)
    cmd = [sys.executable, "-m", "hypersphere", "sweep", str(path), "--profile", "smoke", "--workers", "2"]
    sweep_runs = load_sweep(path)
    fourth = sweep_runs[3].config.run_dir()
    env = {**os.environ, "HYPERSPHERE_KILL_AT": "2:0", "HYPERSPHERE_KILL_RUN": fourth.name}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path
    )
    try:
        assert proc.wait(timeout=300) != 0, "a killed worker fails the sweep"
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever remains of its process group, as a node failure would
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = {
        r.config.run_dir(): os.stat(r.config.run_dir() / runs.TRAIN).st_mtime_ns
        for r in sweep_runs
        if status(r) == "done"
    }
    assert 2 <= len(done_before) < len(sweep_runs) and status(sweep_runs[3]) == "partial"
    for r in sweep_runs:  # nothing half-written: a training record is complete (evaluated or not), or absent
        assert status(r) in ("done", "to evaluate") or not (r.config.run_dir() / runs.TRAIN).exists()
    assert subprocess.run(cmd, capture_output=True, cwd=tmp_path).returncode == 0
    assert all(status(r) == "done" for r in sweep_runs)
    assert runs.load_summary(fourth)["resumed"] == [{"epoch": 2, "step": 0}]
    assert len(pd.read_csv(tmp_path / "results" / "smoke" / "s.csv")) == len(sweep_runs)
    assert all(os.stat(d / runs.TRAIN).st_mtime_ns == s for d, s in done_before.items())


def test_ray_executor_gives_the_local_table(tmp_path):
    """Both executors run each task with one CPU thread: they must give the very same numbers."""
    ray = pytest.importorskip("ray")
    body = (
        "runs:\n  - {id: p, objective: 'contrastive(tau=1)'}\n  - {init: p, objective: 'align + uniform'}\n"
        "  - {objective: 'uniform(t=2)'}\n"
    )
    local = run_sweep(load_sweep(write_sweep(tmp_path / "a", body)), tmp_path / "a.csv", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(
            load_sweep(write_sweep(tmp_path / "b", body)),
            tmp_path / "b.csv",
            executor="ray",
            cpus_per_run=1,
            progress=False,
        )
    finally:
        ray.shutdown()
    assert list(remote["run"]) == list(local["run"]) and list(remote["status"]) == ["done"] * 3
    assert Path(remote.loc[1, "run_dir"]).parent == tmp_path / "b" / "runs"
    for col in ("val_output_linear", "val_output_5nn", "align", "uniform", "final_loss"):
        assert list(remote[col]) == pytest.approx(list(local[col]), abs=1e-9), col


def test_two_sweeps_sharing_a_runs_directory_never_train_a_run_twice(tmp_path):
    """Two terminals (or two clusters on one NFS) start the same sweep: each run is trained by one of them; the
    other skips it while it is locked, and says so."""
    body = "runs:\n  - {epochs: 3, grid: {objective: ['align + uniform', 'contrastive(tau=0.5)'], dim: [4, 8]}}\n"
    path = write_sweep(tmp_path, body)
    cmd = [sys.executable, "-m", "hypersphere", "sweep", str(path), "--profile", "smoke", "--workers", "1"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
        if (tmp_path / name).mkdir() is None
    ]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = [int(re.search(r"s: (\d+) trained", out).group(1)) for out in outs]
    assert sum(trained) == 4, outs  # every run trained exactly once between the two
    # a run skipped as busy was finished by the other sweep: a rerun has nothing to do
    again = subprocess.run(cmd, cwd=tmp_path / "a", capture_output=True, text=True)
    assert again.returncode == 0 and "trained" not in again.stderr  # nothing left to do
    assert all(status(r) == "done" for r in load_sweep(path))


def test_paper_moco_sweep_reproduces_the_imagenet100_table():
    sweep_runs = load_sweep(SWEEPS_DIR / "paper" / "moco.yaml")
    table = pd.read_csv(resources.reference("imagenet100_encoders.csv"))
    assert len(sweep_runs) == len(table) == 45
    by_row = {int(r.paper["paper_row"]): r for r in sweep_runs}
    assert (
        by_row[2].config.canonical_objective == "contrastive(tau=0.07)" and by_row[2].paper["paper_val_top1"] == 72.80
    )
    assert (by_row[44].config.queue, by_row[44].config.intra_batch) == (32768, False)  # Eq. 17: queue pairs only
    assert by_row[23].config.intra_batch and by_row[1].config.arch == "resnet50"
    assert by_row[1].evaluation.probe == "sgd-full" and by_row[1].evaluation.cv_folds == 3
