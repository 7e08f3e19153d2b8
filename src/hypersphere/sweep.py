"""Sweeps: many run configs from one YAML file, trained and evaluated with caching and resumption,
tabulated as one CSV.

A sweep file (configs/sweeps/<profile>/<name>.yaml) is data a person reads:

    defaults: {dataset: digits-color, epochs: 20, batch_size: 128, dim: 32}   # training config of every run
    evaluation: {probe: lbfgs, taps: [fc7, output], cv_folds: 5}            # one evaluation config for all
    runs:
      - {objective: "align(alpha=2) + uniform(t=2)"}            # one run
      - grid: {objective: ["contrastive(tau=0.1)", "contrastive(tau=0.5)"], batch_size: [32, 128]}
      - {id: poor, objective: "contrastive(tau=2.5)"}             # named, so others can start from it
      - {init: poor, epochs: 4, objective: "align(alpha=2)"}      # fine-tune from the run named `poor`
      - {table: data/reference/stl10_encoders.csv, where: {init: rand}}  # a run per row of the paper's table

Every entry is validated (unknown keys, bad values, a missing parent) before anything trains, and
reported with the entry it came from. Finished runs are not retrained (runs of an older training-code
version are, with a message), finished evaluations are not recomputed, so a new evaluation setting
re-evaluates every cached encoder without training; fine-tunes run after their parents, diverged runs are
recorded as failed (rerun with --retry-failed), and the table results/<profile>/<sweep>.csv is rewritten
atomically after every run.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch
import yaml
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import profiles, resources, runs, userfiles
from .evaluate import EvalConfig, check_kind, evaluate_run, load_record
from .losses import TERMS, Objective
from .train import TRAIN_VERSION, Diverged, TrainConfig, train


@dataclasses.dataclass(frozen=True)
class SweepRun:
    config: TrainConfig
    evaluation: EvalConfig
    origin: str  # which entry of the sweep file made it (for messages)
    paper: dict[str, Any]  # the paper's reported numbers for this config (table entries)
    parent: str = ""  # run_dir of the parent for fine-tunes
    id: str = ""  # the entry's `id`, so notebooks can pick named runs


# ----------------------------------------------------------------------------- reading sweep files


def sweep_path(name: str, profile: str) -> Path:
    """A sweep file: a path to a .yaml file, or the name of one of the profile's sweeps (in its sweeps_dir)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    folder = profiles.load(profile).sweeps_dir
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(
            f"no sweep {name!r} for profile {profile!r} (looked at {path}); known: {', '.join(known) or 'none'}"
        )
    return path


