"""The two-stage design of `make decide` (hypersphere.decide): the plan is made from the first stage and never
moves, the second stage repeats the sweep's seed-1 settings at the planned seeds, each claim is judged on the new
seeds alone, and the whole of it runs end to end on the smoke-decide profile (a rerun trains nothing)."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from hypersphere import decide, notebook, profiles, report, stats
from hypersphere.__main__ import main
from hypersphere.decide import Claim
from hypersphere.sweep import load_sweep, sweep_path

ROOT = Path(__file__).resolve().parents[1]


def claims(**first_and_new) -> dict[str, Claim]:
    """Claims above a bound of 0 from {name: list of differences at seeds 0, 1, ...}."""
    return {name: Claim(0.0, True, "points", dict(enumerate(d))) for name, d in first_and_new.items()}


def test_the_plan_trains_the_most_seeds_any_claim_needs_and_gives_each_its_power():
    c = claims(easy=[5.0, 6.0, 7.0], hard=[0.5, -1.0, 2.0])
    plan = decide.make_plan(c, power=0.8, most=20)
    expected = {n: stats.second_stage(list(c[n].differences.values()), 0.0, 0.95, 0.8, 20)["seeds"] for n in c}
    assert expected["easy"] < expected["hard"]
    assert plan["new_seeds"] == list(range(3, 3 + expected["hard"])) and plan["first_seeds"] == [0, 1, 2]
    assert plan["claims"]["easy"]["power_at_plan"] > 0.99  # more seeds than it needed
    assert plan["claims"]["hard"]["power_at_plan"] == pytest.approx(plan["claims"]["hard"]["power"])
    assert len(decide.make_plan(c, power=0.8, most=4)["new_seeds"]) == 4  # the cap
    with pytest.raises(ValueError, match=r"no difference at seeds \[2\]"):
        decide.make_plan(claims(short=[1.0, 2.0]))


def test_the_plan_is_written_once_and_no_later_number_moves_it(tmp_path):
    c = claims(d=[0.5, -1.0, 2.0])
    made = decide.fixed_plan(tmp_path, "Table 9", c, 0.8, 20)
    doc = json.loads((tmp_path / decide.PLAN).read_text())
    assert doc["comparisons"]["Table 9"] == json.loads(json.dumps(made))
    again = claims(d=[0.5, -1.0, 2.0, 7.0, 7.0])  # the second stage's seeds do not enter the plan
    assert decide.fixed_plan(tmp_path, "Table 9", again, 0.8, 20) == doc["comparisons"]["Table 9"]
    with pytest.raises(ValueError, match="must not follow the data"):
        decide.fixed_plan(tmp_path, "Table 9", claims(d=[0.5, -1.0, 2.1]), 0.8, 20)
    with pytest.raises(ValueError, match="must not follow the data"):
        decide.fixed_plan(tmp_path, "Table 9", c, 0.8, 10)
    decide.fixed_plan(tmp_path, "Figure 9", claims(e=[1.0, 2.0, 4.0]), 0.8, 20)  # another comparison: added
    assert set(decide.load_plan(tmp_path)) == {"Table 9", "Figure 9"}


def test_the_second_stage_repeats_the_seed_1_runs_with_each_fine_tune_on_its_own_seeds_parent(tmp_path):
    runs = load_sweep(sweep_path("finetune", "smoke-decide"), {"runs_dir": str(tmp_path)})
    new = decide.repeat_at(runs, [3, 4])
    seed1 = [r for r in runs if r.config.seed == 1]
    assert len(new) == 2 * len(seed1) == 8 and {r.config.seed for r in new} == {3, 4}
    by_dir = {str(r.config.run_dir()): r for r in new}
    for r in new:
        if r.config.init:
            assert by_dir[r.config.init].config.seed == r.config.seed and r.parent == r.config.init
            assert by_dir[r.config.init].id == f"poor-seed{r.config.seed}"
    assert [r.config.objective for r in new[:4]] == [r.config.objective for r in seed1]
    assert len({r.config.run_dir() for r in new} | {r.config.run_dir() for r in runs}) == len(new) + len(runs)
    depth = load_sweep(sweep_path("depth", "decide"), {"runs_dir": str(tmp_path)})
    repeated = decide.repeat_at(depth, [3])  # the random-init references at seed 1 are no candidates: left out
    assert len(repeated) == 4 and all(r.config.epochs > 0 for r in repeated)


def test_each_claim_is_judged_on_the_planned_new_seeds_alone():
    comparison = decide.Comparison("Table 9", "a claim", lambda results: {})
    c = claims(d=[-3.0, -2.0, -4.0, 1.0, 1.2, 0.9])  # the first stage below 0, the second wholly above
    plan = decide.make_plan({"d": Claim(0.0, True, "points", {s: c["d"].differences[s] for s in range(3)})}, most=3)
    plan["new_seeds"] = [3, 4, 5]
    v = decide.judge(comparison, c, plan)
    assert v["holds"] is True and "over 3 new seeds" in v["evidence"] and "holds" in v["evidence"]
    assert stats.decide(list(c["d"].differences.values()), 0.0, True)["holds"] is None  # pooled would not decide
    missing = claims(d=[-3.0, -2.0, -4.0, 1.0, 1.2])
    v = decide.judge(comparison, missing, plan)
    assert v["holds"] is None and "2 of 3 planned new seeds finished" in v["evidence"]
    two = {**c, "e": Claim(0.0, True, "points", {0: -1, 1: 0, 2: 1, 3: -5.0, 4: -5.2, 5: -4.9})}
    plan["claims"]["e"] = plan["claims"]["d"]
    assert decide.judge(comparison, two, plan)["holds"] is False  # one claim fails: the comparison fails
    assert decide.judge(comparison, c, None)["holds"] is None


def test_the_profiles_design_is_validated(tmp_path, monkeypatch, capsys):
    assert profiles.load("decide").decide == {"power": 0.8, "most": 20}
    assert profiles.load("decide").sweeps_dir == profiles.load("quick").sweeps_dir
    assert main(["decide", "--profile", "smoke"]) == 2 and "sets no `decide:` design" in capsys.readouterr().err
    (tmp_path / "profiles").mkdir()
    (tmp_path / "sweeps" / "bad").mkdir(parents=True)
    (tmp_path / "profiles" / "bad.yaml").write_text("sweeps: []\ndecide: {power: 80}\n")
    monkeypatch.setattr("hypersphere.resources.configs", lambda: tmp_path)
    with pytest.raises(ValueError, match=r"power: a number in \(0, 1\)"):
        profiles.load("bad")


@pytest.mark.slow
def test_make_decide_end_to_end_on_smoke_decide_and_a_rerun_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["decide", "--profile", "smoke-decide", "--workers", "2"]) == 0
    plan = decide.load_plan(Path("figures/smoke-decide"))["Figure 8"]
    n = len(plan["new_seeds"])
    assert plan["new_seeds"] == [3, 4]  # the cap, 2
    table = pd.read_csv("results/smoke-decide/finetune.csv")
    assert len(table) == 12 + 4 * n and (table["status"] == "done").all()
    assert sorted(table["seed"].unique()) == [0, 1, 2, *plan["new_seeds"]]
    finished = {p: p.stat().st_mtime_ns for p in Path("runs").glob("*/train.json")}
    assert len(finished) == len(table)
    capsys.readouterr()
    assert main(["decide", "--profile", "smoke-decide", "--workers", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in Path("runs").glob("*/train.json")} == finished
    assert "Figure 8: " in capsys.readouterr().out
    assert main(["sweep", "finetune", "--profile", "smoke-decide", "--dry-run"]) == 0  # lists the planned runs too
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["done"] * len(table)
    notebook.execute(
        ROOT / "notebooks" / "11_decide.ipynb",
        "smoke-decide",
        tmp_path,
        data_dir=str(ROOT / "data"),
        device="cpu",
        progress=False,
    )
    figures = tmp_path / "figures" / "smoke-decide"
    doc = json.loads((figures / "verdicts_11_decide.json").read_text())
    assert [v["item"] for v in doc["verdicts"]] == ["Figure 8"]
    assert f"over {n} new seeds" in doc["verdicts"][0]["evidence"]
    assert (figures / "decide_intervals.png").stat().st_size > 5_000
    summary = pd.read_csv(figures / "decide_summary.csv")
    assert (summary["planned"] == n).all() and (summary["spent"] == n).all() and len(summary) == 3
    page = report.build_report(tmp_path / "build" / "smoke-decide", figures, tmp_path / "report").read_text()
    assert "<td>Figure 8</td>" in page and "<td>Table 1</td>" not in page  # only what this profile judged
    nb = nbformat.read(tmp_path / "build" / "smoke-decide" / "11_decide.ipynb", as_version=4)
    assert any(o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
