"""The rehearsal of the paper profile (rehearse.py): which runs it picks and how it cuts them (fast), and the whole
rehearsal once: every sweep the profile lists, trained and evaluated at miniature size through the real code, the
results tables with the columns the notebooks read, every notebook executed at the paper profile, nothing written
outside its folder (slow: a few minutes on 2 cores)."""

import ast
import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from hypersphere import miniature, profiles, rehearse, sweep
from hypersphere.evaluate import EvalConfig
from hypersphere.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER = profiles.load("paper")


def paper_runs(name, tmp_path):
    return rehearse.load(name, "paper", tmp_path)


# ----------------------------------------------------------------------------- picking and cutting (fast)


@pytest.mark.parametrize("name", PAPER.sweeps)
def test_one_run_per_recipe_and_the_parents_of_the_fine_tunes_picked(name, tmp_path):
    sweep_runs = paper_runs(name, tmp_path)
    picked, recipes = rehearse.pick(sweep_runs)
    assert recipes == len({rehearse.recipe(r.config) for r in sweep_runs})
    assert {rehearse.recipe(r.config) for r in picked} == {rehearse.recipe(r.config) for r in sweep_runs}
    dirs = [str(r.config.run_dir()) for r in picked]
    for i, run in enumerate(picked):
        assert not run.parent or run.parent in dirs[:i], "a fine-tune comes after its parent"
    assert len(picked) <= 2 * recipes


def test_recipes_tell_apart_what_runs_different_code_and_nothing_else():
    base = TrainConfig(dataset="stl10", objective="contrastive(tau=0.5)")
    same = [dataclasses.replace(base, objective="contrastive(tau=0.07)", lr=0.3, batch_size=256, seed=3)]
    other = [
        dataclasses.replace(base, objective="align(alpha=2) + uniform(t=2)"),
        dataclasses.replace(base, epochs=0),
        dataclasses.replace(base, drop_last=False),
        dataclasses.replace(base, bn_groups=4),
        dataclasses.replace(base, snapshot_epochs=(0, 200)),
        dataclasses.replace(base, arch="smallalexnet-mlp"),
    ]
    assert {rehearse.recipe(c) for c in same} == {rehearse.recipe(base)}
    assert len({rehearse.recipe(c) for c in [base, *other]}) == 1 + len(other)


def test_the_batch_gives_two_steps_and_divides_groups_processes_and_a_kept_last_batch():
    stl = TrainConfig(dataset="stl10", drop_last=False)
    assert rehearse.batch_size(stl, 12) == 6
    assert rehearse.batch_size(dataclasses.replace(stl, bn_groups=4), 12) == 4
    assert rehearse.batch_size(stl, 9) == 3  # not 4: its last batch of 1 has no pairs for an in-batch loss
    moco = TrainConfig(dataset="imagenet100", arch="resnet50", queue=16384, objective="contrastive(tau=0.2)")
    assert rehearse.batch_size(moco, 12) == 6  # 3 images on each of the 2 torchrun processes
    with pytest.raises(rehearse.RehearsalError, match=r"raise MINIATURE\['imagenet100'\]"):
        rehearse.batch_size(moco, 6)


def test_a_run_is_cut_in_epochs_and_sizes_only(tmp_path, monkeypatch):
    monkeypatch.setattr(rehearse, "examples", lambda dataset, data_dir, labelled: 20)
    sweep_runs = paper_runs("finetune", tmp_path)
    evaluation = rehearse.shrink_evaluation(sweep_runs[0].evaluation)
    rehearsed = {}
    for run in sweep_runs:
        rehearsed[str(run.config.run_dir())] = small = rehearse.shrink(run, rehearsed, evaluation)
        changed = {k for k, v in dataclasses.asdict(small.config).items() if v != getattr(run.config, k)}
        assert changed <= {"epochs", "batch_size", "snapshot_epochs", "init"}
        assert small.config.epochs == 1 and small.config.batch_size == 10
        if run.parent:
            assert small.parent == small.config.init == str(rehearsed[run.parent].config.run_dir())
            assert small.config.snapshot_epochs == (0, 1)


