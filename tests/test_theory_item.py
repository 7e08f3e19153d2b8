"""The theory item (items/theory.py) at the smoke profile's sizes: the values it measures against the
paper's (data/reference/theory.csv) and the exact population values, without papermill."""

import pytest
import torch

from hypersphere import profiles
from hypersphere.items import theory

S = profiles.load("smoke").sizes("01_theory")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def theorem1():
    return theory.theorem1(S["pairs"], S["pool"], S["max_log2_M"], CPU)


@pytest.fixture(scope="module")
def fig4():
    return theory.fig4_synthetic(S["fig4_points"], S["fig4_seeds"], CPU)


def test_theorem1_rates_and_terms(theorem1):
    curves, terms = theorem1
    slopes = theory.slopes(curves)
    # per-pair deviation ~ M^-1/2; the loss's mean deviation (a log of a mean) ~ M^-1
    assert -0.75 < slopes["per-pair RMS deviation"].median() < -0.35
    assert -1.3 < slopes["mean deviation"].median() < -0.7
    assert terms["alignment term"].idxmin().startswith("aligned")
    assert terms["uniformity term"].idxmin().endswith("uniform")


def test_fig4_synthetic_matches_the_paper_and_the_exact_values(fig4):
    table, samples = fig4
    # 1,000 uniform points on S^1 (sd of G_2 ~ 2.3e-4); the exact uniform value is the paper's 0.2070
    assert abs(table.loc["uniform", "G_2 (plotted draw)"] - theory.paper("uniform_G2_S1")) < 0.0015
    assert table.loc["uniform", "exact population"] == pytest.approx(0.2070, abs=5e-5)
    # the mixture's population value is 0.3478 (0.3439 is the paper's single draw); sd ~ 0.009 at n = 1,000
    assert table.loc["vMF mixture", "exact population"] == pytest.approx(0.3478, abs=5e-4)
    assert abs(table.loc["vMF mixture", "G_2 (plotted draw)"] - 0.3478) < 0.035
    assert samples["uniform"].shape == (S["fig4_points"], 2)


def test_minimisers_spread_and_the_verdicts(theorem1, fig4):
    points = theory.optimised_points(S["sphere_points"], 500, CPU)  # the quick profile's steps: smoke's are too few
    spread = theory.angle_spread(points["circle"])
    assert spread < 0.05 < theory.angle_spread(points["circle start"])
    p2 = theory.prop2(S["n_points"], S["steps"], CPU)
    assert (p2["all pairs"] >= p2["bound"] - 1e-6).all()  # Prop. 1: no distribution goes below the bound
    slopes = theory.slopes(theorem1[0])
    assert [v["holds"] for v in theory.judge(slopes, spread, fig4[0])] == [True, True, True]
    assert theory.judge(slopes, 0.5, fig4[0])[1]["holds"] is False  # clustered points: no