def table_configs(path: Path, where: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Configs and reported numbers from one of the paper's appendix tables (data/reference/*.csv). The tables repeat
    some configurations (trained again by the paper, so their numbers differ by its run-to-run spread): each repeat
    gets the next seed, in order of appearance, so it trains again here too."""
    numeric = ["epochs", "batch_size", "lr", "dim"] + [c for _, w, p, _ in resources.LOSS_COLUMNS for c in (w, p)]
    df = userfiles.load_csv(path, "an appendix table (data/reference/README.md)", numeric, numeric, {"init": str})
    for key, value in where.items():
        df = df[df[key].astype(str) == str(value)]
    out, seen = [], collections.Counter()
    for row in df.to_dict("records"):
        config = {
            "objective": resources.row_objective(row),
            "epochs": int(row["epochs"]),
            "batch_size": int(row["batch_size"]),
            "lr": float(row["lr"]),
            "dim": int(row["dim"]),
        }
        if row.get("init") not in (None, "rand") and isinstance(row.get("init"), str):
            config["init"] = row["init"]
        if isinstance(row.get("init_marker"), str):
            config["id"] = row["init_marker"]
        if isinstance(row.get("normalization"), bool):  # Quick-Thought (BookCorpus): l2-normalised or QT's raw outputs
            config["arch"] = "qt" if row["normalization"] else "qt-raw"
        if row.get("queue_size", 0) > 0:  # MoCo (ImageNet-100): the queue, and which uniformity form
            config["queue"] = int(row["queue_size"])
            config["intra_batch"] = str(row.get("unif_intra_batch")).lower() != "false"
        # a row that repeats an earlier one's config is another training of it, as the paper's was: seeds 1, 2, ...
        same = _identity(config)
        if seen[same]:
            config["seed"] = seen[same]
        seen[same] += 1
        paper = {f"paper_{k}": v for k, v in row.items() if k.startswith(("cv_", "val_")) or k in ("row", "nan")}
        out.append((config, paper))
    return out


def _identity(config: dict[str, Any]) -> tuple:
    """What makes two appendix rows the same configuration: everything but their marker and seed."""
    return tuple(sorted((k, v) for k, v in config.items() if k not in ("id", "seed")))


def repeated_rows(path: Path) -> list[list[int]]:
    """The appendix table's groups of rows that repeat one configuration (trained under seeds 0, 1, ...)."""
    groups = collections.defaultdict(list)
    for config, paper in table_configs(path, {}):
        groups[_identity(config)].append(int(paper["paper_row"]))
    return [rows for rows in groups.values() if len(rows) > 1]


def _expand(entry: dict[str, Any]) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    if "table" in entry:
        for config, paper in table_configs(resources.reference(entry["table"]), entry.get("where", {})):
            yield {**{k: v for k, v in entry.items() if k not in ("table", "where")}, **config}, paper
        return
    grid = entry.get("grid", {})
    fixed = {k: v for k, v in entry.items() if k != "grid"}
    for values in itertools.product(*grid.values()):
        yield {**fixed, **dict(zip(grid, values))}, {}


def load_sweep(
    path: Path, overrides: dict[str, Any] | None = None, eval_overrides: dict[str, Any] | None = None
) -> list[SweepRun]:
    """Expand and validate a sweep file; parents are ordered before their fine-tunes. `overrides` replace
    training defaults of every run, `eval_overrides` fields of the sweep's evaluation config."""
    spec = userfiles.load_yaml(path, userfiles.SWEEP_KEYS, "a sweep file")
    if not spec.get("runs"):
        raise userfiles.UserFileError(f"{path}: names no runs; add a `runs:` list of configs (see configs/sweeps/)")
    try:
        evaluation = EvalConfig.from_dict({**(spec.get("evaluation") or {}), **(eval_overrides or {})})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{Path(path).name} evaluation: {e}") from None
    defaults = {**(spec.get("defaults") or {}), **(overrides or {})}
    # absolute paths, so that Ray workers started anywhere find the same files
    defaults["runs_dir"] = str(Path(defaults.get("runs_dir", "runs")).resolve())
    defaults["data_dir"] = str(Path(defaults.get("data_dir", "data")).resolve())
    expanded: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for i, entry in enumerate(spec["runs"]):
        origin = f"{Path(path).name} entry {i + 1} ({entry})"
        if not isinstance(entry, dict):
            raise ValueError(f"{origin}: each entry must be a mapping of config keys")
        for config, paper in _expand(entry):
            expanded.append((origin, {**defaults, **config}, paper))

    by_id: dict[str, TrainConfig] = {}
    todo, result = expanded, []
    while todo:  # resolve parents first: a fine-tune's run name depends on its parent's
        waiting = []
        for origin, config, paper in todo:
            parent_id = config.pop("init", "")
            if parent_id and parent_id not in by_id:
                waiting.append((origin, {**config, "init": parent_id}, paper))
                continue
            run_id = config.pop("id", None)
            try:
                cfg = TrainConfig.from_dict(
                    {**config, **({"init": str(by_id[parent_id].run_dir())} if parent_id else {})}
                )
            except (ValueError, TypeError) as e:
                raise ValueError(f"{origin}: {e}") from None
            try:
                check_kind(cfg.dataset, evaluation.kind)
            except ValueError as e:
                raise ValueError(f"{origin}: {e}") from None
            if run_id:
                by_id[run_id] = cfg
            result.append(SweepRun(cfg, evaluation, origin, paper, cfg.init, str(run_id or "")))
        if len(waiting) == len(todo):
            origin, config, _ = waiting[0]
            raise ValueError(
                f"{origin}: fine-tunes from {config['init']!r}, which no entry of the sweep defines with that id"
            )
        todo = waiting
    return result


# ----------------------------------------------------------------------------- running


def check_writable(*dirs: Path) -> None:
    """Fail at once, in one line, when an output directory cannot be written."""
    for d in dirs:
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=d):
                pass
        except OSError as e:
            raise OSError(f"cannot write to {d} ({e.strerror}): free disk space or choose another directory") from None


