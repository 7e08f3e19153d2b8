"""The rehearsal of a profile (the paper's): every sweep it lists, at miniature size, through the code the real
sweeps run, then every notebook on the results, so that what a CPU can find in the paper path is found here and
not by the first GPU or the first user.

    python -m hypersphere rehearse --profile paper --out build/rehearse        # or `make rehearse`

For each sweep the profile lists (read from the profile, so a new sweep is rehearsed without any edit):
  1. the datasets its runs use are written in their real on-disk formats at miniature size (miniature.py, MINIATURE
     examples) under <out>/data, and the project's own loaders read them;
  2. one run of each distinct recipe (`recipe`: dataset, arch, loss family, optimiser, MoCo queue and its uniformity
     form, BatchNorm groups, last-batch policy, schedule, snapshots, fine-tuning, random initialisation) is trained
     by train() from the sweep's own TrainConfig with only sizes cut (`shrink`: 1 epoch, 0 kept; a batch size that
     gives STEPS steps on the miniature data; snapshot epochs scaled along), a fine-tune from its rehearsed parent.
     ResNet-50 runs, which the README sends to several GPUs ("The paper profile on GPUs"), train under torchrun
     with PROCESSES processes (gloo on the CPU);
  3. each is evaluated with the sweep's own EvalConfig (kind, probe and taps kept; `shrink_evaluation` cuts the
     probe and decoder epochs to 1 and the cross-validation to FOLDS folds);
  4. sweep.run_sweep writes the sweep's results table, <out>/results/<profile>/<sweep>.csv, as the real sweep does.
Every notebook the profile sizes runs at it on those tables once they exist (notebook.execute with workdir
<out>, so its figures land in <out>/figures/<profile>/), its sizes replaced by the smoke profile's
($HYPERSPHERE_SIZES, profiles.py): the profile's code paths at seconds-long sizes.

Sweeps and notebooks run WORKERS at a time (`_pool`). Nothing is written outside <out>; a crash names the sweep and
the run (or the notebook) in one line, and the log it names under <out>/logs/ holds the traceback;
<out>/rehearse.json records what ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, NamedTuple

import nbformat
from tqdm.auto import tqdm

from . import miniature, notebook, profiles, runs, sweep
from .evaluate import EvalConfig
from .losses import Objective
from .sweep import SweepRun
from .train import TrainConfig

# Examples of each miniature dataset (miniature.write's n): the fewest that the paper sweeps' evaluations accept
# (5-NN needs 5 training points, in each of FOLDS folds where the sweep cross-validates).
MINIATURE = {
    "stl10": 2,  # 10 labelled (one per class), 2 unlabelled, 10 test images of 96 px
    "cifar10": 10,  # 10 train, 10 test images of 32 px
    "nyu-depth-v2": 14,  # 14 frames of 480 x 640: 8 train, 6 test
    "imagenet100": 12,  # 4 classes of 3 train and 2 validation JPEGs (3-fold CV cut to 2 folds)
    "imagenet": 8,  # 4 classes of 2 train and 2 validation JPEGs, streamed (no CV)
    "bookcorpus": 100,
}  # 100 one-per-line sentences in 8 books; MR and CR of 40 snippets each
STEPS = 2  # training steps per epoch: the batch size is cut to fit them into the miniature data
EPOCHS = 1  # epochs of every trained run (random initialisations keep 0)
FOLDS = 2  # cross-validation folds (outer and inner) where the sweep cross-validates
PROCESSES = 2  # torchrun processes of a run the README sends to several GPUs
MULTI_GPU_ARCHS = ("resnet50", "resnet50-mlp")  # the README's torchrun runs: the ResNet-50s (Tables 3 and 5)
WORKERS = 2  # sweeps (and then notebooks) rehearsed at a time, one CPU thread each
SIZES_FROM = "smoke"  # the profile whose notebook sizes the rehearsal's notebooks use
RECORD = "rehearse.json"
KEEP_FREED = 2**30  # bytes: freed blocks up to this size stay with the process (_start_worker)
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


class RehearsalError(RuntimeError):
    """A crash of the rehearsal, in one line naming the sweep and the run (or the notebook) and the log to read."""


# ----------------------------------------------------------------------------- which runs, at what size


def recipe(cfg: TrainConfig) -> tuple:
    """What makes two runs of a sweep exercise different code: equal recipes differ only in numbers (weights,
    temperatures, learning rates, sizes, seeds)."""
    return (
        cfg.dataset,
        cfg.arch,
        tuple(t.name for t in Objective.parse(cfg.objective).terms),
        cfg.optimizer,
        cfg.queue > 0,
        cfg.queue > 0 and cfg.intra_batch,
        cfg.bn_groups,
        cfg.drop_last,
        cfg.cosine,
        bool(cfg.snapshot_epochs),
        bool(cfg.init),
        cfg.epochs == 0,
    )


def describe(cfg: TrainConfig) -> str:
    """A run in words, e.g. resnet50 'contrastive(tau=0.2)' queue 16384."""
    words = [cfg.dataset if cfg.arch == "auto" else cfg.arch, repr(cfg.canonical_objective)]
    if cfg.queue:
        words.append(f"queue {cfg.queue}" + ("" if cfg.intra_batch else " without intra-batch pairs"))
    words += [f"bn_groups {cfg.bn_groups}"] * (cfg.bn_groups > 1) + ["cosine"] * cfg.cosine
    words += [f"fine-tuned from {Path(cfg.init).name}"] * bool(cfg.init) + ["random init (0 epochs)"] * (
        cfg.epochs == 0
    )
    return " ".join(words)


def pick(sweep_runs: list[SweepRun]) -> tuple[list[SweepRun], int]:
    """One run of each recipe and the ancestors of the fine-tunes picked, in the sweep's order (parents first); and
    the number of recipes. A recipe's run is its first (for a fine-tune, the first from a parent picked already, if
    any): a row of the paper's table where the sweep has one, as the notebooks' selections (Table 1) want."""
    first: dict[tuple, SweepRun] = {}
    for run in sweep_runs:
        first.setdefault(recipe(run.config), run)
    by_dir = {str(r.config.run_dir()): r for r in sweep_runs}
    picked: dict[str, SweepRun] = {}
    for key, run in [
        *((k, r) for k, r in first.items() if not r.parent),
        *((k, r) for k, r in first.items() if r.parent),
    ]:
        if run.parent:
            run = next((r for r in sweep_runs if recipe(r.config) == key and r.parent in picked), run)
        while run is not None:  # the run and its ancestors
            picked[str(run.config.run_dir())] = run
            run = by_dir.get(run.parent)
    return [r for r in sweep_runs if str(r.config.run_dir()) in picked], len(first)


def batch_size(cfg: TrainConfig, n: int) -> int:
    """The largest batch that cuts an epoch of `n` examples into at least STEPS steps, that the run's BatchNorm groups
    and processes divide, that gives each process at least 2 examples (a kept last partial batch too: in-batch losses
    and BatchNorm need 2) and that its MoCo queue holds."""
    world = PROCESSES if cfg.arch in MULTI_GPU_ARCHS else 1
    unit = math.lcm(cfg.bn_groups, world)
    for b in range(n // STEPS // unit * unit, 0, -unit):
        last = 0 if cfg.drop_last else n % b
        if (
            b >= 2 * world
            and (last == 0 or last % world == 0 and last >= 2 * world)
            and (not cfg.queue or b <= cfg.queue)
        ):
            return b
    raise RehearsalError(
        f"{n} training examples of {cfg.dataset} are too few for {STEPS} steps of {describe(cfg)}: "
        f"raise MINIATURE[{cfg.dataset!r}] in rehearse.py"
    )


@functools.cache
def examples(dataset: str, data_dir: str, labelled: bool) -> int:
    """The examples an epoch of a run on `dataset` goes through (the labelled ones for a supervised run)."""
    from .domains import domain_of

    data = domain_of(dataset).load(dataset, data_dir, False)
    if hasattr(data, "encoder_images"):
        return len(data.train_images if labelled else data.encoder_images)
    return len(data)


def shrink(run: SweepRun, rehearsed: dict[str, SweepRun], evaluation: EvalConfig) -> SweepRun:
    """The run at rehearsal size: EPOCHS epochs (0 kept), a batch of STEPS steps on the miniature data, the snapshot
    epochs scaled along, a fine-tune from its rehearsed parent (`rehearsed`: by the original run directory), and
    `evaluation`; every other field is the sweep's."""
    cfg = run.config
    epochs = min(cfg.epochs, EPOCHS)
    parent = rehearsed[run.parent].config.run_dir() if run.parent else ""
    n = examples(cfg.dataset, cfg.data_dir, Objective.parse(cfg.objective).needs_labels)
    small = dataclasses.replace(
        cfg,
        epochs=epochs,
        batch_size=batch_size(cfg, n),
        init=str(parent),
        snapshot_epochs=tuple(
            sorted({round(e * epochs / cfg.epochs) if cfg.epochs else e for e in cfg.snapshot_epochs})
        ),
    )
    return dataclasses.replace(run, config=small, evaluation=evaluation, parent=str(parent))