def test_an_evaluation_keeps_its_kind_probe_and_taps_and_cuts_epochs_and_folds():
    paper = EvalConfig(probe="sgd-full", probe_epochs=60, taps=("penultimate", "output"), cv_folds=3)
    small = rehearse.shrink_evaluation(paper)
    assert (small.kind, small.probe, small.taps) == (paper.kind, paper.probe, paper.taps)
    assert (small.probe_epochs, small.cv_folds, small.l2_folds) == (1, 2, 2)
    assert rehearse.shrink_evaluation(EvalConfig(cv_folds=0)).cv_folds == 0


def test_hypersphere_sizes_replaces_only_sizes_the_profile_sets(monkeypatch):
    monkeypatch.setenv(profiles.SIZES_VARIABLE, json.dumps({"01_theory": {"pairs": 16}}))
    assert PAPER.sizes("01_theory") == {**PAPER.notebooks["01_theory"], "pairs": 16}
    monkeypatch.setenv(profiles.SIZES_VARIABLE, json.dumps({"01_theory": {"pears": 16}}))
    with pytest.raises(KeyError, match="can only replace"):
        PAPER.sizes("01_theory")


def test_a_folder_of_something_else_is_refused_and_an_earlier_rehearsal_is_emptied(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(rehearse.RehearsalError, match="choose a new or empty folder"):
        rehearse.prepare(tmp_path)
    assert (tmp_path / "notes.txt").exists()
    out = rehearse.prepare(tmp_path / "r")
    (out / "runs").mkdir()
    assert rehearse.prepare(out) == out and not (out / "runs").exists()


def test_a_crash_names_the_sweep_and_the_run_in_one_line(tmp_path, monkeypatch):
    def crash(cfg, evaluation, threads):
        raise ValueError("a bug\nspread over lines")

    out = rehearse.prepare(tmp_path / "r")
    miniature.write("cifar10", out / "data", rehearse.MINIATURE["cifar10"])
    monkeypatch.setattr(sweep, "run_one", crash)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(rehearse.RehearsalError) as e:
            rehearse.rehearse_sweep("dim2", "paper", out)
    finally:
        torch.set_num_threads(threads)
    assert str(e.value).startswith(
        "rehearse: sweep dim2, run cifar10 'contrastive(tau=0.5)' random init (0 epochs): "
        "ValueError: a bug (traceback: "
    )
    assert "spread over lines" in (out / "logs" / "dim2.log").read_text()


def test_a_notebook_waits_for_the_tables_it_reads():
    needs = {p.stem: rehearse.notebook_needs(p, PAPER.sweeps) for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert needs["01_theory"] == set() and needs["06_table1"] == {"cloud", "curves"}
    assert needs["05_finetuning"] == {"finetune"} and needs["10_beyond"] == set(PAPER.sweeps)


def test_a_crashed_sweep_is_reported_and_the_notebooks_that_need_it_are_left_out():
    jobs = [
        rehearse.Job("sweep a", dict, (), sweep="a"),
        rehearse.Job("sweep b", int, ("x",), sweep="b"),
        rehearse.Job("notebook n", dict, (), needs=frozenset({"a", "b"})),
        rehearse.Job("notebook m", dict, (), needs=frozenset({"a"})),
    ]
    records, errors, skipped = rehearse._pool(jobs, progress=False)
    assert len(records) == 2 and skipped == ["notebook n"]
    assert errors == ["rehearse: sweep b: ValueError: invalid literal for int() with base 10: 'x'"]


def test_one_line_of_a_torchrun_failure_is_its_worker_error():
    err = RuntimeError(
        "torchrun training of x failed:\nTraceback (most recent call last):\n  File ...\n"
        "ValueError: uniform_loss needs 2 points\n[rank0]: ...\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n====="
    )
    assert rehearse._one_line(err) == "ValueError: uniform_loss needs 2 points"


# ----------------------------------------------------------------------------- the rehearsal itself (slow)


def notebook_needs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """sweep -> the columns the notebooks read from its table: each load_results call's `need` list, and for the
    notebook's first table its TARGETS and PAPER_COLS (written as literals in the notebook); and sweep -> its TARGETS,
    which must be complete (fig5.usable silently leaves out a target with an empty cell)."""
    needs: dict[str, set[str]] = {}
    targets: dict[str, set[str]] = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        tree = ast.parse("\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"))
        literals = {
            n.targets[0].id: ast.literal_eval(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign)
            and isinstance(n.targets[0], ast.Name)
            and n.targets[0].id in ("TARGETS", "PAPER_COLS")
            and isinstance(n.value, ast.Dict)
        }
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "load_results"]
        for i, call in enumerate(sorted(calls, key=lambda n: (n.lineno, n.col_offset))):
            cols = needs.setdefault(call.args[1].value, set())
            for item in next((k.value.elts for k in call.keywords if k.arg == "need"), []):
                if isinstance(item, ast.Constant):
                    cols.add(item.value)
                elif isinstance(item, ast.Attribute):  # e.g. table5.TOP1
                    cols.add(getattr(importlib.import_module(f"hypersphere.items.{item.value.id}"), item.attr))
            if i == 0:
                cols |= set(literals.get("TARGETS", {})) | set(literals.get("PAPER_COLS", {}).values())
                targets.setdefault(call.args[1].value, set()).update(literals.get("TARGETS", {}))
    return needs, targets


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The rehearsal of the paper profile, once; the repo's own output folders are watched meanwhile."""
    watched = [ROOT / "runs", ROOT / "results" / "paper", ROOT / "figures" / "paper", ROOT / "build" / "paper"]
    before = {p: p.stat().st_mtime_ns for d in watched if d.exists() for p in d.rglob("*")}
    out = tmp_path_factory.mktemp("rehearse") / "out"
    record = rehearse.run("paper", out, progress=False)
    after = {p: p.stat().st_mtime_ns for d in watched if d.exists() for p in d.rglob("*")}
    yield record, Path(record["out"]), before == after
    shutil.rmtree(Path(record["out"]) / "runs", ignore_errors=True)  # weights of a failed rehearsal: gigabytes


