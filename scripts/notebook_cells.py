"""What the generated figure notebooks share (scripts/make_notebook_*.py): the parameters cell, the setup cell
every notebook starts with, and writing the notebook clean (no outputs) into notebooks/."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

md, code = new_markdown_cell, new_code_cell


def parameters():
    """The cell papermill overrides (notebook.parameters)."""
    return code('profile = "quick"   # a profile of configs/profiles/: its sizes, sweeps and output folders\n'
                'data_dir = "data"\ndevice = "auto"', metadata={"tags": ["parameters"]})


def setup(name: str, imports: str, extra: str = ""):
    """The setup cell: `imports` from hypersphere, one torch thread, the profile `P` and its sizes `S` for `name`."""
    return code(f'''import warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a kernel without ipywidgets
import matplotlib.pyplot as plt
import pandas as pd
import torch

{imports}

torch.set_num_threads(1)  # small work; more threads only contend on shared CPUs
P = profiles.load(profile)
S = P.sizes("{name}")
plots.set_style()
print(f"profile {{P.name}}: {{P.description.strip()}}")''' + (f"\n{extra}" if extra else ""))


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "hypersphere", "display_name": "hypersphere (.venv)", "language": "python"},
        "language_info": {"name": "python"}})
    out = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nbformat.write(nb, out)
    print(out)