def shrink_evaluation(cfg: EvalConfig) -> EvalConfig:
    """The sweep's evaluation with only its sizes cut: 1 probe and decoder epoch, FOLDS-fold CV where it has CV."""
    return dataclasses.replace(cfg, probe_epochs=1, decoder_epochs=1, cv_folds=min(cfg.cv_folds, FOLDS), l2_folds=FOLDS)


# ----------------------------------------------------------------------------- the jobs (in worker processes)


def _one_line(e: BaseException) -> str:
    """An exception in one line: a notebook cell's error, the last `SomeError: ...` line of a multi-line message
    (torchrun's captured stderr ends with its own summary), else its first line."""
    if hasattr(e, "ename"):  # papermill's PapermillExecutionError
        return f"{e.ename}: {str(e.evalue).splitlines()[0] if str(e.evalue) else ''}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [
        line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line) and "ChildFailedError" not in line
    ]
    return errors[-1] if errors else f"{type(e).__name__}: {lines[0] if lines else ''}"


@contextlib.contextmanager
def _logged(log: Path, what: list[str]):
    """Everything the block and its subprocesses (notebook kernels) print goes to `log` (file descriptors 1 and 2
    included); an exception becomes a RehearsalError naming `what`, a list the block extends with the run it got to,
    and the traceback goes to the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        except Exception as e:
            traceback.print_exc(file=f)
            raise RehearsalError(f"rehearse: {', '.join(what)}: {_one_line(e)} (traceback: {log})") from None
        finally:
            f.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (torchrun's processes, notebook kernels, workers)."""
    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


