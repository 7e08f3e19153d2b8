"""Execute one figure notebook at a profile through papermill: the one place the notebooks' parameters
are written (the Makefile and the tests both call it).

    python -m hypersphere notebook notebooks/03_metrics_vs_accuracy.ipynb --profile quick

Writes build/<profile>/<notebook>.ipynb (through a temporary file, so a failed run leaves no executed copy)
with the working directory `workdir`, where results/<profile>/ and figures/<profile>/ live.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import profiles


def parameters(profile: str, data_dir: str = "data", device: str = "auto") -> dict[str, str]:
    """Every notebook's parameters; each reads its sizes and folders from the profile file."""
    return {"profile": profile, "data_dir": str(Path(data_dir).resolve()), "device": device}


def kernel() -> str:
    """The project's kernel when registered (`make setup` does it), else the running interpreter's python3."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("hypersphere")
        return "hypersphere"
    except NoSuchKernel:
        return "python3"


def execute(
    notebook: str | Path,
    profile: str,
    workdir: str | Path = ".",
    data_dir: str = "data",
    device: str = "auto",
    progress: bool = True,
) -> Path:
    import papermill

    prof = profiles.load(profile)
    workdir = Path(workdir).resolve()
    out = workdir / prof.build_dir / Path(notebook).name
    tmp = out.with_suffix(".tmp.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    (workdir / prof.figures_dir).mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(Path(notebook).resolve()),
        str(tmp),
        parameters=parameters(profile, data_dir, device),
        kernel_name=kernel(),
        cwd=str(workdir),
        progress_bar=progress,
        request_save_on_cell_execute=True,
    )
    os.replace(tmp, out)
    return out
