"""`make decide`: the seeds each seed-judged comparison needs, fixed before any of them trains.

Four of the paper's comparisons are judged against seed noise (Fig. 8, Tables 1-3: one paired difference per seed,
a claim holds when its 95% interval lies on the claimed side of a bound). Three seeds often leave them undecided,
and adding seeds until the interval clears the bound would be optional stopping. The decide profile runs a
two-stage design instead (Stein, 1945; stats.second_stage):

    stage 1   the sweep as written: seeds 0, 1, 2 of each comparison (cached runs of the quick profile)
    plan      from those three differences, per claim, the new seeds that give `power` at the first stage's mean
              (at most `most`); a comparison's plan is the largest of its claims'. Written once to
              figures/<profile>/decide_plan.json and never changed by later data (a rerun checks it).
    stage 2   the runs the sweep repeats at seed 1 (each family's settings chosen at seed 0; Fig. 8's poor encoder
              and its three fine-tunes) again at seeds 3, 4, ..., cached like every run
    verdict   judged once, on the new seeds alone, by the same interval rule: their number depends on the first
              stage only, so their interval covers at exactly 95% (test_stats simulates it)

The profile's `decide: {power: 0.8, most: 20}` sets the design; `python -m hypersphere sweep NAME --profile decide`
runs all three steps for one comparison, notebook 11_decide judges and plots them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import runs
from .items import fig8, load_results, table1, table2, table3, verdict
from .stats import decide, decision_power, effect_size, mean_interval, second_stage
from .sweep import SweepRun

PLAN = "decide_plan.json"
FIRST_SEEDS = (0, 1, 2)
LEVEL = 0.95
DESIGN = (
    "two-stage (Stein 1945): the first stage's seeds fix the number of new seeds; each claim is judged on "
    "the new seeds alone"
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim about paired differences over seeds: their mean lies `above` (or below) `bound`."""

    bound: float
    above: bool
    unit: str
    differences: dict[int, float]  # seed -> difference


@dataclasses.dataclass(frozen=True)
class Comparison:
    item: str
    claim: str
    claims: Callable[[Path], dict[str, Claim]]  # results_dir -> its claims, named


def _per_seed(seeds: pd.DataFrame, column: str, bound: float, above: bool, unit: str) -> dict[str, Claim]:
    """The one claim of a table's by_seed differences (seeds without one are left out)."""
    d = seeds.dropna(subset=[column])
    return {column: Claim(bound, above, unit, dict(zip(d["seed"].astype(int), d[column].astype(float))))}


def _figure8(results: Path) -> dict[str, Claim]:
    finetune, _ = load_results(results, "finetune", need=["run", "id", "init", "seed", "w_align", "w_uniform"])
    gains = fig8.gains_by_seed(finetune, pd.read_csv(results / "finetune.trajectories.csv"))
    return {
        f"{k}, a {'gain' if gain else 'loss'}": Claim(
            0.0, gain, "points", {s: g[k] for s, g in gains.items() if k in g}
        )
        for k, gain in fig8.GAINS.items()
    }


def _table1(results: Path) -> dict[str, Claim]:
    scratch, by = table1.candidates(load_results(results, "cloud")[0])
    return _per_seed(table1.by_seed(scratch, by), "mean difference", -table1.MARGIN, True, "points")


def _table2(results: Path) -> dict[str, Claim]:
    trained, _, by = table2.split(load_results(results, "depth")[0])
    return _per_seed(table2.by_seed(trained, by), "relative conv5 MSE (%)", 100 * table2.MARGIN, False, "%")


def _table3(results: Path) -> dict[str, Claim]:
    scratch, by = table3.candidates(load_results(results, "moco")[0])
    return _per_seed(table3.by_seed(scratch, by), "top-1 difference", -table3.MARGIN, True, "points")


# sweep -> the comparison judged on it
COMPARISONS = {
    "finetune": Comparison("Figure 8", fig8.CLAIM, _figure8),
    "cloud": Comparison("Table 1", table1.CLAIM, _table1),
    "depth": Comparison("Table 2", table2.CLAIM, _table2),
    "moco": Comparison("Table 3", table3.CLAIM, _table3),
}


# ----------------------------------------------------------------------------- the plan


