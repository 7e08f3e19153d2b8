"""The notebooks, executed as `make` executes them (notebook.execute, the smoke profile), and report.py.

A module fixture trains the four smoke sweeps into a temporary working directory and executes every notebook
there. Every results table gets one extra run marked failed, which every notebook must drop and say so. The
tests then check the figures, tables and verdict files the notebooks write, and the HTML report built from them.
The statistics (stats.py) are tested on synthetic data with known answers.
"""

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from hypersphere import decide, notebook, profiles, report, stats
from hypersphere.items import FAMILIES, ITEMS, add_family, load_results, loss_family
from hypersphere.sweep import load_sweep, run_sweep, sweep_path

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
# notebook -> (the figures it must write as PNG and PDF, the paper items it judges)
NOTEBOOKS = {
    "01_theory": (
        ("theorem1_convergence", "prop1_optimized_points", "prop2_convergence", "uniformity_bound", "fig4_synthetic"),
        ("Theorem 1", "Propositions 1-2", "Figure 4 (synthetic)"),
    ),
    "02_hypersphere_2d": (("fig3_hypersphere_2d", "fig4_potentials"), ("Figure 3", "Figure 4")),
    "03_metrics_vs_accuracy": (("fig5a_metrics_vs_accuracy",), ("Figure 5a",)),
    "04_weighting": (("fig7_weighting",), ("Figure 7",)),
    "05_finetuning": (("fig8_finetuning",), ("Figure 8",)),
    "06_table1": (("learning_curves",), ("Table 1",)),
    "08_moco": (("fig9a_metrics_vs_accuracy",), ("Figure 9a", "Table 3", "Table 5")),
    "07_depth": (("fig5b_data", "fig5b_metrics_vs_depth"), ("Figure 5b", "Table 2", "Table 2 (vs random init)")),
    "09_sentences": (("fig9b_sentences",), ("Figure 9b", "Table 4")),
    "10_beyond": (
        ("beyond_statistics",),
        tuple(f"Label-free selection ({d})" for d in ("images", "depth", "MoCo", "sentences")),
    ),
}
TABLE1_COLUMNS = [
    "family",
    "candidates",
    "objective",
    "output+linear",
    "output+5-NN",
    "fc7+linear",
    "fc7+5-NN",
    "paper output+linear",
    "paper output+5-NN",
    "paper fc7+linear",
    "paper fc7+5-NN",
]


