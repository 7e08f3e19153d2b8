"""Run records: `runs/<name>-<hash of config>/` holding config.json, log.csv, checkpoint.pt and
result.json. Every file is written atomically (temp file + rename), so a record is either complete
or absent; `result.json` is written last and marks the run finished."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG, LOG, CHECKPOINT, RESULT, FAILED = "config.json", "log.csv", "checkpoint.pt", "result.json", "failed.json"


class RunError(RuntimeError):
    """A run record that cannot be used (corrupt, incomplete or from another config)."""


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a config dict (keys sorted, floats by repr)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def atomic_write(path: Path, write) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it onto `path`."""
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
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
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
        raise RunError(f"checkpoint {path} is corrupt or not a hypersphere checkpoint ({type(e).__name__}); "
                       f"delete {Path(path).parent} to retrain that run") from None


def is_complete(run_dir: Path) -> bool:
    """True when the run finished: result.json parses and matches config.json's hash."""
    try:
        config, result = read_json(run_dir / CONFIG), read_json(run_dir / RESULT)
    except RunError:
        return False
    return result.get("config_hash") == config_hash(config) and (run_dir / CHECKPOINT).exists()


def load_result(run_dir: Path) -> dict[str, Any]:
    """The result of a finished run, checked against its config."""
    run_dir = Path(run_dir)
    config, result = read_json(run_dir / CONFIG), read_json(run_dir / RESULT)
    if result.get("config_hash") != config_hash(config):
        raise RunError(f"{run_dir / RESULT} was produced by another config than {run_dir / CONFIG}; "
                       f"delete {run_dir} to retrain it")
    return result
