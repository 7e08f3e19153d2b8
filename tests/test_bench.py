"""`bench/run.py --quick` end to end on tiny sizes: every row is there, ratios are positive finite numbers, the
results files name the machine, and the correctness fact the benchmark reports holds; the GPU check's dry run on the
CPU; and the GPU check's cost model (bench/costs.py) on made-up timings. Speed targets are the benchmark's business,
not the tests' (they depend on the machine and its load)."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hypersphere import profiles
from hypersphere.sweep import load_sweep, sweep_path
from hypersphere.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import costs  # noqa: E402  (bench/ is no package)

slow = pytest.mark.slow  # the runs of bench/run.py train small encoders (about 30 s each)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # One thread: the run's length must not depend on what else the machine is doing (see bench/run.py).
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--threads",
            "1",
            "--name",
            "testbox",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


@slow
def test_quick_run_writes_both_files_named_after_the_machine(quick_run):
    out, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == ["testbox-quick.json", "testbox-quick.md"]
    record = json.loads((out / "testbox-quick.json").read_text())
    machine = record["machine"]
    for key in ("cpu", "cores", "torch", "threads", "device", "load_average_start", "load_average_end"):
        assert machine.get(key) not in (None, ""), key
    assert machine["threads"] == 1 and machine["torch"] == torch.__version__
    md = (out / "testbox-quick.md").read_text()
    assert machine["cpu"] in md and "threads: 1" in md


@slow
def test_every_benchmark_has_its_rows_with_positive_finite_ratios(quick_run):
    out, stdout = quick_run
    rows = json.loads((out / "testbox-quick.json").read_text())["rows"]
    benches = [r["bench"] for r in rows]
    timed = {"loss": 2, "augment": 2, "train": 2, "probe": 2}  # quick: B 256/768; B 256 + epoch-wide draws; 2 models;
    # 1 epoch count + the BLAS cap
    for bench, n in timed.items():
        with_ratio = [r for r in rows if r["bench"] == bench and r["ratio"] is not None]
        assert len(with_ratio) == n, (bench, with_ratio)
        for r in with_ratio:
            assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
            assert r["met"] in ("yes", "no", "-") and r["ours"] and r["reference"]
            assert len(r["raw"]["ours_s"]) == len(r["raw"]["reference_s"]) >= 1
    assert "cuda" in benches
    if not torch.cuda.is_available():
        (cuda_row,) = [r for r in rows if r["bench"] == "cuda"]
        assert cuda_row["met"] == "skipped" and "no CUDA" in cuda_row["note"]
    # the printed table and the markdown table carry every row
    md = (out / "testbox-quick.md").read_text()
    for r in rows:
        assert f"| {r['bench']} | {r['case']} |" in md and r["case"] in stdout


@slow
def test_our_uniform_loss_is_finite_where_pdist_underflows(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "testbox-quick.json").read_text())["rows"]
    (fact,) = [r for r in rows if r["bench"] == "loss" and r["case"].startswith("finite")]
    raw = fact["raw"]
    assert math.isfinite(float(raw["ours_loss"])) and raw["ours_grad_finite"]
    assert float(raw["pdist_loss"]) == -math.inf and not raw["pdist_grad_finite"]
    assert fact["met"] == "yes"


@slow
def test_probe_rows_report_both_accuracies(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "testbox-quick.json").read_text())["rows"]
    (probe,) = [r for r in rows if r["bench"] == "probe" and "cached_linear" in r["raw"]]
    for key in ("cached_linear", "cached_5nn", "full_linear"):
        assert 0 <= probe["raw"][key] <= 100
    assert probe["raw"]["cached_5nn"] > 20  # a trained digits encoder: 5-NN well above chance (10%)


@slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_the_gpu_check_dry_runs_on_the_cpu_and_skips_what_needs_a_gpu(tmp_path):
    """Every row of the GPU check runs on the CPU at tiny sizes (about a minute on 2 cores) through the trainer's own
    step, each with positive finite numbers; peak memory and packing are skipped; the 2-process DDP run holds on gloo;
    one projection row per paper sweep."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--cuda-only",
            "--dry-run",
            "--quick",
            "--threads",
            "1",
            "--name",
            "box",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [
        r for r in json.loads((tmp_path / "box-quick-cuda-dryrun.json").read_text())["rows"] if r["bench"] == "cuda"
    ]

    def one(prefix: str) -> dict:
        (row,) = [r for r in rows if r["case"].startswith(prefix)]
        return row["raw"]

    def positive(*values) -> bool:
        return all(math.isfinite(v) and v > 0 for v in values)

    # every kind of step the paper sweeps train, timed through the trainer (ImageNet's through train(), streamed)
    configs = [run.config for sweep in profiles.load("paper").sweeps for run in load_sweep(sweep_path(sweep, "paper"))]
    kinds = {costs.step_kind(cfg) for cfg in configs}
    assert {
        "stl10 auto",
        "stl10 auto predictor target",
        "cifar10 auto head",
        "nyu-depth-v2 auto",
        "imagenet100 resnet50 queue",
        "bookcorpus qt",
        "imagenet resnet50-mlp queue",
    } <= kinds
    for kind in kinds - {"imagenet resnet50-mlp queue"}:
        raw = one(f"{kind}: the trainer's step, fp32 at B=")
        assert positive(raw.get("images_per_s", raw.get("sentences_per_s")), raw["flops_per_sample"], raw["mfu"]), kind
    for kind in ("stl10 auto", "imagenet100 resnet50 queue"):  # bf16 autocast, and the loss of the same steps
        assert positive(one(f"{kind}: the trainer's step, bf16 autocast, eager")["images_per_s"])
        loss = one(f"{kind}: mean loss of the same steps")
        assert math.isfinite(loss["fp32"]) and loss["bf16"] == loss["fp32"]  # the CPU runs both in fp32
    for tap in ("conv5", "conv4"):  # the depth decoder on the frozen encoder's maps
        assert positive(one(f"NYU depth decoder training on {tap}")["images_per_s"])
    assert positive(one("view drawing alone")["images_per_s"])
    stream = one("imagenet resnet50-mlp queue: streamed through train()")
    assert positive(stream["images_per_s"], stream["mfu"], stream["run_images_per_s"]) and stream["steps"] == 8
    accuracy = one("accuracy after")
    assert all(0 <= accuracy[k] <= 100 for k in ("fp32_accuracy", "bf16_accuracy"))
    assert accuracy["difference"] == pytest.approx(accuracy["bf16_accuracy"] - accuracy["fp32_accuracy"])
    (ddp,) = [r for r in rows if r["case"].startswith("2-process DDP training (torchrun, gloo)")]
    assert ddp["met"] == "yes" and ddp["raw"]["exit_code"] == 0 and ddp["raw"]["finished"], ddp["note"]

    # one projection per paper sweep, in the profile's order; PFLOP counted at the paper's sizes even in the dry run
    projected = {
        r["case"].split(",")[0].removeprefix("projected: paper sweep "): r
        for r in rows
        if r["case"].startswith("projected: paper sweep")
    }
    assert list(projected) == list(profiles.load("paper").sweeps)
    for sweep, r in projected.items():
        assert positive(r["raw"]["gpu_hours"], r["raw"]["pflop"]), sweep
        assert f"{r['raw']['runs']} runs" in r["case"] and r["raw"]["runs"] == len(
            load_sweep(sweep_path(sweep, "paper"))
        )
    # Table 5: 2 runs x 200 epochs of 5,004 batches of 256, at the FLOPs per pair counted at 224 px
    pair = stream["flops_per_pair"]
    assert projected["imagenet"]["raw"]["pflop"] == pytest.approx(2 * 200 * 5004 * 256 * pair / 1e15)
    assert positive(one("projected: one STL-10 encoder")["pflop"])

    skipped = [r["case"] for r in rows if r["met"] == "skipped"]
    assert any("peak memory" in c for c in skipped) and any("packing" in c for c in skipped)
    no_flag = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--cuda-only"], capture_output=True, text=True, cwd=REPO
    )
    assert no_flag.returncode != 0 and "--dry-run" in no_flag.stderr