def add_failed_run(table: Path) -> None:
    """Append a copy of the first row marked failed, with no metrics, as a diverged run leaves it."""
    df = pd.read_csv(table)
    fake = df.iloc[[0]].copy()
    keep = {
        "objective",
        "dataset",
        "dim",
        "init",
        "epochs",
        "batch_size",
        "lr",
        "w_contrastive",
        "w_align",
        "w_uniform",
        "w_xent",
    }
    for col in fake.columns:
        if col not in keep:
            fake[col] = np.nan
    fake["run"], fake["status"], fake["id"] = "fake-failed-run", "failed", ""
    pd.concat([df, fake]).to_csv(table, index=False)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Train the smoke sweeps and execute every notebook in a temporary working directory; returns it."""
    work = tmp_path_factory.mktemp("smoke")
    prof = profiles.load("smoke")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for sweep in prof.sweeps:
            sweep_runs = load_sweep(sweep_path(sweep, "smoke"), overrides={"runs_dir": str(work / "runs")})
            run_sweep(sweep_runs, table=work / prof.results_dir / f"{sweep}.csv", workers=2, progress=False)
            add_failed_run(work / prof.results_dir / f"{sweep}.csv")
    finally:
        torch.set_num_threads(threads)
    for name in NOTEBOOKS:  # raises PapermillExecutionError, with the failing cell, if a cell fails
        notebook.execute(
            NB_DIR / f"{name}.ipynb", "smoke", work, data_dir=str(ROOT / "data"), device="cpu", progress=False
        )
    return work


def outputs_text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", sorted(p.stem for p in NB_DIR.glob("*.ipynb")))
def test_committed_notebook_is_clean_short_and_parameterised_by_profile(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert nb.metadata.kernelspec.name == "hypersphere"
    assert nb.cells[0].cell_type == "markdown"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the notebook's outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and set(notebook.parameters("quick")) == {
        line.split(" = ")[0] for line in params[0].source.splitlines() if " = " in line
    }
    assert all(len(c.source.splitlines()) <= 20 for c in code), "keep cells short: computations belong in the package"
    assert not any(line.startswith("def ") for c in code for line in c.source.splitlines()), "no functions in notebooks"
    assert "torch.set_num_threads(1)" in code[1].source, "the setup cell pins torch to one thread"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_writes_its_figures_and_verdicts(build, name):
    figures_dir = build / "figures" / "smoke"
    figures, items = NOTEBOOKS[name]
    for fig in figures:
        for ext in ("png", "pdf"):
            assert (figures_dir / f"{fig}.{ext}").stat().st_size > 5_000, f"{fig}.{ext} missing or empty"
    doc = json.loads((figures_dir / f"verdicts_{name}.json").read_text())
    assert doc["notebook"] == name and doc["profile"] == "smoke"
    assert [v["item"] for v in doc["verdicts"]] == list(items)
    for v in doc["verdicts"]:
        assert v["holds"] in (True, False, None) and v["claim"] and v["evidence"]
    if name != "01_theory":  # every table had one failed run appended: the notebook must drop it and say so
        assert "dropped 1 failed" in outputs_text(build / "build" / "smoke" / f"{name}.ipynb")


@pytest.mark.slow
def test_each_decided_comparison_reads_its_per_seed_differences_from_the_smoke_tables(build):
    """decide.COMPARISONS read the same differences the notebooks judge; the smoke sweeps train one seed, so a
    plan needs seeds 1 and 2 and says so."""
    results = build / "results" / "smoke"
    for sweep, comparison in decide.COMPARISONS.items():
        named = comparison.claims(results)
        assert named and all(set(c.differences) == {0} and np.isfinite(c.differences[0]) for c in named.values())
        with pytest.raises(ValueError, match=r"no difference at seeds \[1, 2\]"):
            decide.make_plan(named)


@pytest.mark.slow
def test_fig4_table_has_each_encoder_and_the_uniform_reference(build):
    fig4 = pd.read_csv(build / "figures" / "smoke" / "fig4_potentials.csv", index_col=0)
    assert {"random", "supervised", "contrastive", "uniform sample", "uniform (exact)"} == set(fig4.index)
    assert fig4.loc["uniform (exact)", "G_2"] == pytest.approx(0.2070, abs=5e-5)
    assert ((fig4["G_2"] > 0) & (fig4["G_2"] <= 1)).all()  # a mean of exp(-2 d^2)
    assert fig4.loc["supervised", "paper G_2"] == 0.2380


@pytest.mark.slow
def test_table1_has_one_row_per_family_with_the_papers_numbers(build):
    figures_dir = build / "figures" / "smoke"
    t = pd.read_csv(figures_dir / "table1.csv")
    assert list(t["family"]) == list(FAMILIES)
    assert set(TABLE1_COLUMNS) <= set(t.columns)
    assert t["paper output+linear"].tolist() == [80.46, 81.15, 81.06]
    assert t["paper fc7+5-NN"].tolist() == [76.33, 76.78, 76.48]
    # the smoke cloud has 2 contrastive, 3 align/uniform and 1 mixed encoder; the failed run is not a candidate
    assert t["candidates"].tolist() == [2, 3, 1]
    cloud = add_family(load_results(build / "results" / "smoke", "cloud")[0])
    for _, row in t.iterrows():  # the selected encoder is the family's best by CV, and its numbers are its own
        best_cv = cloud[cloud["family"] == row["family"]]["cv_output_linear"].max()
        assert row["selection score"] == pytest.approx(best_cv)
        match = cloud[(cloud["objective"] == row["objective"]) & np.isclose(cloud["cv_output_linear"], best_cv)]
        assert row["output+linear"] in match["val_output_linear"].tolist()
    assert (figures_dir / "table1.md").read_text().count("\n|") == 5  # header, rule, 3 rows
    tex = (figures_dir / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and tex.count(r"\\") >= 4


@pytest.mark.slow
def test_table2_selects_trained_encoders_by_cv_conv5_mse_with_the_papers_numbers(build):
    figures_dir = build / "figures" / "smoke"
    t = pd.read_csv(figures_dir / "table2.csv")
    assert list(t["family"]) == ["contrastive only", "align + uniform only"]
    assert t["paper conv5"].tolist() == [0.7024, 0.7014] and t["paper conv4"].tolist() == [0.7575, 0.7592]
    # the smoke depth cloud: 2 contrastive and 3 align/uniform trained encoders; the random-init one and the
    # failed run are not candidates
    assert t["candidates"].tolist() == [2, 3] and set(t["selected by"]) == {"cv_conv5_mse"}
    cloud = add_family(load_results(build / "results" / "smoke", "depth")[0])
    for _, row in t.iterrows():
        fam = cloud[(cloud["family"] == row["family"]) & (cloud["epochs"] > 0)]
        best = fam.loc[fam["cv_conv5_mse"].idxmin()]
        assert (row["objective"], row["conv5"], row["conv4"]) == (
            best["objective"],
            best["val_conv5_mse"],
            pytest.approx(best["val_conv4_mse"]),
        )
    assert (figures_dir / "table2.md").read_text().count("\n|") == 4  # header, rule, 2 rows


def test_table4_has_one_row_per_family_with_the_papers_numbers(build):
    t = pd.read_csv(build / "figures" / "smoke" / "table4.csv")
    assert list(t["family"]) == list(FAMILIES)
    assert t["paper sentiment"].tolist() == [77.51, 73.76, 76.48] and t["paper subjectivity"].tolist() == [
        83.86,
        80.95,
        83.33,
    ]
    trained = add_family(load_results(build / "results" / "smoke", "sentences")[0]).query("epochs > 0")
    for _, row in t.iterrows():  # each task's pick is the family's best by CV, with its own test accuracy
        fam = trained[trained["family"] == row["family"]]
        best = fam.loc[fam["cv_subjectivity"].idxmax()]
        assert row["subjectivity CV"] == pytest.approx(best["cv_subjectivity"])
        assert row["subjectivity"] == pytest.approx(best["val_subjectivity"])
    assert (build / "figures" / "smoke" / "table4.md").read_text().count("\n|") == 5


@pytest.mark.slow
def test_report_indexes_every_paper_item(build):
    index = report.build_report(
        build / "build" / "smoke", build / "figures" / "smoke", build / "build" / "smoke" / "report"
    )
    page = index.read_text()
    for item in ITEMS:
        assert f"<td>{item}</td>" in page
    for name in NOTEBOOKS:
        assert (index.parent / f"{name}.html").stat().st_size > 10_000
        assert f'href="{name}.html"' in page
    assert 'href="../../../figures/smoke/fig7_weighting.png"' in page
    assert '<img src="../../../figures/smoke/fig7_weighting.png"' in page and '<table class="figure"><caption>' in page


def test_the_report_shows_every_items_verdict_and_figure_in_a_browser(build):
    """As a person sees it: headless Chromium opens the index, and each judged item's row shows its verdict and
    its figure, every image loaded (or, for a table, the table)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver): no browser to look with")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    index = report.build_report(
        build / "build" / "smoke", build / "figures" / "smoke", build / "build" / "smoke" / "report"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(index.as_uri())
        rows = driver.execute_script(
            """return [...document.querySelectorAll('body > table > tbody > tr')].slice(1).map(r => {
            const c = r.children;
            const box = c[2].getBoundingClientRect();
            return {item: c[0].innerText, verdict: c[2].innerText, tables: c[5].querySelectorAll('table').length,
                    visible: box.right <= window.innerWidth && box.width > 0,
                    images: [...c[5].querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0)};
        })"""
        )
        driver.save_screenshot(str(index.with_suffix(".png")))
    finally:
        driver.quit()
    judged = {v["item"] for v in report.read_verdicts(build / "figures" / "smoke")}
    assert judged and {r["item"] for r in rows} >= judged
    for r in rows:
        if r["item"] in judged:
            assert r["verdict"] in ("yes", "no", "undecided") and r["visible"], r  # on screen, not scrolled away
            assert (r["images"] and all(r["images"])) or r["tables"], r  # a loaded figure, or the table itself
    assert index.with_suffix(".png").stat().st_size > 10_000


