"""`bench/run.py --quick` end to end on tiny sizes: every row is there, ratios are positive finite numbers, the
results files name the machine, and the correctness fact the benchmark reports holds. Speed targets are the
benchmark's business, not the tests' (they depend on the machine and its load)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hypersphere import profiles
from hypersphere.sweep import load_sweep, sweep_path

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # trains small encoders (about 30 s in all)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # One thread: the run's length must not depend on what else the machine is doing (see bench/run.py).
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--threads", "1",
                           "--name", "testbox", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


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


def test_our_uniform_loss_is_finite_where_pdist_underflows(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "testbox-quick.json").read_text())["rows"]
    (fact,) = [r for r in rows if r["bench"] == "loss" and r["case"].startswith("finite")]
    raw = fact["raw"]
    assert math.isfinite(float(raw["ours_loss"])) and raw["ours_grad_finite"]
    assert float(raw["pdist_loss"]) == -math.inf and not raw["pdist_grad_finite"]
    assert fact["met"] == "yes"


def test_probe_rows_report_both_accuracies(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "testbox-quick.json").read_text())["rows"]
    (probe,) = [r for r in rows if r["bench"] == "probe" and "cached_linear" in r["raw"]]
    for key in ("cached_linear", "cached_5nn", "full_linear"):
        assert 0 <= probe["raw"][key] <= 100
    assert probe["raw"]["cached_5nn"] > 20  # a trained digits encoder: 5-NN well above chance (10%)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_the_gpu_check_dry_runs_on_the_cpu_and_skips_what_needs_a_gpu(tmp_path):
    """Every paper path of the GPU check runs on the CPU at tiny sizes (about a minute on 2 cores), each row with
    positive finite numbers; peak memory and packing are skipped; one projection row per paper sweep."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--cuda-only", "--dry-run", "--quick",
                           "--threads", "1", "--name", "box", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads((tmp_path / "box-quick-cuda-dryrun.json").read_text())["rows"]
    cuda = {r["case"].split(",")[0]: r for r in rows if r["bench"] == "cuda"}
    assert {"SmallAlexNet B=8 pairs", "augment() alone", "loss of one batch", "ResNet-50 MoCo v2 step B=4 pairs"} <= set(cuda)
    assert cuda["ResNet-50 MoCo v2 step B=4 pairs"]["raw"]["images_per_s"] > 0
    assert cuda["SmallAlexNet B=8 pairs"]["raw"]["flops_per_step"] > 0

    def one(prefix: str) -> dict:
        (row,) = [r for r in rows if r["bench"] == "cuda" and r["case"].startswith(prefix)]
        return row["raw"]

    def positive(*values) -> bool:
        return all(math.isfinite(v) and v > 0 for v in values)

    for tap in ("conv5", "conv4"):  # the depth decoder on the frozen encoder's maps
        assert positive(one(f"NYU depth decoder training on {tap}")["images_per_s"])
    assert positive(one("NYU-Depth-V2 encoder")["images_per_s"])
    stream = one("ResNet-50 MoCo v2 streamed through train()")
    assert positive(stream["images_per_s"], stream["mfu"], stream["run_images_per_s"]) and stream["steps"] == 8
    qt = one("Quick-Thought through train()")
    assert positive(qt["sentences_per_s"], qt["mfu"]) and qt["steps"] == 12
    accuracy = one("accuracy after")
    assert all(0 <= accuracy[k] <= 100 for k in ("fp32_accuracy", "bf16_accuracy"))
    assert accuracy["difference"] == pytest.approx(accuracy["bf16_accuracy"] - accuracy["fp32_accuracy"])
    moco_loss = one("MoCo loss after")
    assert math.isfinite(moco_loss["fp32"]) and math.isfinite(moco_loss["bf16"])

    # one projection per paper sweep, in the profile's order; PFLOP counted at the paper's sizes even in the dry run
    projected = {r["case"].split(",")[0].removeprefix("projected: paper sweep "): r for r in rows
                 if r["case"].startswith("projected: paper sweep")}
    assert list(projected) == list(profiles.load("paper").sweeps)
    for sweep, r in projected.items():
        assert positive(r["raw"]["gpu_hours"], r["raw"]["pflop"]), sweep
        assert f"{r['raw']['runs']} runs" in r["case"] and r["raw"]["runs"] == len(load_sweep(sweep_path(sweep, "paper")))
    pair = one("ResNet-50 MoCo v2 step B=4 pairs, 32 px, queue 16, fp32")["flops_per_pair"]  # counted at 224 px
    # Table 5: 2 runs x 200 epochs of 5,004 batches of 256
    assert projected["imagenet"]["raw"]["pflop"] == pytest.approx(2 * 200 * 5004 * 256 * pair / 1e15)

    skipped = [r["case"] for r in rows if r["met"] == "skipped"]
    assert any("peak memory" in c for c in skipped) and any("packing" in c for c in skipped)
    assert any(c.startswith("projected: one STL-10 encoder") for c in cuda)
    no_flag = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--cuda-only"], capture_output=True,
                             text=True, cwd=REPO)
    assert no_flag.returncode != 0 and "--dry-run" in no_flag.stderr
