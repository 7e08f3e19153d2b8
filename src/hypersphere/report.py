"""Verdict files and the HTML report of a whole profile.

Each notebook writes figures/<profile>/verdicts_<notebook>.json, one entry per paper item it judges
({"item", "claim", "holds", "evidence", "figures"}; the items compute them, hypersphere.items), and
`build_report` renders every executed notebook of build/<profile>/ to HTML with an index.html mapping each
paper item to its notebook, figures and verdict:

    python -m hypersphere report --profile quick
"""
from __future__ import annotations

import datetime
import html
import json
import os
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


def build_report(build_dir: str | Path, figures_dir: str | Path, out_dir: str | Path) -> Path:
    """Render every executed notebook of build_dir to out_dir/<notebook>.html and write out_dir/index.html:
    one row per paper item with its notebook, figure files and "replicates on this profile?" verdict."""
    build_dir, figures_dir, out_dir = Path(build_dir), Path(figures_dir), Path(out_dir)
    notebooks = sorted(p for p in build_dir.glob("*.ipynb") if not p.name.endswith(".tmp.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {build_dir}: run `make notebooks` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        _notebook_html(nb, out_dir / f"{nb.stem}.html")
    rendered = {nb.stem for nb in notebooks}
    verdicts = read_verdicts(figures_dir)
    if any(v["profile"] == build_dir.name for v in verdicts):  # build/<profile>: figures/ may hold other profiles'
        verdicts = [v for v in verdicts if v["profile"] == build_dir.name]

    def link(path: Path, text: str) -> str:
        return f'<a href="{html.escape(os.path.relpath(path, out_dir))}">{html.escape(text)}</a>'

    def figure_links(names) -> str:
        return " ".join(link(figures_dir / f"{name}.{ext}", f"{name}.{ext}") for name in names
                        for ext in ("png", "pdf", "csv", "md", "tex") if (figures_dir / f"{name}.{ext}").exists())

    def notebook_link(name: str) -> str:
        return link(out_dir / f"{name}.html", name) if name in rendered else html.escape(name)

    rows = []
    for item, (where, figures) in ITEMS.items():
        found = [v for v in verdicts if v["item"] == item]
        if not found:
            status = ("" if where.startswith("not replicated") else
                      "no verdict (see the notebook)" if where in rendered else "not built")
            rows.append((item, notebook_link(where), figure_links(figures), "", status, ""))
        for v in found:
            verdict = {True: "yes", False: "no", None: "undecided"}[v["holds"]]
            rows.append((item, notebook_link(v["notebook"]), figure_links(v["figures"] or figures),
                         html.escape(v["claim"]), verdict, html.escape(v["evidence"])))
    colour = {"yes": "#d4f4dd", "no": "#fbd9d3", "undecided": "#fff3c4"}
    body = "\n".join(
        f'<tr><td>{i}</td><td>{n}</td><td>{f}</td><td>{c}</td>'
        f'<td style="background:{colour.get(v, "none")}"><b>{v}</b></td><td>{e}</td></tr>'
        for i, n, f, c, v, e in rows)
    profiles = sorted({v["profile"] for v in verdicts if v["profile"]})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hypersphere replication report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}} th{{background:#eee}}</style></head>
<body><h1>Wang &amp; Isola (ICML 2020): replication report</h1>
<p>Build: <code>{html.escape(str(build_dir))}</code>; profile(s) of the verdicts: {html.escape(", ".join(profiles) or "none")};
written {datetime.datetime.now().isoformat(timespec="seconds")}. "Replicates?" is computed by each notebook from this
profile's numbers (small profiles train small encoders on small data: a "no" there says little about the paper).</p>
<table><tr><th>paper item</th><th>notebook</th><th>figures</th><th>claim</th><th>replicates?</th><th>evidence</th></tr>
{body}</table>
<h2>Notebooks</h2><ul>{"".join(f"<li>{link(out_dir / f'{s}.html', s)}</li>" for s in sorted(rendered))}</ul>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
