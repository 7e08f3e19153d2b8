"""The scale model (hypersphere.scale): its fits and projections against independent computations, the host-limit
check, the stand-in trunks, and one small run of `python -m hypersphere scale`."""

import json

import numpy as np
import pytest
import torch

from hypersphere import scale
from hypersphere.__main__ import main


def test_fit_line_and_power_match_polyfit():
    rng = np.random.default_rng(0)
    x = np.array([1e3, 2e3, 4e3, 8e3])
    y = 0.3 + 2e-4 * x + rng.normal(0, 0.01, 4)
    b, a = np.polyfit(x, y, 1)
    assert scale.fit_line(x, y) == pytest.approx((a, b), rel=1e-9)
    y = 3.0 * x**1.5 * np.exp(rng.normal(0, 0.05, 4))
    k, log_c = np.polyfit(np.log(x), np.log(y), 1)
    assert scale.fit_power(x, y) == pytest.approx((np.exp(log_c), k), rel=1e-9)
    assert scale.fit_power(x, 3.0 * x**1.5) == pytest.approx((3.0, 1.5), rel=1e-9)


def test_fit_chooses_the_model_per_quantity():
    x = [1e3, 2e3, 4e3]
    line = scale.fit(x, [0.5 + 1e-4 * v for v in x])  # a fixed part plus a part per example
    assert line.model == "line" and line(1e6) == pytest.approx(0.5 + 100) and 0 < line.exponent < 1
    pairs = scale.fit(x, [1e-9 * v**2 for v in x], power=True)  # time over all pairs: a line would under-project
    assert pairs.model == "power" and pairs.exponent == pytest.approx(2) and pairs(1e6) == pytest.approx(1e3)
    assert scale.fit(x, [1e-9 * v**2 for v in x]).model == "line"  # memory: what is held per example
    late = scale.fit(x, [-0.05 + 1e-4 * v for v in x])  # a line whose intercept is negative: log-log slope > 1
    assert late.model == "line" and late.exponent > 1.1 and late(1e6) == pytest.approx(-0.05 + 100)
    noisy = scale.fit(x, [0.2, 0.2005, 0.2008], noise=0.002)  # growth within the noise: not resolved
    assert noisy.model == "flat" and noisy(1e9) == 0.2008
    falling = scale.fit(x, [0.3, 0.25, 0.2])
    assert falling.model == "flat" and falling(1e9) == 0.3
    assert scale.resolution([1e3, 2e3, 4e3], 1e6, noise=0.002) == pytest.approx(0.002 * (1e6 - 4e3) / 3e3)
    x4, y4 = [1e3, 2e3, 3e3, 4e3], [0.10, 0.13, 0.10, 0.13]
    b, a = np.polyfit(x4, y4, 1)
    rms = np.sqrt(((np.array(y4) - a - b * np.array(x4)) ** 2).sum() / 2)
    assert scale.noise_of(x4, y4) == pytest.approx(rms) and scale.noise_of(x4, [0.1] * 4) == scale.NOISE_GB


def test_step_projection():
    assert scale.step_projection([16, 32], [1.0, 1.5], 1024) == pytest.approx(1.0 + 0.5 / 16 * (1024 - 16))
    assert scale.step_projection([16, 32], [2.0, 1.5], 1024, proportional=True) == pytest.approx(1.5 * 32)
    assert scale.step_projection([16, 32], [0.31, 0.30], 1024) == 0.31


def _measured(x, load, held, own, seconds=1.0):
    """Synthetic measurements of one dataset, each size loaded and evaluated in one process: load / held / own GB
    as functions of the examples n (all of them evaluated)."""
    points = [
        {
            "size": n,
            "phase": "both",
            "n": n,
            "examples": n,
            "evaluated": n,
            "load_s": seconds * n / 1e3,
            "load_gb": load(n),
            "held_gb": held(n),
            "eval_s": seconds,
            "eval_gb": held(n) + own(n),
        }
        for n in x
    ]
    steps = [{"batch": b, "step_s": 0.1 * b, "step_gb": 0.2 + 0.01 * b} for b in (16, 32)]
    return {"points": points, "steps": steps}