def test_publish_copies_clean_notebooks_figures_and_an_index(build, tmp_path):
    out = tmp_path / "docs" / "smoke"
    (out / "stale.png").parent.mkdir(parents=True)
    (out / "stale.png").write_bytes(b"from an older build")
    index = report.publish(build / "build" / "smoke", build / "figures" / "smoke", out, workdir=build)
    assert not (out / "stale.png").exists() and (out / "fig7_weighting.png").exists()
    assert (out / "verdicts_06_table1.json").exists() and '<img src="fig7_weighting.png"' in index.read_text()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in NOTEBOOKS:
        text = (out / f"{name}.ipynb").read_text()
        assert str(build) not in text and '"papermill"' not in text and f'href="{name}.ipynb"' in index.read_text()
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert not any(
            o.output_type == "stream" and o.name == "stderr"
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
        )
        assert _cells(nb) == _cells(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4))
        assert any(o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    report.publish(build / "build" / "smoke", build / "figures" / "smoke", out, workdir=build)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # the same build publishes the same bytes


def _cells(nb) -> list[tuple[str, str]]:
    """A notebook's cells as (type, source), without the parameters cell papermill injects."""
    return [(c.cell_type, c.source) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


@pytest.mark.parametrize("profile, name", [("quick", name) for name in NOTEBOOKS] + [("decide", "11_decide")])
def test_the_published_notebooks_are_executions_of_the_current_sources(profile, name):
    """docs/<profile>/ holds `make publish`'s copies: each must be an execution of the notebook as committed (rerun
    `make PROFILE=<profile> && make publish PROFILE=<profile>` after editing a notebook), small, and free of
    machine-specific paths."""
    published = ROOT / "docs" / profile / f"{name}.ipynb"
    assert published.exists(), f"{published} is missing: run `make PROFILE={profile} && make publish PROFILE={profile}`"
    nb = nbformat.read(published, as_version=4)
    assert _cells(nb) == _cells(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)), (
        f"rerun `make PROFILE={profile} && make publish PROFILE={profile}`"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code) and any(
        o.get("data", {}).get("image/png") for c in code for o in c.outputs
    )
    assert [c.id for c in code if "injected-parameters" in c.metadata.get("tags", [])] == ["injected-parameters"]
    assert published.stat().st_size < 3_000_000 and "/work/" not in published.read_text()


# ----------------------------------------------------------------------------- statistics, families, verdict files


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = x + rng.normal(size=400)
    widths = []
    for n in (25, 100, 400):
        rho, lo, hi = stats.bootstrap_spearman(x[:n], y[:n], n_boot=1000, seed=1)
        assert rho == pytest.approx(spearmanr(x[:n], y[:n]).statistic)
        assert lo < rho < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]  # ~ 1 / sqrt(n)
    assert np.isnan(stats.bootstrap_spearman([1, 1, 1, 1], [1, 2, 3, 4])[0])  # constant metric: undefined