# ---------------------------------------------------------------------------------------- the cost model


def _measured(seconds: dict, flops: float = 1e9, kind: str = "stl10 auto", bf16: bool = False) -> costs.Measured:
    measured = costs.Measured(flops={kind: flops})
    for batch, s in seconds.items():
        measured.add(kind, batch, bf16, s)
    return measured


def test_a_sweep_costs_runs_x_epochs_x_steps_x_seconds_per_step():
    runs, epochs, steps, batch, t, flops = 3, 7, 11, 64, 0.25, 2e9
    configs = [TrainConfig(dataset="stl10", epochs=epochs, batch_size=batch, seed=s) for s in range(runs)]
    samples = {"stl10": steps * batch + 5}  # the last partial batch is dropped (drop_last, the default)
    cost = costs.sweep_cost(configs, _measured({batch: t}, flops), samples)
    assert cost.gpu_hours == pytest.approx(runs * epochs * steps * t / 3600)
    assert cost.pflop == pytest.approx(runs * epochs * steps * batch * flops / 1e15)
    assert cost.scaled == frozenset()
    kept = [TrainConfig(dataset="stl10", epochs=epochs, batch_size=batch, drop_last=False)]  # one more, partial step
    cost = costs.sweep_cost(kept, _measured({batch: t}, flops), samples)
    assert cost.gpu_hours == pytest.approx(epochs * (steps + 1) * t / 3600)
    assert cost.pflop == pytest.approx(epochs * samples["stl10"] * flops / 1e15)