def test_analyse_projects_each_phase_and_checks_the_fourth_size():
    x = (1000, 2000, 4000, 8000)
    sizes = scale.Sizes(x, x)
    own = lambda n: 0.3 + 1e-9 * n**2  # noqa: E731 - a cost over all pairs that starts to tell within the sizes
    measured = _measured(x, lambda n: 0.05 + 3e-5 * n, lambda n: 0.04 + 2e-5 * n, own)
    row = scale.analyse("cifar10", measured, 256, 64, sizes)
    n = scale.PAPER["cifar10"].n
    b, a = np.polyfit(x[:3], [0.05 + 3e-5 * v for v in x[:3]], 1)
    assert row["load_gb"] == pytest.approx(a + b * n)
    assert row["load_gb_check"] == pytest.approx(0, abs=1e-9)  # exactly linear: the fourth size is projected exactly
    k, _ = np.polyfit(np.log(x[:3]), np.log([own(v) for v in x[:3]]), 1)
    assert row["own_gb_exponent"] == pytest.approx(k)
    first, last = (scale.fit(x[s], [own(v) for v in x[s]], scale.NOISE_GB) for s in (slice(0, 3), slice(1, 4)))
    assert row["own_gb_check"] == pytest.approx(first(x[3]) / own(x[3]) - 1) and row["own_gb_check"] < 0
    assert row["own_gb"] == pytest.approx(last(n)) and last(n) > first(n)  # projected from the largest three
    assert row["eval_gb"] == pytest.approx(row["held_gb"] + row["own_gb"])
    assert row["held_gb"] == pytest.approx(0.04 + 2e-5 * n)
    assert row["step_gb"] == pytest.approx(0.2 + 0.01 * 256) and row["step_s"] == pytest.approx(0.1 * 256)
    assert row["verdict"] == "ok" and row["need_gb"] == max(row["load_gb"], row["eval_gb"])
    assert scale.limit_messages([row], 64) == []


def test_the_evaluation_is_projected_to_what_it_reads(monkeypatch):
    from hypersphere.domains import text

    monkeypatch.setattr(text, "HELD_OUT_SAMPLE", 100_000, raising=False)
    assert scale.eval_paper_n("bookcorpus") == 100_000  # the held-out sentences its metrics read at most
    monkeypatch.delattr(text, "HELD_OUT_SAMPLE")
    assert scale.eval_paper_n("bookcorpus") == round(0.05 * scale.PAPER["bookcorpus"].n)  # all held-out sentences
    assert scale.eval_paper_n("stl10") == 5_000 + 8_000  # its labelled train and test splits, not the unlabeled


def test_over_the_limit_and_failed_loaders_are_one_line_each():
    x = (1000, 2000, 4000, 8000)
    over = scale.analyse(
        "bookcorpus", _measured(x, lambda n: 1e-6 * n, lambda n: 5e-7 * n, lambda n: 0.1), 400, 64, scale.Sizes(x, x)
    )
    assert over["verdict"] == "over" and over["need_phase"] == "load" and over["need_gb"] > 64
    wavering = _measured(x, lambda n: 1e-6 * n, lambda n: 1e-6 * n, lambda n: 0.5)
    wavering["points"][2]["eval_gb"] += 0.02  # 20 MB of noise: about +-0.24 GB at the paper's 131,689 images
    wavering = scale.analyse("imagenet100", wavering, 128, 0.8, scale.Sizes(x, x))
    assert wavering["verdict"] == "uncertain"
    assert wavering["need_gb"] < 0.8 < wavering["need_gb"] + wavering["eval_gb_resolution"]
    failed = _measured(x, lambda n: 0.1, lambda n: 0.1, lambda n: 0.1)
    failed["points"][1]["examples"] = 20  # the loader lost nearly everything it was given
    failed = scale.analyse("bookcorpus", failed, 400, 64, scale.Sizes(x, x))
    messages = scale.limit_messages([over, failed], 64)
    assert len(messages) == 2 and all("\n" not in m and "bookcorpus" in m for m in messages)
    assert "64 GB" in messages[0] and scale.FIXES[("bookcorpus", "load")] in messages[0]
    assert "read 20 of the 2,000 sentences" in messages[1]