def make_plan(claims: dict[str, Claim], power: float = 0.8, most: int = 20) -> dict[str, Any]:
    """Stage 1's plan: per claim stats.second_stage on seeds 0-2; the comparison trains the largest number, and
    each claim's power is given at that number."""
    plan = {}
    for name, c in claims.items():
        if missing := [s for s in FIRST_SEEDS if s not in c.differences]:
            raise ValueError(
                f"{name}: the first stage has no difference at seeds {missing}; the sweep must repeat "
                f"its comparison's settings at seeds 1 and 2 (see configs/sweeps/quick/)"
            )
        first = [c.differences[s] for s in FIRST_SEEDS]
        plan[name] = {
            "bound": c.bound,
            "above": c.above,
            "first": first,
            **second_stage(first, c.bound, LEVEL, power, most),
        }
    n = max(p["seeds"] for p in plan.values())
    for p in plan.values():
        p["power_at_plan"] = float(decision_power(effect_size(p["first_mean"], p["first_sd"], p["bound"]), n, LEVEL))
    return {
        "first_seeds": list(FIRST_SEEDS),
        "new_seeds": list(range(len(FIRST_SEEDS), len(FIRST_SEEDS) + n)),
        "power": power,
        "most": most,
        "claims": plan,
    }


def load_plan(figures_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The fixed plans, by paper item ({} before any)."""
    path = Path(figures_dir) / PLAN
    return runs.read_json(path)["comparisons"] if path.exists() else {}


def fixed_plan(
    figures_dir: str | Path, item: str, claims: dict[str, Claim], power: float = 0.8, most: int = 20
) -> dict[str, Any]:
    """The comparison's plan: made from stage 1 and written the first time, afterwards read and checked, so that no
    later number can move it. (Lost, it is made again from the same cached first stage, identically.)"""
    path = Path(figures_dir) / PLAN
    doc = runs.read_json(path) if path.exists() else {"design": DESIGN, "level": LEVEL, "comparisons": {}}
    made = make_plan(claims, power, most)
    old = doc["comparisons"].get(item)
    if old is None:
        doc["comparisons"][item] = made
        runs.write_json(path, doc)
        return made
    same = (
        old.keys() == made.keys()
        and old["claims"].keys() == made["claims"].keys()
        and all(
            np.allclose(old["claims"][k]["first"], made["claims"][k]["first"], rtol=0, atol=1e-6)
            for k in made["claims"]
        )
    )
    if not same or (old["power"], old["most"]) != (power, most):
        raise ValueError(
            f"{path} fixed {item}'s plan from another first stage or design (power {old['power']}, at "
            f"most {old['most']}; first differences {[c['first'] for c in old['claims'].values()]}): a "
            f"plan must not follow the data; delete the file only if the first stage changed on purpose"
        )
    return old


def _seed_id(run_id: str, seed: int) -> str:
    return f"{run_id.removesuffix('-seed1')}-seed{seed}" if run_id else ""


def repeat_at(sweep_runs: list[SweepRun], seeds: list[int]) -> list[SweepRun]:
    """Stage 2's runs: those the sweep trains at seed 1 (the settings it repeats; random-init references left out),
    again at each of `seeds`, each fine-tune starting from the same seed's parent."""
    repeated = [r for r in sweep_runs if r.config.seed == 1 and r.config.epochs > 0]
    out = []
    for seed in seeds:
        moved: dict[str, str] = {}  # a seed-1 run's directory -> its new seed's
        for r in repeated:  # parents come first (load_sweep's order)
            if r.parent and r.parent not in moved:
                raise ValueError(f"{r.origin}: a seed-1 fine-tune of a run that is not at seed 1 cannot be repeated")
            cfg = dataclasses.replace(r.config, seed=seed, init=moved.get(r.parent, ""))
            moved[str(r.config.run_dir())] = str(cfg.run_dir())
            out.append(dataclasses.replace(r, config=cfg, parent=cfg.init, id=_seed_id(r.id, seed)))
    return out


def run(
    name: str,
    sweep_runs: list[SweepRun],
    results_dir: Path,
    figures_dir: Path,
    settings: dict[str, Any],
    run_sweep: Callable[[list[SweepRun]], pd.DataFrame],
) -> pd.DataFrame:
    """Stage 1 (the sweep as written), the plan, stage 2 (its new seeds) of the comparison judged on sweep `name`."""
    run_sweep(sweep_runs)
    comparison = COMPARISONS[name]
    plan = fixed_plan(figures_dir, comparison.item, comparison.claims(results_dir), **settings)
    new = plan["new_seeds"]
    print(f"{comparison.item}: {len(new)} new seeds planned (seeds {new[0]}-{new[-1]}; {Path(figures_dir) / PLAN})")
    return run_sweep(sweep_runs + repeat_at(sweep_runs, new))


# ----------------------------------------------------------------------------- the verdict


def _judged(claim: Claim, new: list[int]) -> dict[str, Any] | None:
    """stats.decide on the planned new seeds alone; None until every one of them has a difference."""
    if any(s not in claim.differences for s in new):
        return None
    return decide([claim.differences[s] for s in new], claim.bound, claim.above, LEVEL)


def judge(comparison: Comparison, claims: dict[str, Claim], plan: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison's verdict at the planned number of new seeds: holds when every claim's interval lies on its
    side, fails when any lies wholly on the other, undecided otherwise (still undecided at the plan, or not all of
    its seeds finished)."""
    if plan is None:
        return verdict(
            comparison.item,
            comparison.claim,
            None,
            "no plan: run `make decide` (the first stage fixes it)",
            ["decide_intervals"],
        )
    new, parts, outcomes = plan["new_seeds"], [], []
    for name, c in claims.items():
        p, r = plan["claims"][name], _judged(c, new)
        done = sum(s in c.differences for s in new)
        first = (
            f"{name}: first stage (seeds 0-2) "
            + ", ".join(f"{d:+.2f}" for d in p["first"])
            + f", mean {p['first_mean']:+.2f} sd {p['first_sd']:.2f}, planned {len(new)} new seeds (power "
            f"{p['power_at_plan']:.2f} at that mean; at most {plan['most']})"
        )
        if r is None:
            outcomes.append(None)
            parts.append(f"{first}; {done} of {len(new)} planned new seeds finished, not judged")
            continue
        outcomes.append(r["holds"])
        word = "holds" if r["holds"] else "fails" if r["holds"] is False else "still undecided"
        side = "above" if c.above else "below"
        parts.append(
            f"{first}; second stage: mean {r['mean']:+.2f} {c.unit}, {LEVEL:.0%} CI [{r['low']:+.2f}, "
            f"{r['high']:+.2f}] over {r['n']} new seeds ({side} {c.bound:+g} claimed): {word}"
        )
    holds = False if False in outcomes else True if all(o is True for o in outcomes) else None
    return verdict(comparison.item, comparison.claim, holds, "; ".join(parts), ["decide_intervals"])


def summary(plans: dict[str, dict[str, Any]], claims: dict[str, dict[str, Claim]]) -> pd.DataFrame:
    """One row per claim: the first stage, the plan, the seeds spent and the second stage's interval."""
    rows = []
    for item, named in claims.items():
        plan = plans.get(item)
        for name, c in named.items():
            p = plan["claims"][name] if plan else {}
            new = plan["new_seeds"] if plan else []
            r = _judged(c, new) if plan else None
            rows.append(
                {
                    "item": item,
                    "claim": name,
                    "bound": f"{'>' if c.above else '<'} {c.bound:+g} {c.unit}",
                    "first mean": p.get("first_mean", np.nan),
                    "first sd": p.get("first_sd", np.nan),
                    "planned": len(new),
                    "power": p.get("power_at_plan", np.nan),
                    "spent": sum(s in c.differences for s in new),
                    **(
                        {
                            "mean": r["mean"],
                            "low": r["low"],
                            "high": r["high"],
                            "verdict": {True: "holds", False: "fails", None: "undecided"}[r["holds"]],
                        }
                        if r
                        else {"mean": np.nan, "low": np.nan, "high": np.nan, "verdict": "not judged"}
                    ),
                }
            )
    return pd.DataFrame(rows)


def figure(plans: dict[str, dict[str, Any]], claims: dict[str, dict[str, Claim]]):
    """One panel per claim: each seed's difference (first stage grey, second stage coloured), each stage's 95%
    interval at the right, and the bound the claim must clear (dashed)."""
    panels = [(item, name, c) for item, named in claims.items() for name, c in named.items()]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (item, name, c) in zip(axes.flat, panels):
        new = plans[item]["new_seeds"] if item in plans else []
        stages = {
            "first stage": [s for s in FIRST_SEEDS if s in c.differences],
            "second stage": [s for s in new if s in c.differences],
        }
        right = max(c.differences) + 2 if c.differences else 2
        for (label, seeds), colour, dx in zip(stages.items(), ("0.55", "C0"), (0, 1.5)):
            if seeds:
                d = [c.differences[s] for s in seeds]
                ax.plot(seeds, d, "o", color=colour, ms=4, label=label)
                mean, low, high = mean_interval(d, LEVEL)
                if np.isfinite(low):
                    ax.errorbar(right + dx, mean, [[mean - low], [high - mean]], fmt="s", color=colour, capsize=4)
        ax.axhline(c.bound, color="C3", ls="--", lw=1, label=f"bound ({'above' if c.above else 'below'} claimed)")
        seeds = sorted(c.differences)
        ax.set_xticks([*seeds, right, right + 1.5], [*map(str, seeds), "CI 1", "CI 2"], fontsize="x-small")
        ax.set(title=f"{item}: {name}", xlabel="seed, then each stage's interval", ylabel=c.unit)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    return fig