def test_fitted_combination_scores_one_for_exact_and_zero_for_shuffled_accuracy():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0, 2, 300), rng.uniform(-4, 0, 300)])  # (align, uniform)
    acc = 90 - 10 * X[:, 0] - 5 * X[:, 1]
    exact = stats.combination_score(X, acc)
    assert exact["spearman"] == pytest.approx(1.0, abs=1e-9)
    assert exact["r2"] == pytest.approx(1.0, abs=1e-9)
    assert exact["weights"] == pytest.approx([90, -10, -5])
    shuffled = [stats.combination_score(X, rng.permutation(acc), seed=s) for s in range(8)]
    assert abs(np.mean([s["spearman"] for s in shuffled])) < 0.15
    assert all(s["r2"] < 0.05 for s in shuffled)  # no out-of-sample variance explained


def test_cv_predictions_never_see_the_point_they_predict():
    X = np.arange(10.0)[:, None]
    y = 2 * X[:, 0]
    y[3] = 100.0  # an outlier: a fit that saw it would predict it closer to 100
    pred = stats.cv_predictions(X, y, folds=10)  # leave-one-out
    assert pred[3] == pytest.approx(6.0)  # the line through the other nine points
    with pytest.raises(ValueError, match="at least"):
        stats.cv_predictions(X[:3], y[:3])


