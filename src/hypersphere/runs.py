"""Run records. A run is one trained encoder, `runs/<name>-<hash of its training config>/`:

    config.json          the training config (what changes the trained weights)
    log.csv              one row per epoch
    checkpoint.pt        the final encoder (and head) weights
    state.pt             while training: everything needed to resume (weights, optimiser, schedule, RNGs, log)
    lock                 held (flock) by the process training the run; the kernel releases it when that dies
    snapshots/epoch-K.pt encoder weights at the config's snapshot epochs (Fig. 8 trajectories)
    train.json           the training summary, written last: its presence marks the run finished
    failed.json          written instead when the loss diverged
    evals/<kind>-<hash>.json   one record per evaluation config (probe, taps, folds, ...)

Training and evaluation are separate records: a new probe re-evaluates a cached encoder without
retraining it. Every file is written atomically (temp file + rename), so a record is complete or absent.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG, LOG, CHECKPOINT, TRAIN, FAILED = "config.json", "log.csv", "checkpoint.pt", "train.json", "failed.json"
SNAPSHOTS, EVALS, STATE, LOCK = "snapshots", "evals", "state.pt", "lock"


class RunError(RuntimeError):
    """A run record that cannot be used (corrupt, incomplete or from another config)."""


class RunLocked(RunError):
    """Another live process is training this run (two sweeps sharing a runs directory)."""


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a config dict (keys sorted, floats by repr)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def atomic_write(path: Path, write) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))  # every row's keys
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue().encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the run is incomplete; rerun it (finished runs are skipped)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is corrupt ({e}); delete {Path(path).parent} to retrain that run") from None


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"no checkpoint at {path}: train that run first (`python -m hypersphere train ...`)") from None
    except Exception as e:  # truncated or foreign files raise many different errors inside torch
        raise RunError(
            f"checkpoint {path} is corrupt or not a hypersphere checkpoint ({type(e).__name__}); "
            f"delete {Path(path).parent} to retrain that run"
        ) from None


# ----------------------------------------------------------------------------- training records


def train_status(run_dir: Path, version: int) -> str:
    """done (finished by training code `version`), stale (finished by another version: retrain),
    failed (diverged) or todo (absent, or killed before it finished)."""
    run_dir = Path(run_dir)
    try:
        config, summary = read_json(run_dir / CONFIG), read_json(run_dir / TRAIN)
    except RunError:
        return "failed" if (run_dir / FAILED).exists() else "todo"
    if summary.get("config_hash") != config_hash(config) or not (run_dir / CHECKPOINT).exists():
        return "todo"
    return "done" if summary.get("train_version") == version else "stale"


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The training summary of a finished run, checked against its config."""
    run_dir = Path(run_dir)
    config, summary = read_json(run_dir / CONFIG), read_json(run_dir / TRAIN)
    if summary.get("config_hash") != config_hash(config):
        raise RunError(
            f"{run_dir / TRAIN} was produced by another config than {run_dir / CONFIG}; delete {run_dir} to retrain it"
        )
    return summary


@contextlib.contextmanager
def lock(run_dir: Path):
    """Hold the run's lock while training it; RunLocked when another live process holds it. An flock is
    released by the kernel when its process dies (kill -9 included), so a killed sweep never blocks a run;
    it works across machines on NFS (Linux emulates it with POSIX locks there)."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise RunLocked(
                f"{Path(run_dir).name} is being trained by {holder}; it is skipped here "
                f"(rerun when that process has finished, or stop it)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(run_dir: Path) -> bool:
    """True while a live process trains the run."""
    if not (Path(run_dir) / LOCK).exists():
        return False
    try:
        with lock(run_dir):
            return False
    except RunLocked:
        return True


def start_training(run_dir: Path, config: dict[str, Any]) -> None:
    """Clear what an earlier (stale, failed or killed) training of this run left, then write its config.
    Evaluations and snapshots belong to the weights they were computed from, so they go too."""
    run_dir = Path(run_dir)
    for name in (TRAIN, FAILED, CHECKPOINT, STATE):
        (run_dir / name).unlink(missing_ok=True)
    for name in (SNAPSHOTS, EVALS):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    write_json(run_dir / CONFIG, config)


def load_state(run_dir: Path, config: dict[str, Any], version: int) -> dict[str, Any] | None:
    """The resumable training state of a killed run of this config and training-code version, else None
    (absent, from another config or version, or unreadable: the run then starts over)."""
    path = Path(run_dir) / STATE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a state.pt is written atomically; anything unreadable is from a foreign source
        return None
    return state if (state.get("config_hash"), state.get("train_version")) == (config_hash(config), version) else None


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch-{epoch}.pt"


# ----------------------------------------------------------------------------- evaluation records


def eval_path(run_dir: Path, kind: str, config: dict[str, Any]) -> Path:
    return Path(run_dir) / EVALS / f"{kind}-{config_hash(config)}.json"


def load_eval(run_dir: Path, kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation record of this run for this evaluation config, or None when it has none yet."""
    path = eval_path(run_dir, kind, config)
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("config") == config else None
