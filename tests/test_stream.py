"""The streaming image path (domains/image.py, ImageFiles: Table 5's ImageNet) on real JPEG files the tests write:
decoding against PIL, indexing and decoding ahead like the decoded tensor, a streamed run against the same images
held in memory, and Table 5's smoke sweep under torchrun with two gloo processes, killed with SIGKILL mid-epoch
(train.py's kill hook) and resumed to the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hypersphere import runs, train as train_module
from hypersphere.domains.image import ImageFiles, decode, load_dataset
from hypersphere.resources import configs
from hypersphere.sweep import load_sweep
from hypersphere.train import TRAIN_VERSION, TrainConfig, load_data, train

CLASSES, PER_CLASS, VAL = 3, 16, 4
SMOKE = configs() / "sweeps" / "smoke" / "imagenet.yaml"


def write_jpegs(root: Path, seed: int = 0) -> Path:
    """root/imagenet/{train,val}/<class>/*.JPEG: smooth random colour fields of random sizes, JPEG-encoded by PIL
    (one greyscale file per class, as ImageNet has)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", PER_CLASS), ("val", VAL)):
        for c in range(CLASSES):
            folder = root / "imagenet" / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 90, size=2)
                coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((int(w), int(h)), Image.BICUBIC)
                (image.convert("L") if i == 0 else image).save(folder / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpegs(tmp_path_factory.mktemp("jpegs"))


def test_decode_matches_pils_resize_and_centre_crop(folder):
    """torchvision.io's decoding and antialiased resize against PIL's (an independent implementation)."""
    import torchvision.transforms as T

    pil = T.Compose([T.Resize(64), T.CenterCrop(64), T.PILToTensor()])
    for path in sorted((folder / "imagenet" / "train").rglob("*.JPEG"))[:12]:
        ours, reference = decode(str(path), 64), pil(Image.open(path).convert("RGB"))
        assert ours.shape == reference.shape == (3, 64, 64) and ours.dtype == torch.uint8
        assert (ours.float() - reference.float()).abs().mean() < 2.0, path


def test_streamed_images_index_and_decode_ahead_like_the_decoded_tensor(folder):
    data = load_dataset("imagenet", folder)
    images = data.train_images
    assert isinstance(images, ImageFiles) and images.shape == (CLASSES * PER_CLASS, 3, 256, 256)
    assert data.train_labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    assert data.augment.crop_size == 224 and len(data.val_images) == CLASSES * VAL
    full = images.decode_all()
    rows = [torch.tensor([5, 0, 17]), torch.tensor([40, 2]), torch.tensor([9])]
    images.plan(rows)  # decoded ahead in order; an index off the plan is decoded on the spot
    assert torch.equal(images[rows[0]], full[rows[0]]) and torch.equal(images[torch.tensor([3])], full[[3]])
    assert torch.equal(images[rows[1]], full[rows[1]]) and torch.equal(images[rows[2]], full[rows[2]])
    assert torch.equal(images[7], full[7]) and torch.equal(images[2:5], full[2:5])
    assert torch.equal(torch.cat(list(images.split(20))), full)


def test_a_streamed_run_trains_to_the_weights_of_the_same_images_in_memory(folder, tmp_path, monkeypatch):
    """One batch's views per augmentation call (VIEW_VALUES), so the workers decode several planned batches a
    epoch; the MoCo v2 run ends with the weights, queue and log of the same images held in memory."""
    monkeypatch.setattr(train_module, "VIEW_VALUES", 16 * 3 * 32 * 32)
    cfg = TrainConfig(
        dataset="imagenet",
        data_dir=str(folder),
        arch="tinyresnet-mlp",
        dim=16,
        epochs=2,
        batch_size=16,
        queue=64,
        ema=0.99,
        cosine=True,
        lr=0.03,
        objective="contrastive(tau=0.2)",
        augment={"recipe": "mocov2", "crop_size": 32},
        device="cpu",
        runs_dir=str(tmp_path / "a"),
    )
    streamed = train(cfg, progress=False)
    data = load_data(cfg)
    full, val = data.train_images.decode_all(), data.val_images.decode_all()
    in_memory = train(
        replace(cfg, runs_dir=str(tmp_path / "b")),
        progress=False,
        data=replace(data, encoder_images=full, train_images=full, val_images=val),
    )
    a, b = (runs.load_checkpoint(d / runs.CHECKPOINT) for d in (streamed, in_memory))
    for module in ("encoder", "moco"):
        assert all(torch.equal(a[module][k], b[module][k]) for k in a[module]), module
    assert runs.load_summary(streamed)["steps"] == 2 * (CLASSES * PER_CLASS // 16)


def test_missing_folders_and_broken_files_fail_in_one_line(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="image folders not found under .*imagenet/train .*val sorted"):
        load_dataset("imagenet", tmp_path)
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode .*broken.JPEG.*; remove or replace the file"):
        decode(str(broken), 64)


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = stat.read_text().rsplit(")", 1)[0].split()[0], stat.read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        children.setdefault(int(ppid), []).append(int(pid))
    tree = [root]
    for pid in tree:
        tree += children.get(pid, [])
    return tree


def test_table5_smoke_sweep_under_torchrun_resumes_after_sigkill_to_identical_weights(folder, tmp_path):
    """Two gloo processes per run (DDP, each its share of every batch and its own augmentation stream), the
    state saved after every step; both processes of the first run SIGKILL themselves in the middle of its second
    epoch (train.py's kill hook, as a node failure), which fails the sweep; rerun it: every run ends with the
    weights and queue of a sweep that was never interrupted."""

    def cmd(runs_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hypersphere",
            "sweep",
            str(SMOKE),
            "--profile",
            "smoke",
            "--executor",
            "torchrun",
            "--gpus-per-run",
            "2",
            "--set",
            f"data_dir={folder}",
            f"runs_dir={runs_dir}",
            "checkpoint_minutes=0",
            "device=cpu",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "a"), env=env, cwd=tmp_path, check=True, capture_output=True)
    first = load_sweep(SMOKE, {"data_dir": str(folder), "runs_dir": str(tmp_path / "b")})[0].config
    kill = {**env, "HYPERSPHERE_KILL_AT": "2:1", "HYPERSPHERE_KILL_RUN": first.run_dir().name}
    proc = subprocess.Popen(
        cmd(tmp_path / "b"),
        env=kill,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        err = proc.communicate(timeout=300)[1]
    except subprocess.TimeoutExpired:  # hung: kill its whole tree (torchrun's workers run in sessions of their own)
        for pid in process_tree(proc.pid):
            os.kill(pid, signal.SIGKILL)
        raise
    assert proc.returncode != 0 and f"torchrun training of {first.run_dir().name} failed" in err, err[-3000:]
    assert runs.train_status(first.run_dir(), TRAIN_VERSION) == "todo"
    state = runs.load_state(first.run_dir(), first.hashed(), TRAIN_VERSION)
    assert (state["epoch"], state["step"]) == (2, 1)
    subprocess.run(cmd(tmp_path / "b"), env=env, cwd=tmp_path, check=True, capture_output=True)
    assert runs.load_summary(first.run_dir())["resumed"] == [{"epoch": 2, "step": 1}]
    for run in load_sweep(SMOKE, {"data_dir": str(folder), "runs_dir": str(tmp_path / "a")}):
        a = runs.load_checkpoint(run.config.run_dir() / runs.CHECKPOINT)
        b = runs.load_checkpoint(tmp_path / "b" / run.config.run_dir().name / runs.CHECKPOINT)
        for module in ("encoder", "moco"):
            assert all(torch.equal(a[module][k], b[module][k]) for k in a[module]), (run.config.objective, module)
    df = pd.read_csv(tmp_path / "results" / "smoke" / "imagenet.csv")
    assert list(df["status"]) == ["done", "done"] and (df["val_penultimate_linear"] >= 0).all()
