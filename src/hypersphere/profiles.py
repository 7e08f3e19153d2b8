"""Profiles: one file per scale of the replication, configs/profiles/<name>.yaml, read by the Makefile,
the CLI, the notebooks and the tests.

    description: what this profile is for
    sweeps: [dim2, lambda, cloud, finetune]   # configs/sweeps/<name>/*.yaml, trained in this order
    sweeps_from: quick                        # optional: read the sweep files of configs/sweeps/quick/ instead
    workers: 2                                # runs trained at a time by the local executor ("auto": all cores)
    notebooks:                                # sizes each notebook uses at this scale
      01_theory: {pairs: 4096}
    decide: {power: 0.8, most: 20}            # optional: the two-stage design of `make decide` (decide.py)

Outputs never mix between profiles: results/<name>/, figures/<name>/, build/<name>/.
The environment variable HYPERSPHERE_SIZES (JSON, {notebook: {size: value}}) replaces sizes the profile sets, and
only those: the rehearsal (rehearse.py) runs the paper profile's notebooks, code paths and all, at small sizes.
A study of your own: `python -m hypersphere profile new NAME --from quick` copies a profile and its sweeps.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import resources, userfiles

SIZES_VARIABLE = "HYPERSPHERE_SIZES"  # JSON {notebook: {size: value}}: replaces sizes the profile sets


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    sweeps: tuple[str, ...]
    workers: int
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps_from: str = ""
    decide: dict[str, Any] = field(default_factory=dict)

    @property
    def sweeps_dir(self) -> Path:
        return resources.configs() / "sweeps" / (self.sweeps_from or self.name)

    @property
    def results_dir(self) -> Path:
        return Path("results") / self.name

    @property
    def figures_dir(self) -> Path:
        return Path("figures") / self.name

    @property
    def build_dir(self) -> Path:
        return Path("build") / self.name

    def sizes(self, notebook: str) -> dict[str, Any]:
        """The sizes `notebook` runs with at this profile (an error names the file to edit when absent), with those
        that $HYPERSPHERE_SIZES replaces (SIZES_VARIABLE)."""
        if notebook not in self.notebooks:
            raise KeyError(
                f"profile {self.name!r} sets no sizes for notebook {notebook!r}: add them under "
                f"`notebooks:` in {path(self.name)}"
            )
        sizes = dict(self.notebooks[notebook])
        replaced = json.loads(os.environ.get(SIZES_VARIABLE) or "{}").get(notebook, {})
        if unknown := set(replaced) - set(sizes):
            raise KeyError(
                f"${SIZES_VARIABLE} sets sizes {sorted(unknown)} of {notebook} that profile {self.name!r} "
                f"does not: it can only replace {sorted(sizes)}"
            )
        return {**sizes, **replaced}


def path(name: str) -> Path:
    return resources.configs() / "profiles" / f"{name}.yaml"


def names() -> list[str]:
    return sorted(p.stem for p in (resources.configs() / "profiles").glob("*.yaml"))


def load(name: str) -> Profile:
    """The profile `name`, validated: its sweeps exist and workers is a positive number or "auto"."""
    if not path(name).exists():
        raise FileNotFoundError(
            f"no profile {name!r} ({path(name)}); choose from {', '.join(names())} or create "
            f"one with `python -m hypersphere profile new {name} --from quick`"
        )
    spec = userfiles.load_yaml(path(name), userfiles.PROFILE_KEYS, "a profile")
    if "sweeps" not in spec:
        raise userfiles.UserFileError(
            f"{path(name)}: names no sweeps; add one line `sweeps: [cloud, lambda]` naming "
            f"files of configs/sweeps/{name}/ (`sweeps: []` for none)"
        )
    workers = spec.get("workers", 1)
    workers = (os.cpu_count() or 1) if workers == "auto" else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"{path(name)}: workers must be a positive integer or 'auto', got {spec.get('workers')!r}")
    decide = spec.get("decide") or {}
    power, most = decide.get("power", 0.8), decide.get("most", 20)
    if (
        set(decide) - {"power", "most"}
        or not isinstance(power, (int, float))
        or not 0 < power < 1
        or not isinstance(most, int)
        or most < 2
    ):
        raise ValueError(
            f"{path(name)}: decide must be {{power: a number in (0, 1), most: an integer of 2 or more}}, got {decide}"
        )
    profile = Profile(
        name,
        spec.get("description") or "",
        tuple(spec["sweeps"] or []),
        workers,
        spec.get("notebooks") or {},
        spec.get("sweeps_from", ""),
        decide,
    )
    if missing := [s for s in profile.sweeps if not (profile.sweeps_dir / f"{s}.yaml").exists()]:
        raise ValueError(f"{path(name)} names sweeps {missing} that {profile.sweeps_dir} does not hold")
    return profile


def new(name: str, base: str = "quick") -> Path:
    """Copy profile `base` and its sweeps to a new profile `name` to edit; returns the new profile file."""
    source = load(base).sweeps_dir
    if path(name).exists():
        raise FileExistsError(f"profile {name!r} exists ({path(name)}); pick another name or edit that file")
    shutil.copytree(source, resources.configs() / "sweeps" / name)
    lines = path(base).read_text().splitlines(keepends=True)  # its own copies now: no sweeps_from
    path(name).write_text("".join(line for line in lines if not line.startswith("sweeps_from:")))
    return path(name)