def load(name: str, profile: str, out: Path) -> list[SweepRun]:
    """The sweep as the profile defines it, its runs and data under `out`, on the CPU."""
    return sweep.load_sweep(
        sweep.sweep_path(name, profile), {"data_dir": str(out / "data"), "runs_dir": str(out / "runs"), "device": "cpu"}
    )


def rehearse_sweep(name: str, profile: str, out: Path) -> dict[str, Any]:
    """Rehearse one sweep (module docstring, steps 2-4); returns its line of the record."""
    import torch

    torch.set_num_threads(1)
    t0, cpu0, what = time.perf_counter(), cpu_seconds(), [f"sweep {name}"]
    with _logged(out / "logs" / f"{name}.log", what):
        sweep_runs = load(name, profile, out)
        picked, recipes = pick(sweep_runs)
        rehearsed: dict[str, SweepRun] = {}
        evaluation = shrink_evaluation(sweep_runs[0].evaluation)
        for run in picked:
            what[1:] = [f"run {describe(run.config)}"]
            rehearsed[str(run.config.run_dir())] = shrink(run, rehearsed, evaluation)
        table = out / profiles.load(profile).results_dir / f"{name}.csv"
        small = list(rehearsed.values())
        for executor in ("local", "torchrun"):
            if group := [r for r in small if (r.config.arch in MULTI_GPU_ARCHS) == (executor == "torchrun")]:
                try:
                    sweep.run_sweep(
                        group, table, executor, gpus_per_run=PROCESSES * (executor == "torchrun"), progress=False
                    )
                except Exception:
                    culprit = next((r for r in group if sweep.status(r) not in ("done", "failed")), group[0])
                    what[1:] = [f"run {describe(culprit.config)}"]
                    raise
        what[1:] = []
        df = sweep.write_table(small, table)
    return {
        "sweep": name,
        "recipes": recipes,
        "runs": len(sweep_runs),
        "rehearsed": len(small),
        "trained": int(df["status"].isin(["done", "to evaluate"]).sum()),
        "evaluated": int((df["status"] == "done").sum()),
        "failed": [describe(r.config) for r, s in zip(small, df["status"]) if s == "failed"],
        "table": str(table),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(cpu_seconds() - cpu0, 1),
    }