@pytest.mark.slow
def test_every_sweep_of_the_profile_is_rehearsed_and_every_notebook_runs(rehearsal):
    record, out, untouched = rehearsal
    assert record["errors"] == [] and record["status"] == "done"
    assert [s["sweep"] for s in record["sweeps"]] == list(PAPER.sweeps)
    for s in record["sweeps"]:
        assert s["trained"] + len(s["failed"]) == s["rehearsed"] >= s["recipes"] > 0, s
        assert s["evaluated"] == s["trained"], s
    assert [n["notebook"] for n in record["notebooks"]] == sorted(PAPER.notebooks)
    assert json.loads((out / rehearse.RECORD).read_text())["sweeps"] == record["sweeps"]
    assert untouched, "the rehearsal wrote into the repository's runs/, results/, figures/ or build/"


@pytest.mark.slow
def test_the_tables_have_the_columns_the_notebooks_read(rehearsal):
    record, out, _ = rehearsal
    needs, targets = notebook_needs()
    assert {"cloud", "depth", "moco", "sentences", "dim2", "imagenet"} <= set(needs) and targets["cloud"]
    for name, cols in needs.items():
        df = pd.read_csv(out / PAPER.results_dir / f"{name}.csv")
        assert not (missing := cols - set(df.columns)), f"{name}.csv lacks {sorted(missing)}"
        complete = sorted(targets.get(name, set()))
        assert df.loc[df["status"] == "done", complete].notna().all().all(), f"{name}.csv has empty {complete}"


@pytest.mark.slow
def test_the_paper_profile_figures_are_drawn(rehearsal):
    record, out, _ = rehearsal
    figures = out / PAPER.figures_dir
    for fig in (
        "fig5a_ours_vs_paper",
        "fig5b_ours_vs_paper",
        "fig9a_ours_vs_paper",
        "fig8_finetuning",
        "fig3_hypersphere_2d",
        "theorem1_convergence",
        "beyond_statistics",
    ):
        assert (figures / f"{fig}.png").stat().st_size > 5_000, fig
    assert len(pd.read_csv(figures / "table5.csv")) == 2  # Table 5 with our imagenet sweep's numbers
    for n in record["notebooks"]:
        assert json.loads((figures / f"verdicts_{n['notebook']}.json").read_text())["profile"] == "paper"


def _start_method() -> str:
    import multiprocessing

    return multiprocessing.get_start_method()


def test_spawned_workers_start_their_own_children_the_platform_default_way():
    """sweep.reset_start_method (the local executor's and the rehearsal's worker initializer): a spawned worker would
    otherwise spawn every DataLoader worker of a streamed dataset, re-importing torch in each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    default = multiprocessing.get_context().get_start_method()
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=sweep.reset_start_method
    ) as pool:
        assert pool.submit(_start_method).result() == default