def status(run: SweepRun) -> str:
    """Training status (runs.train_status), with "done" split into evaluated or not, and unfinished runs
    marked when another process trains them now (training elsewhere) or a killed one left a state
    (partial: it resumes)."""
    state = runs.train_status(run.config.run_dir(), TRAIN_VERSION)
    if state == "todo" and runs.is_locked(run.config.run_dir()):
        return "training elsewhere"
    if state == "todo" and (run.config.run_dir() / runs.STATE).exists():
        return "partial"
    if state == "done" and load_record(run.config.run_dir(), run.evaluation) is None:
        return "to evaluate"
    return state


def run_one(cfg: TrainConfig, evaluation: EvalConfig, threads: int) -> str:
    """Train one run (unless finished) and evaluate it (unless evaluated) with `threads` CPU threads. Returns
    what happened: trained, evaluated (only), failed (diverged), busy (another live process trains it) or
    waiting (its parent is not finished). Both executors call exactly this, so a run gives the same numbers
    locally and on Ray (CPU results depend on the thread count). The BLAS of numpy / scikit-learn (the probes) gets
    the same `threads`: left at one per core in each of several workers, it oversubscribes the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if cfg.init and runs.train_status(Path(cfg.init), TRAIN_VERSION) != "done":
            return "waiting"
        with threadpool_limits(threads):
            run_dir = train(cfg, progress=False)
            trained = runs.load_summary(run_dir).get("pid") == os.getpid()  # not another process that finished first
            evaluate_run(run_dir, evaluation, cfg.device, cfg.data_dir, progress=False)
        return "trained" if trained else "evaluated"
    except Diverged:
        return "failed"
    except runs.RunLocked:
        return "busy"
    finally:
        torch.set_num_threads(before)


def train_argv(cfg: TrainConfig) -> list[str]:
    """`python -m hypersphere train` options that rebuild `cfg` exactly."""
    argv = []
    for f in dataclasses.fields(TrainConfig):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, yaml.safe_dump(value, default_flow_style=True).strip()]
        else:
            argv += [flag, str(value)]
    return argv


def torchrun_command(cfg: TrainConfig, processes: int) -> list[str]:
    """torchrun training `cfg` on `processes` local processes; --standalone picks a free port (other jobs may hold
    torchrun's 29500)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "hypersphere",
        "train",
        "--quiet",
        *train_argv(cfg),
    ]


def run_torchrun(cfg: TrainConfig, evaluation: EvalConfig, processes: float) -> str:
    """Train one run with DDP on `processes` local processes (one per GPU; gloo on CPU), then evaluate it here."""
    if processes < 1 or processes != int(processes):
        raise ValueError(
            f"the torchrun executor needs a whole number of processes per run (--gpus-per-run), got {processes}"
        )
    if cfg.init and runs.train_status(Path(cfg.init), TRAIN_VERSION) != "done":
        return "waiting"
    done = subprocess.run(torchrun_command(cfg, int(processes)), capture_output=True, text=True)
    if done.returncode != 0:
        if runs.train_status(cfg.run_dir(), TRAIN_VERSION) == "failed":
            return "failed"
        raise RuntimeError(f"torchrun training of {cfg.run_dir().name} failed:\n{done.stderr[-3000:]}")
    evaluate_run(cfg.run_dir(), evaluation, cfg.device, cfg.data_dir, progress=False)
    return "trained"


