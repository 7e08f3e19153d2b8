"""What the figure notebooks (02-06) share, and the HTML report of a whole profile.

- Reading a sweep's results table (results/<profile>/<sweep>.csv) and dropping runs that did not finish.
- Loss families of Figure 5a and Table 1 (+ contrastive only, o align/uniform only, triangle all three mixed).
- Statistics the paper does not give for Figure 5a: Spearman rank correlations with bootstrap confidence
  intervals, an out-of-sample (cross-validated) linear combination of L_align and L_uniform, and "pick the
  encoder with the best combined metric" as a model-selection rule.
- Verdict files: each notebook writes figures_dir/verdicts_<notebook>.json, one entry per paper item it
  checks ({"item", "claim", "holds", "evidence", "figures"}), and `build_report` renders every executed
  notebook of build/<profile>/ to HTML with an index.html mapping each paper item to its notebook, figures
  and verdict:

    python -m hypersphere.report build/quick figures build/quick/report
"""
from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

from . import runs

FAMILIES = ("contrastive only", "align + uniform only", "all three")
FAMILY_MARKERS = {"contrastive only": "+", "align + uniform only": "o", "all three": "^"}

# Every item of the paper (PAPER.md section 3): the notebook that covers it and its figures, or why none does.
PAPER_ITEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Theorem 1": ("01_theory", ("theorem1_convergence",)),
    "Propositions 1-2": ("01_theory", ("prop1_optimized_points", "prop2_convergence", "uniformity_bound")),
    "Figure 3": ("02_hypersphere_2d", ("fig3_hypersphere_2d",)),
    "Figure 4": ("02_hypersphere_2d", ("fig4_potentials",)),
    "Figure 4 (synthetic)": ("01_theory", ("fig4_synthetic",)),
    "Figure 5a": ("03_metrics_vs_accuracy", ("fig5a_metrics_vs_accuracy", "fig5a_statistics", "fig5a_ours_vs_paper")),
    "Figure 5b": ("not replicated: needs NYU-Depth-V2 depth prediction", ()),
    "Figure 7": ("04_weighting", ("fig7_weighting",)),
    "Figure 8": ("05_finetuning", ("fig8_finetuning",)),
    "Figure 9a": ("not replicated: needs ImageNet-100 with MoCo", ()),
    "Figure 9b": ("not replicated: needs BookCorpus with Quick-Thought", ()),
    "Table 1": ("06_table1", ("table1",)),
    "Table 2": ("not replicated: needs NYU-Depth-V2", ()),
    "Table 3": ("not replicated: needs ImageNet-100", ()),
    "Table 4": ("not replicated: needs BookCorpus", ()),
}


# ----------------------------------------------------------------------------- results tables

def load_results(results_dir: str | Path, sweep: str, need: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
    """The finished runs of results_dir/<sweep>.csv and a one-line account of what was dropped.

    Runs whose status is not "done" (failed: diverged; todo: not trained yet) are dropped; `need` names
    columns the caller cannot do without (a clear error names the fix when one is missing).
    """
    path = Path(results_dir) / f"{sweep}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no results table {path}: run `make sweep PROFILE=<profile>` first "
                                f"(or pass results_dir=<folder holding {sweep}.csv>)")
    df = pd.read_csv(path, dtype={"id": str, "init": str}, keep_default_na=True)
    if missing := [c for c in ("status", *need) if c not in df.columns]:
        raise ValueError(f"{path} lacks columns {missing}: an older version wrote it; rewrite it with `python -m "
                         f"hypersphere sweep {sweep} --profile <profile>` (finished runs are not retrained)")
    df["id"] = df["id"].fillna("") if "id" in df.columns else ""
    done = df[df["status"] == "done"].reset_index(drop=True)
    counts = df["status"].value_counts()
    dropped = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "done")
    note = f"{path.name}: {len(done)} of {len(df)} runs finished" + (f"; dropped {dropped}" if dropped else "")
    return done, note


def loss_family(w_contrastive: float, w_align: float, w_uniform: float) -> str:
    """Figure 5a / Table 1 family of an objective from its loss weights ("" for none of them)."""
    if w_contrastive > 0:
        return "all three" if (w_align > 0 or w_uniform > 0) else "contrastive only"
    return "align + uniform only" if (w_align > 0 or w_uniform > 0) else ""


