"""Verdict files and the HTML report of a whole profile.

Each notebook writes figures/<profile>/verdicts_<notebook>.json, one entry per paper item it judges
({"item", "claim", "holds", "evidence", "figures"}; the items compute them, hypersphere.items), and
`build_report` renders every executed notebook of build/<profile>/ to HTML with an index.html mapping each
paper item to its notebook, figures (shown inline) and verdict; `publish` copies the executed notebooks, cleaned of
what changes from run to run, with the figures and the index into docs/<profile>/, where GitHub renders them:

    python -m hypersphere report --profile quick
    python -m hypersphere publish --profile quick
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import runs
from .items import ITEMS


# ----------------------------------------------------------------------------- tables and verdicts


def markdown_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`, which this project does not install)."""

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", r"\|")

    head = [str(c) for c in df.columns]
    rows = [[cell(v) for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_verdicts(figures_dir: str | Path, notebook: str, profile: str, verdicts: list[dict[str, Any]]) -> Path:
    """figures_dir/verdicts_<notebook>.json: {"notebook", "profile", "verdicts": [{"item", "claim", "holds",
    "evidence", "figures"}]}; holds is true, false or null (could not be decided, e.g. too few runs)."""
    for v in verdicts:
        if missing := {"item", "claim", "holds", "evidence"} - set(v):
            raise ValueError(f"verdict {v} lacks {sorted(missing)}")
        v["holds"] = None if v["holds"] is None else bool(v["holds"])
        v.setdefault("figures", [])
    path = Path(figures_dir) / f"verdicts_{notebook}.json"
    runs.write_json(path, {"notebook": notebook, "profile": profile, "verdicts": verdicts})
    return path


def read_verdicts(figures_dir: str | Path) -> list[dict[str, Any]]:
    """All verdict entries of figures_dir/verdicts_*.json, each with its notebook and profile."""
    out = []
    for path in sorted(Path(figures_dir).glob("verdicts_*.json")):
        doc = json.loads(path.read_text())
        out += [{**v, "notebook": doc["notebook"], "profile": doc.get("profile", "")} for v in doc["verdicts"]]
    return out


# ----------------------------------------------------------------------------- the HTML report


def _notebook_html(src: Path, dst: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(src, as_version=4))
    dst.write_text(body, encoding="utf-8")


def _table_html(markdown: str) -> str:
    """A table file written by `markdown_table` (a caption line, then the table) as an HTML table."""
    lines = [line for line in markdown.splitlines() if line.strip()]
    rows = [
        [html.escape(c.strip().replace(r"\|", "|")) for c in line.strip("|").split(" | ")]
        for line in lines
        if line.startswith("|") and not line.startswith("|---")
    ]
    caption = " ".join(html.escape(line) for line in lines if not line.startswith("|"))
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="figure"><caption>{caption}</caption><tr>{head}</tr>{body}</table>'


def _executed(build_dir: Path) -> list[Path]:
    notebooks = sorted(p for p in build_dir.glob("*.ipynb") if not p.name.endswith(".tmp.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {build_dir}: run `make notebooks` first")
    return notebooks


def build_report(build_dir: str | Path, figures_dir: str | Path, out_dir: str | Path) -> Path:
    """Render every executed notebook of build_dir to out_dir/<notebook>.html and write out_dir/index.html:
    one row per paper item with its notebook, figures (PNG inline) and "replicates on this profile?" verdict."""
    build_dir, figures_dir, out_dir = Path(build_dir), Path(figures_dir), Path(out_dir)
    notebooks = _executed(build_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        _notebook_html(nb, out_dir / f"{nb.stem}.html")
    return write_index(build_dir, figures_dir, out_dir, {nb.stem for nb in notebooks}, ".html")


def write_index(build_dir: Path, figures_dir: Path, out_dir: Path, rendered: set[str], suffix: str) -> Path:
    """out_dir/index.html: one row per paper item with its notebook (out_dir/<notebook><suffix>), its figures
    (each PNG shown inline) and its verdict and evidence, from figures_dir/verdicts_*.json; items whose notebook the
    build did not execute and that no verdict names are left out (a profile may run a few notebooks)."""
    verdicts = read_verdicts(figures_dir)
    if any(v["profile"] == build_dir.name for v in verdicts):  # build/<profile>: figures/ may hold other profiles'
        verdicts = [v for v in verdicts if v["profile"] == build_dir.name]

    def link(path: Path, text: str) -> str:
        return f'<a href="{html.escape(os.path.relpath(path, out_dir))}">{html.escape(text)}</a>'

    def figure_links(names) -> str:
        return " ".join(
            link(figures_dir / f"{name}.{ext}", f"{name}.{ext}")
            for name in names
            for ext in ("png", "pdf", "csv", "md", "tex")
            if (figures_dir / f"{name}.{ext}").exists()
        )

    def notebook_link(name: str) -> str:
        return link(out_dir / f"{name}{suffix}", name) if name in rendered else html.escape(name)

    def inline(name: str) -> str:
        """A figure shown in the page: its PNG, or for a table its markdown file as an HTML table."""
        if (figures_dir / f"{name}.png").exists():
            src = html.escape(os.path.relpath(figures_dir / f"{name}.png", out_dir))
            return f'<br><img src="{src}" alt="{html.escape(name)}" style="max-width:420px">'
        return _table_html((figures_dir / f"{name}.md").read_text()) if (figures_dir / f"{name}.md").exists() else ""

    def figure_cell(names) -> str:
        return figure_links(names) + "".join(inline(n) for n in names)

    rows = []
    for item, (where, figures) in ITEMS.items():
        found = [v for v in verdicts if v["item"] == item]
        if not found and where in rendered:
            rows.append((item, notebook_link(where), figure_cell(figures), "", "no verdict (see the notebook)", ""))
        for v in found:
            verdict = {True: "yes", False: "no", None: "undecided"}[v["holds"]]
            rows.append(
                (
                    item,
                    notebook_link(v["notebook"]),
                    figure_cell(v["figures"] or figures),
                    html.escape(v["claim"]),
                    verdict,
                    html.escape(v["evidence"]),
                )
            )
    colour = {"yes": "#d4f4dd", "no": "#fbd9d3", "undecided": "#fff3c4"}
    body = "\n".join(
        f'<tr><td>{i}</td><td>{n}</td><td style="background:{colour.get(v, "none")}"><b>{v}</b></td>'
        f'<td>{c}</td><td>{e}</td><td>{f}</td></tr>'
        for i, n, f, c, v, e in rows
    )
    profiles = sorted({v["profile"] for v in verdicts if v["profile"]})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hypersphere replication report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}} th{{background:#eee}}</style></head>
<body><h1>Wang &amp; Isola (ICML 2020): replication report</h1>
<p>Build: <code>{html.escape(build_dir.name)}</code>; profile(s) of the verdicts: \
{html.escape(", ".join(profiles) or "none")}.
"Replicates?" is computed by each notebook from this profile's numbers (small profiles train small encoders on
small data: a "no" there says little about the paper); "undecided" means its seeds' interval does not settle it.</p>
<table><tr><th>paper item</th><th>notebook</th><th>replicates?</th><th>claim</th><th>evidence</th><th>figures</th></tr>
{body}</table>
<h2>Notebooks</h2><ul>{"".join(f"<li>{link(out_dir / f'{s}{suffix}', s)}</li>" for s in sorted(rendered))}</ul>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# ----------------------------------------------------------------------------- published copies

VOLATILE_METADATA = ("papermill", "execution")  # one run's timings and paths
INJECTED = "injected-parameters"  # papermill's tag of the parameters cell it inserts


def clean_notebook(nb, workdir: Path):
    """An executed notebook as published: no run timings or absolute paths (paths under `workdir` become
    relative), no stderr (progress bars, warnings), cell metadata reduced to tags, and a fixed id for the
    parameters cell papermill injects (it draws a random one each run); the rest as executed."""
    import nbformat

    for key in VOLATILE_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.metadata = {"tags": cell.metadata["tags"]} if cell.metadata.get("tags") else {}
        if INJECTED in cell.metadata.get("tags", []):
            cell.id = INJECTED
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    text = nbformat.writes(nb).replace(f"{workdir}/", "").replace(str(workdir), ".")
    return nbformat.reads(text, as_version=4)


def publish(build_dir: str | Path, figures_dir: str | Path, out_dir: str | Path, workdir: str | Path = ".") -> Path:
    """Copy build_dir's executed notebooks (`clean_notebook`), figures_dir's PNG figures, markdown tables, verdict
    files and plans, and an index.html linking them into out_dir; files there that this call did not write are removed,
    so the copy is exactly this build's. Returns the index."""
    import nbformat

    build_dir, figures_dir, out_dir = Path(build_dir), Path(figures_dir), Path(out_dir)
    notebooks, workdir = _executed(build_dir), Path(workdir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for nb in notebooks:
        text = nbformat.writes(clean_notebook(nbformat.read(nb, as_version=4), workdir)) + "\n"
        runs.atomic_write(out_dir / nb.name, lambda f, text=text: f.write(text.encode()))
        written.add(nb.name)
    patterns = ("*.png", "*.md", "verdicts_*.json", "*_plan.json")  # _plan: a design fixed before its runs (decide.py)
    for path in sorted(p for pattern in patterns for p in figures_dir.glob(pattern)):
        shutil.copyfile(path, out_dir / path.name)
        written.add(path.name)
    index = write_index(build_dir, out_dir, out_dir, {nb.stem for nb in notebooks}, ".ipynb")
    written.add(index.name)
    for stale in out_dir.iterdir():
        if stale.is_file() and stale.name not in written:
            stale.unlink()
    return index