def results_table(sweep_runs: list[SweepRun]) -> pd.DataFrame:
    """One tidy row per run: config columns, loss weights, training summary, evaluation results, status,
    and the paper's numbers for table entries."""
    rows = []
    for run in sweep_runs:
        cfg, run_dir = run.config, run.config.run_dir()
        state = runs.train_status(run_dir, TRAIN_VERSION)
        row = {
            "run": run_dir.name,
            "run_dir": str(run_dir),
            "id": run.id,
            "status": state,
            "objective": cfg.canonical_objective,
            **{k: v for k, v in cfg.hashed().items() if k not in ("objective", "lr_decay_at", "snapshot_epochs")},
        }
        row["init"] = Path(cfg.init).name if cfg.init else "rand"
        row["base_lr"] = cfg.base_lr  # the learning rate it trains with: lr, or the linear scaling rule's when lr is 0
        row["augment"] = str(cfg.augment or "")
        objective = Objective.parse(cfg.objective)
        row.update({f"w_{name}": objective.weight(name) for name in TERMS})
        if state == "done":
            summary = runs.load_summary(run_dir)
            row.update({k: v for k, v in summary.items() if k not in ("config_hash", "run", "resumed", "pid", "host")})
            row["resumed"] = len(summary.get("resumed", []))
            record = load_record(run_dir, run.evaluation)
            if record is None:
                row["status"] = "to evaluate"
            else:
                row.update(record["results"])
                row["eval_seconds"] = record["seconds"]
        elif state == "failed":
            failed = runs.read_json(run_dir / runs.FAILED)
            row.update(
                {"failed_epoch": failed["epoch"], "failed_step": failed.get("step"), "failed_reason": failed["reason"]}
            )
        rows.append({**row, **run.paper})
    return pd.DataFrame(rows)


def trajectories(sweep_runs: list[SweepRun]) -> pd.DataFrame:
    """The evaluated snapshots of every run (Fig. 8): one row per run and snapshot epoch."""
    rows = []
    for run in sweep_runs:
        record = load_record(run.config.run_dir(), run.evaluation)
        rows += [{"run": run.config.run_dir().name, **point} for point in (record or {}).get("trajectory", [])]
    return pd.DataFrame(rows)


def write_table(sweep_runs: list[SweepRun], path: Path) -> pd.DataFrame:
    """results/<profile>/<sweep>.csv, and <sweep>.trajectories.csv when runs have evaluated snapshots."""
    df = results_table(sweep_runs)
    runs.atomic_write(Path(path), lambda f: f.write(df.to_csv(index=False).encode()))
    if len(traj := trajectories(sweep_runs)):
        runs.atomic_write(
            Path(path).with_suffix(".trajectories.csv"), lambda f: f.write(traj.to_csv(index=False).encode())
        )
    return df