def test_an_unmeasured_batch_scales_the_nearest_measured_one_and_a_precision_falls_back():
    measured = _measured({256: 0.3, 4: 0.01})
    cfg = TrainConfig(dataset="stl10", epochs=1, batch_size=768)
    assert measured.seconds_per_step("stl10 auto", 768, False) == (pytest.approx(0.9), 256)
    cost = costs.run_cost(cfg, measured, {"stl10": 768 * 10})
    assert cost.seconds == pytest.approx(10 * 0.9) and cost.scaled == {(768, 256)}
    assert costs.run_cost(replace(cfg, bf16=True), measured, {"stl10": 768 * 10}).seconds == pytest.approx(9)
    measured.add("stl10 auto", 768, True, 0.5)  # once measured, bf16 runs take their own
    assert costs.run_cost(replace(cfg, bf16=True), measured, {"stl10": 768 * 10}).seconds == pytest.approx(5)


def test_step_kinds_tell_apart_what_changes_a_step_and_nothing_else():
    kind = lambda **kw: costs.step_kind(TrainConfig(**kw))  # noqa: E731
    assert (
        kind(objective="contrastive(tau=0.5)", dim=2)
        == kind(objective="0.5*align(alpha=2) + uniform(t=2)")
        == "stl10 auto"
    )
    assert kind(objective="byol(width=4)") == "stl10 auto predictor target"
    assert kind(objective="simsiam(width=4)") == "stl10 auto predictor"
    assert kind(dataset="cifar10", objective="xent()") == "cifar10 auto head"
    assert (
        kind(dataset="imagenet100", arch="resnet50", queue=16384, batch_size=128)
        == kind(dataset="imagenet100", arch="resnet50", queue=32768, batch_size=128)
        == "imagenet100 resnet50 queue"
    )
    qt = dict(dataset="bookcorpus", optimizer="adam", lr=5e-4, dim=1200)
    assert kind(arch="qt", **qt) == kind(arch="qt-raw", **qt) == "bookcorpus qt"
    for cfg in (
        run.config for sweep in profiles.load("paper").sweeps for run in load_sweep(sweep_path(sweep, "paper"))
    ):
        assert cfg.dataset in costs.PAPER_DATA  # every paper dataset has a size