def add_family(df: pd.DataFrame) -> pd.DataFrame:
    """A `family` column from the w_* columns (supervised runs get "")."""
    sup = df["supervised"].astype(str).str.lower() == "true" if "supervised" in df else False
    fam = [loss_family(c, a, u) for c, a, u in zip(df["w_contrastive"], df["w_align"], df["w_uniform"])]
    return df.assign(family=np.where(sup, "", fam))


# ----------------------------------------------------------------------------- statistics (Figure 5a)

def spearman(x, y) -> float:
    """Spearman rank correlation; nan when fewer than 3 points or either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def bootstrap_spearman(x, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Spearman rho of (x, y) and its percentile-bootstrap confidence interval (resampling the points with
    replacement; resamples where a side is constant are skipped). Returns (rho, low, high)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = spearman(x, y)
    if np.isnan(rho):
        return rho, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    # Spearman = Pearson correlation of (tie-averaged) ranks, for all resamples at once
    boots = _pearson_rows(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))
    boots = boots[np.isfinite(boots)]  # resamples where one side is constant
    alpha = (1 - level) / 2
    return rho, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / den


def fit_linear(X, y) -> np.ndarray:
    """Least-squares weights [intercept, w_1, ..., w_k] of y ~ X."""
    X = np.column_stack([np.ones(len(X)), np.asarray(X, float)])
    return np.linalg.lstsq(X, np.asarray(y, float), rcond=None)[0]


def cv_predictions(X, y, folds: int = 5, repeats: int = 10, seed: int = 0) -> np.ndarray:
    """Out-of-sample predictions of a linear regression y ~ X: each point is predicted only by fits that did
    not see it, averaged over `repeats` random splits into `folds` folds (folds >= n: leave-one-out, once)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    if X.ndim == 1:
        X = X[:, None]
    n = len(y)
    if n < X.shape[1] + 3:
        raise ValueError(f"need at least {X.shape[1] + 3} points to cross-validate a linear fit on "
                         f"{X.shape[1]} metrics, got {n}")
    rng = np.random.default_rng(seed)
    splits = [np.arange(n)] if folds >= n else [rng.permutation(n) % folds for _ in range(repeats)]
    pred = np.zeros(n)
    for fold_of in splits:
        for k in range(fold_of.max() + 1):
            test = fold_of == k
            w = fit_linear(X[~test], y[~test])
            pred[test] += w[0] + X[test] @ w[1:]
    return pred / len(splits)


def combination_score(X, y, folds: int = 5, repeats: int = 10, seed: int = 0) -> dict[str, Any]:
    """How well a linear combination of the metrics X ranks encoders by accuracy y, out of sample:
    spearman (rank correlation of the cross-validated predictions with y), r2 (1 - SSE / SS around the mean,
    out of sample, so it can be negative), the predictions and the weights fitted on all points.
    With no signal at all the expected score is slightly negative (a known bias of cross-validated
    correlations: each held-out point pulls the fit away from itself), not exactly 0."""
    y = np.asarray(y, float)
    pred = cv_predictions(X, y, folds, repeats, seed)
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() if np.ptp(y) > 0 else float("nan")
    return {"spearman": spearman(pred, y), "r2": float(r2), "pred": pred, "weights": fit_linear(X, y)}


def selection_rule(score, accuracy, higher_is_better: bool = True) -> dict[str, float]:
    """Model selection by a label-free or out-of-sample score: the accuracy of the encoder the score ranks
    first, next to the best and the median accuracy, and the chosen one's percentile (100 = the best)."""
    score, accuracy = np.asarray(score, float), np.asarray(accuracy, float)
    ok = np.isfinite(score) & np.isfinite(accuracy)
    score, accuracy = score[ok], accuracy[ok]
    if len(score) == 0:
        return {"chosen": float("nan"), "best": float("nan"), "median": float("nan"), "percentile": float("nan")}
    i = int(np.argmax(score) if higher_is_better else np.argmin(score))
    return {"chosen": float(accuracy[i]), "best": float(accuracy.max()), "median": float(np.median(accuracy)),
            "percentile": float(100 * (accuracy <= accuracy[i]).mean())}


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
    for item, (where, figures) in PAPER_ITEMS.items():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypersphere.report", description=build_report.__doc__)
    parser.add_argument("build_dir", type=Path, help="folder of executed notebooks, e.g. build/quick")
    parser.add_argument("figures_dir", type=Path, help="folder of figures and verdicts_*.json, e.g. figures")
    parser.add_argument("out_dir", type=Path, help="where the HTML goes, e.g. build/quick/report")
    args = parser.parse_args(argv)
    try:
        print(build_report(args.build_dir, args.figures_dir, args.out_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