def run_sweep(
    sweep_runs: list[SweepRun],
    table: Path,
    executor: str = "local",
    retry_failed: bool = False,
    workers: int = 1,
    gpus_per_run: float = 0.0,
    cpus_per_run: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every run whose record is missing (and failed ones with retry_failed), parents first.

    local: `workers` runs at a time (worker processes when > 1); ray: one Ray task per run, reserving
    `cpus_per_run` CPUs and `gpus_per_run` GPUs (fractions pack several runs on a GPU); torchrun: one run at a
    time on `gpus_per_run` processes (GPUs) with DDP (distributed.py). Each run uses `cpus_per_run` CPU threads (one by
    default: small encoders gain little from more, and threads stall badly when processes share cores)."""
    check_writable(*{r.config.run_dir().parent for r in sweep_runs}, Path(table).parent)
    wanted = ("todo", "partial", "training elsewhere", "stale", "to evaluate") + (("failed",) if retry_failed else ())
    states = {id(r): status(r) for r in sweep_runs}
    todo = [r for r in sweep_runs if states[id(r)] in wanted]
    if stale := [r for r in sweep_runs if states[id(r)] == "stale"]:
        print(
            f"{len(stale)} finished runs were trained by an older training-code version (now {TRAIN_VERSION}) "
            f"and are retrained, e.g. {stale[0].config.run_dir().name}",
            file=sys.stderr,
        )
    for run in todo:
        (run.config.run_dir() / runs.FAILED).unlink(missing_ok=True)
    bar = tqdm(total=len(todo), desc=f"sweep {Path(table).stem}", unit="run", disable=not progress)
    outcomes = collections.Counter()

    def finished(run: SweepRun, outcome: str) -> None:
        outcomes[outcome] += 1
        write_table(sweep_runs, table)
        bar.set_postfix_str(run.config.run_dir().name)
        bar.update()

    if executor == "local" and workers == 1:
        for run in todo:
            finished(run, run_one(run.config, run.evaluation, cpus_per_run))
    elif executor == "local":
        with ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=reset_start_method
        ) as pool:
            _schedule(
                todo,
                lambda run: pool.submit(run_one, run.config, run.evaluation, cpus_per_run),
                lambda futures: next(iter(wait(futures, return_when=FIRST_COMPLETED).done)),
                finished,
            )
    elif executor == "torchrun":
        for run in todo:
            finished(run, run_torchrun(run.config, run.evaluation, gpus_per_run))
    elif executor == "ray":
        ray = _ray()
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run)(run_one)
        _schedule(
            todo,
            lambda run: task.remote(run.config, run.evaluation, cpus_per_run),
            lambda refs: ray.wait(refs, num_returns=1)[0][0],
            finished,
            ray.get,
        )
    else:
        raise ValueError(f"unknown executor {executor!r}; choose local, torchrun or ray")
    bar.close()
    if todo:
        print(
            f"{Path(table).stem}: "
            + ", ".join(f"{outcomes[k]} {k}" for k in ("trained", "evaluated", "failed"))
            + (f"; {outcomes['busy']} skipped, being trained by another process" if outcomes["busy"] else "")
            + (f"; {outcomes['waiting']} waiting for a parent that is not finished" if outcomes["waiting"] else ""),
            file=sys.stderr,
        )
    return write_table(sweep_runs, table)


def reset_start_method() -> None:
    """In a spawned worker, start its own child processes (the DataLoader workers that decode image files) the
    platform's default way: a spawned process inherits spawn, which re-imports torch in every DataLoader worker
    (the streamed ImageNet evaluation took 7x the CPU time)."""
    multiprocessing.set_start_method(None, force=True)


def _schedule(
    todo: list[SweepRun],
    submit: Callable,
    wait_one: Callable,
    finished: Callable[[SweepRun, str], None],
    result: Callable = lambda future: future.result(),
) -> None:
    """Submit every run whose parent is neither pending nor running, wait for one to finish, repeat:
    fine-tunes start once their parent's record is complete."""
    pending, running = list(todo), {}
    while pending or running:
        busy = {str(r.config.run_dir()) for r in [*pending, *running.values()]}
        for run in [r for r in pending if r.parent not in busy]:
            pending.remove(run)
            running[submit(run)] = run
        done = wait_one(list(running))
        outcome = result(done)  # re-raises a worker's exception here
        finished(running.pop(done), outcome)


def _ray():
    """Ray, connected to the cluster at $RAY_ADDRESS or a new local instance. Runs write to the same run
    directories, which every node must see (a shared filesystem), so caching works as locally."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'hypersphere[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    return ray
