"""Two processes with the gloo backend train one encoder as one process would on the same global batch:
same loss, same gradients (distributed.py: gathered features keep their gradients; DDP averages), and with
MoCo the same queue (each process enqueues the keys of the global batch) and Shuffle-BN's keys (each process
encodes a share of the globally permuted key images)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from hypersphere import distributed
from hypersphere.domains.image import load_dataset
from hypersphere.domains import IMAGE
from hypersphere.losses import Objective
from hypersphere.models import DigitsNet
from hypersphere.moco import MoCo
from hypersphere.train import batch_loss

OBJECTIVES = ("contrastive(tau=0.5) + align(alpha=2) + uniform(t=2)", "xent()", "moco: contrastive(tau=0.2) + uniform(t=2)")
BATCH, WORLD, QUEUE = 16, 2, 64


def setup(seed: int = 0):
    torch.manual_seed(seed)
    return DigitsNet(in_channels=1, dim=8, input_size=12), nn.Linear(8, 10)


def grads(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": p.grad.clone() for i, m in enumerate(modules) for k, p in m.named_parameters()}


def parse(objective: str) -> tuple[Objective, bool]:
    return Objective.parse(objective.removeprefix("moco: ")), objective.startswith("moco: ")


def worker(rank: int, port: int, objective: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    encoder, head = setup()
    model = nn.parallel.DistributedDataParallel(encoder)
    obj, with_queue = parse(objective)
    moco = MoCo(model, QUEUE, momentum=0.9) if with_queue else None
    gen = torch.Generator().manual_seed(100 + rank)
    idx = distributed.shard(torch.arange(BATCH))
    x = [IMAGE.views(data, data.train_images[idx], gen) for _ in range(obj.views)]
    loss, _ = batch_loss(model, head if obj.needs_labels else None, obj, x, data.train_labels[:BATCH], moco)
    loss.backward()
    if moco is not None:  # every process enqueued the keys of the global batch
        torch.save(moco.queue[:BATCH].clone(), f"{out}/queue{rank}.pt")
    torch.save({"loss": loss.detach(), "grads": grads(encoder, head) if obj.needs_labels else grads(encoder)},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def reference(objective: str):
    """One process, the same global batch: each half encoded as its process encodes it (its own
    augmentation stream and BatchNorm statistics), the losses on the concatenated features."""
    data = load_dataset("digits")
    encoder, head = setup()
    obj, with_queue = parse(objective)
    moco = MoCo(encoder, QUEUE, momentum=0.9) if with_queue else None
    if moco is not None:
        moco.momentum_update()
        perm = torch.randperm(BATCH)  # Shuffle-BN's permutation, as process 0 draws it (its global generator)
    zs, key_views = [], []
    for rank in range(WORLD):
        gen = torch.Generator().manual_seed(100 + rank)
        idx = torch.arange(BATCH)[rank * BATCH // WORLD:(rank + 1) * BATCH // WORLD]
        x = [IMAGE.views(data, data.train_images[idx], gen).contiguous(memory_format=torch.channels_last)
             for _ in range(obj.views)]
        if moco is None:
            zs.append(encoder(torch.cat(x)).chunk(obj.views))
        else:
            zs.append((encoder(x[0]),))
            key_views.append(x[1])
    zx = torch.cat([z[0] for z in zs])
    if moco is None:
        zy = torch.cat([z[-1] for z in zs])
    else:  # Shuffle-BN: "process" r encodes the r-th share of the permuted key images; then unpermute
        with torch.no_grad():
            shuffled = torch.cat(key_views)[perm]
            zy = torch.cat([moco.encoder_k(part) for part in shuffled.chunk(WORLD)])[torch.argsort(perm)]
    logits = head(zx) if obj.needs_labels else None
    queue = moco.queue.clone() if moco is not None else None
    loss, _ = obj(zx, zy, logits=logits, labels=data.train_labels[:BATCH], queue=queue)
    loss.backward()
    return loss.detach(), grads(encoder, head) if obj.needs_labels else grads(encoder), zy.detach()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path, objective):
    mp.spawn(worker, args=(free_port(), objective, str(tmp_path)), nprocs=WORLD)
    loss, ref_grads, keys = reference(objective)
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
        assert out["grads"].keys() == ref_grads.keys()
        for k, g in ref_grads.items():  # float32 sums in another order: equal to 1e-4 of each tensor's norm
            assert (out["grads"][k] - g).norm() <= 1e-4 * g.norm() + 1e-7, (rank, k)
        if objective.startswith("moco"):
            assert torch.allclose(torch.load(tmp_path / f"queue{rank}.pt"), keys, atol=1e-6)


def test_shard_needs_a_batch_that_divides_and_is_identity_alone():
    assert torch.equal(distributed.shard(torch.arange(7)), torch.arange(7))
    assert distributed.gather(torch.ones(3, 2)).shape == (3, 2)
    assert distributed.rank_world() == (0, 1) and distributed.agree(True)


def test_a_sweep_trains_a_run_under_torchrun_with_two_processes(tmp_path):
    """The torchrun executor rebuilds each config on the command line and trains it with DDP (gloo on CPU)."""
    from hypersphere import runs
    from hypersphere.sweep import load_sweep, run_sweep, train_argv
    from hypersphere.train import TRAIN_VERSION, TrainConfig
    from hypersphere.__main__ import _parser, _from_args
    path = tmp_path / "s.yaml"
    path.write_text(f"defaults: {{dataset: digits, dim: 8, epochs: 1, batch_size: 128, device: cpu, runs_dir: {tmp_path / 'runs'}}}\n"
                    "evaluation: {taps: [output], cv_folds: 0, l2_grid: [1.0e-3], l2_folds: 2}\n"
                    "runs:\n  - {objective: 'align + uniform', augment: {recipe: digits, scale: [0.5, 1.0]}, "
                    "snapshot_epochs: [0, 1]}\n")
    (run,) = load_sweep(path)
    assert _from_args(TrainConfig, _parser().parse_args(["train", *train_argv(run.config)])) == run.config
    typed = _from_args(TrainConfig, _parser().parse_args(["train", "--dataset", "digits", "--objective", "align + uniform"]))
    assert typed.run_dir() == TrainConfig(dataset="digits", objective="align + uniform").run_dir()  # the README's commands
    df = run_sweep([run], tmp_path / "t.csv", executor="torchrun", gpus_per_run=2, progress=False)
    assert list(df["status"]) == ["done"] and df.loc[0, "val_output_linear"] > 0
    assert runs.train_status(run.config.run_dir(), TRAIN_VERSION) == "done"