def test_binomial_standard_error_matches_scipys_binomial_distribution():
    from scipy.stats import binom

    for acc, n in ((56.35, 10768), (67.5, 2878), (90.0, 40)):
        assert stats.binomial_se(acc, n) == pytest.approx(100 * binom(n, acc / 100).std() / n)
    rng = np.random.default_rng(0)  # and the spread of simulated accuracies on 2878 examples
    simulated = 100 * rng.binomial(2878, 0.675, size=20000) / 2878
    assert simulated.std() == pytest.approx(stats.binomial_se(67.5, 2878), rel=0.02)


def test_selection_rule_and_families():
    pick = stats.selection_rule([-3.0, -1.0, -2.0, np.nan], [50.0, 70.0, 60.0, 99.0])  # a score oriented up
    assert pick == {"chosen": 70.0, "best": 70.0, "median": 60.0, "percentile": 100.0}
    assert stats.selection_rule([1.0, 2.0, 3.0], [50.0, 70.0, 60.0])["chosen"] == 60.0
    assert loss_family(1, 0, 0) == "contrastive only"
    assert loss_family(0, 0.98, 0.96) == "align + uniform only"
    assert loss_family(0, 0, 1) == "align + uniform only"
    assert loss_family(1, 0, 1) == "all three"
    assert loss_family(0, 0, 0) == ""


def test_load_results_drops_unfinished_runs_and_names_missing_tables(tmp_path):
    pd.DataFrame(
        {
            "run": ["a", "b", "c"],
            "status": ["done", "failed", "todo"],
            "id": ["x", None, None],
            "align": [0.1, None, None],
        }
    ).to_csv(tmp_path / "s.csv", index=False)
    df, note = load_results(tmp_path, "s", need=["align"])
    assert df["run"].tolist() == ["a"] and "1 of 3" in note and "1 failed" in note and "1 todo" in note
    with pytest.raises(ValueError, match="lacks columns"):
        load_results(tmp_path, "s", need=["uniform"])
    with pytest.raises(FileNotFoundError, match="make sweep"):
        load_results(tmp_path, "missing")


def test_verdicts_round_trip_and_markdown_table(tmp_path):
    report.write_verdicts(
        tmp_path, "nb", "smoke", [dict(item="Figure 7", claim="c", holds=np.bool_(True), evidence="e")]
    )
    (v,) = report.read_verdicts(tmp_path)
    assert v == {
        "item": "Figure 7",
        "claim": "c",
        "holds": True,
        "evidence": "e",
        "figures": [],
        "notebook": "nb",
        "profile": "smoke",
    }
    with pytest.raises(ValueError, match="lacks"):
        report.write_verdicts(tmp_path, "nb", "smoke", [dict(item="Figure 7")])
    md = report.markdown_table(pd.DataFrame({"a": ["x|y"], "b": [1.234], "c": [np.nan]}))
    assert md == "| a | b | c |\n|---|---|---|\n| x\\|y | 1.23 |  |\n"


# ----------------------------------------------------------------------------- narration


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_narrates_its_code_instead_of_repeating_it(path):
    """No markdown cell repeats code (exactly, or in at least half of its lines), and no more than three code
    cells follow each other without a markdown cell between them."""
    nb = nbformat.read(path, as_version=4)
    code_lines = {
        line.strip() for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines() if line.strip()
    }
    for i, c in enumerate(nb.cells):
        lines = [line.strip() for line in c.source.splitlines() if line.strip()]
        if c.cell_type == "markdown" and lines:
            copied = sum(line in code_lines for line in lines)
            assert copied < len(lines) / 2, (
                f"markdown cell {i} repeats code ({copied} of {len(lines)} lines): narrate it"
            )
    run = longest = 0
    for c in nb.cells:
        run = run + 1 if c.cell_type == "code" else 0
        longest = max(longest, run)
    assert longest <= 3, f"{longest} code cells in a row without narration between them"
