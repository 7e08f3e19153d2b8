"""The project's shipped files: configs/ (profiles and sweeps) and data/reference/ (the paper's numbers).

In a checkout they are read from the repository, where a reader finds them; an installed wheel carries
them inside the package (pyproject.toml maps them to hypersphere/configs and hypersphere/reference), so
nothing here assumes an editable install or a working directory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import userfiles

_PACKAGE = Path(__file__).resolve().parent


def _folder(in_package: str, in_repository: str) -> Path:
    for path in (_PACKAGE / in_package, _PACKAGE.parents[1] / in_repository):
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"{in_repository}/ not found beside the package ({_PACKAGE}); reinstall hypersphere "
        f"(`make setup`, or pip install .) so that its shipped files come with it"
    )


def configs() -> Path:
    """The folder holding profiles/<name>.yaml and sweeps/<profile>/<name>.yaml."""
    return _folder("configs", "configs")


def reference(name: str) -> Path:
    """A file of data/reference/ (the paper's numbers), by name or by a path ending in data/reference/<name>."""
    path = _folder("reference", "data/reference") / Path(name).name
    if not path.exists():
        raise FileNotFoundError(f"no reference file {path.name} in {path.parent}; see {path.parent / 'README.md'}")
    return path


# the appendix tables' loss columns: (term, weight column, parameter column, parameter name)
LOSS_COLUMNS = (
    ("contrastive", "contr_w", "contr_tau", "tau"),
    ("align", "align_w", "align_alpha", "alpha"),
    ("uniform", "unif_w", "unif_t", "t"),
)


def row_objective(row) -> str:
    """The objective of a row of an appendix table (data/reference/README.md) in canonical form, e.g.
    3*align(alpha=2) + uniform(t=3)."""
    from .losses import Objective

    return str(
        Objective.parse(
            " + ".join(f"{row[w]:g}*{term}({p}={row[c]:g})" for term, w, c, p in LOSS_COLUMNS if row[w] > 0)
        )
    )


def reference_table(name: str) -> pd.DataFrame:
    """A CSV of data/reference/ as a DataFrame (`name` without the .csv suffix)."""
    return userfiles.load_csv(reference(f"{name}.csv"), "a table of the paper's numbers (data/reference/README.md)")