def rehearse_notebook(path: Path, profile: str, out: Path, sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Execute one notebook at `profile` in `out` with `sizes` replacing the profile's; returns its line of the
    record."""
    os.environ[profiles.SIZES_VARIABLE] = json.dumps(sizes)  # the kernel inherits this process's environment
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with _logged(out / "logs" / f"{path.stem}.log", [f"notebook {path.stem}"]):
        notebook.execute(path, profile, out, data_dir=str(out / "data"), device="cpu", progress=False)
    return {
        "notebook": path.stem,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(cpu_seconds() - cpu0, 1),
    }


# ----------------------------------------------------------------------------- the rehearsal


def prepare(out: str | Path | None) -> Path:
    """The output folder, emptied: a new or empty folder, or an earlier rehearsal's (it holds RECORD); any other
    folder is refused, so that the rehearsal never deletes what it did not write."""
    out = Path(out or "build/rehearse").resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / RECORD).is_file():
            raise RehearsalError(
                f"rehearse: {out} holds files of something else than a rehearsal; choose a new or "
                f"empty folder with --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / RECORD, {"status": "running"})
    return out


def notebook_sizes(profile: profiles.Profile) -> dict[str, dict[str, Any]]:
    """The sizes of SIZES_FROM for every size that `profile` sets (the rest are the profile's)."""
    small = profiles.load(SIZES_FROM).notebooks
    return {nb: {k: v for k, v in small.get(nb, {}).items() if k in sizes} for nb, sizes in profile.notebooks.items()}


def notebook_needs(path: Path, sweeps: tuple[str, ...]) -> frozenset[str]:
    """The sweeps whose tables a notebook reads: those its code names ("cloud", "finetune.trajectories.csv"), or all
    of the profile's when it reads the profile's list (P.sweeps)."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    return (
        frozenset(sweeps) if "P.sweeps" in code else frozenset(re.findall(r'"(\w+)(?:\.[\w.]+)?"', code)) & set(sweeps)
    )


class Job(NamedTuple):
    name: str  # "sweep moco", "notebook 01_theory": for messages
    fn: Callable
    args: tuple
    sweep: str = ""  # the sweep it rehearses
    torchrun: bool = False  # trains under torchrun: never two at once, whose DDP processes would outnumber the cores
    needs: frozenset = frozenset()  # the sweeps it waits for (a notebook: the tables it reads)


def _start_worker() -> None:
    """A worker's start: its children start the platform's way (sweep.reset_start_method), and glibc keeps freed
    blocks of up to KEEP_FREED bytes rather than handing each back to the OS. The encoders free and re-allocate their
    gradients at every step (235 MB for SmallAlexNet's), which otherwise page-faults them in again: a quarter of the
    CPU time of its steps. Set here by mallopt, and for the children (torchrun's processes) by the environment."""
    sweep.reset_start_method()
    os.environ.update(MALLOC_MMAP_THRESHOLD_=str(KEEP_FREED), MALLOC_TRIM_THRESHOLD_=str(KEEP_FREED))
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, KEEP_FREED), libc.mallopt(-1, KEEP_FREED)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def _pool(jobs: list[Job], progress: bool) -> tuple[list[dict], list[str], list[str]]:
    """Run the jobs WORKERS at a time in fresh processes, each as soon as a worker is free, the sweeps it needs are
    rehearsed and, for a torchrun job, no other runs: in their order among those. Returns their records, the errors
    and the jobs left out because a sweep they need crashed."""
    records, errors, skipped, pending, running, done, crashed = [], [], [], list(jobs), {}, set(), set()
    with (
        ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        ) as pool,
        tqdm(total=len(jobs), desc="rehearse", unit="job", disable=not progress) as bar,
    ):
        while pending or running:
            for job in list(pending):
                if job.needs & crashed:
                    pending.remove(job), skipped.append(job.name), bar.update()
                elif (
                    len(running) < WORKERS
                    and job.needs <= done
                    and not (job.torchrun and any(j.torchrun for j in running.values()))
                ):
                    pending.remove(job)
                    running[pool.submit(job.fn, *job.args)] = job
            if not running:
                break  # left waiting for nothing: cannot happen with needs among the jobs
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                job = running.pop(future)
                try:
                    records.append(future.result())
                    done.add(job.sweep)
                except Exception as e:  # RehearsalError, or a worker that died (killed, out of memory)
                    errors.append(str(e) if isinstance(e, RehearsalError) else f"rehearse: {job.name}: {_one_line(e)}")
                    crashed.add(job.sweep)
                bar.set_postfix_str(job.name)
                bar.update()
    return records, errors, skipped + [job.name for job in pending]


def run(profile: str = "paper", out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Rehearse every sweep of `profile` and run every notebook on the results, all under `out` (default
    build/rehearse/, emptied first). Returns the record (also written to <out>/rehearse.json); its `errors` list
    the crashes, one line each."""
    t0 = time.perf_counter()
    prof = profiles.load(profile)
    out = prepare(out)
    sweeps = {name: load(name, profile, out) for name in prof.sweeps}  # validates every file before anything runs
    for dataset in sorted({r.config.dataset for sweep_runs in sweeps.values() for r in sweep_runs}):
        if dataset not in MINIATURE:
            users = [
                name for name, sweep_runs in sweeps.items() if any(r.config.dataset == dataset for r in sweep_runs)
            ]
            raise RehearsalError(
                f"rehearse: sweep {users[0]}: no miniature dataset {dataset!r}; add a writer to "
                f"miniature.py and its size to rehearse.MINIATURE"
            )
        miniature.write(dataset, out / "data", MINIATURE[dataset])
    # the sweeps longest first (a torchrun run of ResNet-50 costs about 5 times another), then the notebooks
    cost = {s: sum(5 if r.config.arch in MULTI_GPU_ARCHS else 1 for r in pick(runs_)[0]) for s, runs_ in sweeps.items()}
    jobs = [
        Job(
            f"sweep {s}", rehearse_sweep, (s, profile, out), s, any(r.config.arch in MULTI_GPU_ARCHS for r in sweeps[s])
        )
        for s in sorted(prof.sweeps, key=lambda s: -cost[s])
    ]
    sizes = notebook_sizes(prof)
    jobs += [
        Job(f"notebook {p.stem}", rehearse_notebook, (p, profile, out, sizes), needs=notebook_needs(p, prof.sweeps))
        for p in sorted(NOTEBOOKS.glob("*.ipynb"))
        if p.stem in prof.notebooks
    ]
    records, errors, skipped = _pool(jobs, progress)
    record = {
        "profile": profile,
        "out": str(out),
        "sweeps": sorted((r for r in records if "sweep" in r), key=lambda r: prof.sweeps.index(r["sweep"])),
        "notebooks": sorted((r for r in records if "notebook" in r), key=lambda r: r["notebook"]),
        "errors": errors,
        "not run": skipped,
    }
    if not errors:
        drop_weights(out)
    record.update(
        status="failed" if errors else "done",
        seconds=round(time.perf_counter() - t0, 1),
        cpu_seconds=round(cpu_seconds(), 1),
    )
    runs.write_json(out / RECORD, record)
    return record


def drop_weights(out: Path) -> None:
    """Delete the rehearsed encoders' weights (GBs: a SmallAlexNet's are 235 MB) once their tables and figures exist;
    a failed rehearsal keeps them, to look into."""
    for path in [*(out / "runs").glob(f"*/{runs.CHECKPOINT}"), *(out / "runs").glob(f"*/{runs.SNAPSHOTS}/*.pt")]:
        path.unlink()


def table(record: dict[str, Any]) -> str:
    """The record as the table the command prints: sweep | recipes | runs in the sweep | trained | evaluated |
    seconds."""
    head = ("sweep", "recipes", "runs in the sweep", "trained", "evaluated", "seconds")
    rows = [
        (s["sweep"], s["recipes"], s["runs"], s["trained"], s["evaluated"], f"{s['seconds']:.0f}")
        for s in record["sweeps"]
    ]
    rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 5)), ""))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        " | ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    if record["notebooks"]:
        lines.append(
            f"notebooks: {len(record['notebooks'])} executed ("
            + ", ".join(f"{n['notebook']} {n['seconds']:.0f}s" for n in record["notebooks"])
            + ")"
        )
    lines += [
        f"failed (diverged or collapsed, recorded as the real sweep records them): {s['sweep']}: {f}"
        for s in record["sweeps"]
        for f in s["failed"]
    ]
    if record["not run"]:
        lines.append(f"not run, a sweep they need crashed: {', '.join(record['not run'])}")
    lines.append(
        f"{record['status']} in {record['seconds']:.0f} s ({record['cpu_seconds']:.0f} CPU-seconds); outputs "
        f"in {record['out']}"
    )
    return "\n".join(lines)


def main(profile: str = "paper", out: str | Path | None = None) -> int:
    """The command: rehearse, print the table and every crash; 0 when nothing crashed, else 1."""
    try:
        record = run(profile, out)
    except RehearsalError as e:
        print(e, file=sys.stderr)
        return 1
    print(table(record))
    for error in record["errors"]:
        print(error, file=sys.stderr)
    return 1 if record["errors"] else 0