def test_the_command_exits_nonzero_over_the_limit(monkeypatch, tmp_path, capsys):
    x = (1000, 2000, 4000, 8000)
    monkeypatch.setattr(
        scale,
        "measure_dataset",
        lambda *a, **k: _measured(  # decoded, then copied once more
            x, lambda n: 2e-4 * n, lambda n: 1e-4 * n, lambda n: 0.1
        ),
    )
    argv = [
        "scale",
        "--datasets",
        "imagenet100",
        "--sizes",
        "imagenet100=1000,2000,4000,8000",
        "--out",
        str(tmp_path / "scale.json"),
    ]
    assert main(argv + ["--host-gb", "64"]) == 0
    capsys.readouterr()
    assert main(argv + ["--host-gb", "16"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scale:")]  # not tqdm's
    assert len(err) == 1 and err[0].startswith("scale: imagenet100 needs ~26.3 GB of host memory to load")
    assert scale.FIXES[("imagenet100", "load")] in err[0]
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["host_gb"] == 16 and saved["rows"][0]["verdict"] == "over"
    assert (tmp_path / "scale.csv").read_text().startswith("dataset,")
    assert main(argv[:-2] + ["--sizes", "imagenet100=3,2,1,4"]) == 2  # sizes must increase: a one-line error
    assert main(["scale", "--profile", "quick", "--out", str(tmp_path / "quick.json")]) == 2  # no paper dataset
    assert not (tmp_path / "quick.json").exists()


def test_standins_keep_the_shapes_the_evaluations_read():
    from hypersphere import models, moco
    from hypersphere.domains import depth, text

    alex = models.build_encoder("smallalexnet", 3, 128, 64)
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        want = {k: v.shape for k, v in alex.eval().forward_taps(x, ("fc7", "output")).items()}
        maps = {k: v.shape for k, v in depth.feature_maps(alex, x, ("conv4", "conv5")).items()}
        cheap = scale.standin(alex, 3, 64)
        assert {k: v.shape for k, v in cheap.forward_taps(x, ("fc7", "output")).items()} == want
        assert {k: v.shape for k, v in depth.feature_maps(cheap, x, ("conv4", "conv5")).items()} == maps
        assert torch.allclose(cheap(x).norm(dim=1), torch.ones(5))
        resnet = scale.standin(moco.small_resnet_moco(16, True), 3, 32)
        taps = resnet.forward_taps(torch.randn(5, 3, 32, 32), ("penultimate", "output"))
        assert taps["penultimate"].shape == (5, 256) and taps["output"].shape == (5, 16)
        qt = text.QuickThought(50, 8, 12)
        batch = text.pack([[2, 3, 4], [5], [6, 7]])
        zf, zg = scale.standin(qt, 0, 0)(batch)
        assert zf.shape == zg.shape == (3, 12) and torch.allclose(zf.norm(dim=1), torch.ones(3))


def test_write_miniature_keeps_the_papers_proportions_above_the_floor(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "FLOOR", 10)

    def images(root):
        return {f.name: f.stat().st_size // (3 * 96 * 96) for f in (root / "stl10_binary").glob("*_X.bin")}

    assert scale.write_miniature("stl10", tmp_path / "a", 1130) == 1130
    assert images(tmp_path / "a") == {"train_X.bin": 50, "test_X.bin": 80, "unlabeled_X.bin": 1000}
    assert scale.write_miniature("stl10", tmp_path / "b", 130, evaluated=True) == 140  # the evaluated splits
    assert images(tmp_path / "b") == {"train_X.bin": 50, "test_X.bin": 80, "unlabeled_X.bin": 10}
    assert scale.write_miniature("imagenet", tmp_path / "c", 200) == 4 * (48 + 3)  # val at the floor: ceil(10 / 4)


def test_scale_smoke(tmp_path, monkeypatch, capsys):
    """The command end to end on a small CIFAR-10: measured in child processes, fitted, printed and written."""
    monkeypatch.setattr(scale, "FLOOR", 20)
    out = tmp_path / "scale.json"
    code = main(
        [
            "scale",
            "--datasets",
            "cifar10",
            "--sizes",
            "cifar10=60,90,120,180",
            "--step-batches",
            "cifar10=4,8",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| cifar10 | 50k train, 10k test |" in printed
    row = json.loads(out.read_text())["rows"][0]
    assert row["verdict"] == "ok" and row["need_gb"] < 8
    assert [(p["phase"], p["n"]) for p in row["raw"]["points"]] == [("both", n) for n in (60, 90, 120, 180)]
    assert all(
        p["examples"] == p["evaluated"] == p["n"] and p["eval_gb"] > p["held_gb"] > 0 for p in row["raw"]["points"]
    )
    assert set(row["step_gb_measured"]) == {"4", "8"}  # JSON keys
