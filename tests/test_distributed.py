"""Two processes with the gloo backend train one encoder as one process would on the same global batch:
same loss, same gradients (distributed.py: gathered features keep their gradients; DDP averages), and with
MoCo the same queue (each process enqueues the keys of the global batch) and Shuffle-BN's keys (each process
encodes a share of the globally permuted key images)."""

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from hypersphere import distributed, runs
from hypersphere.domains.image import load_dataset
from hypersphere.domains import IMAGE
from hypersphere.losses import Objective
from hypersphere.models import DigitsNet
from hypersphere.methods import Method
from hypersphere.sweep import train_argv
from hypersphere.train import TRAIN_VERSION, TrainConfig, train

OBJECTIVES = (
    "contrastive(tau=0.5) + align(alpha=2) + uniform(t=2)",
    "xent()",
    "moco: contrastive(tau=0.2) + uniform(t=2)",
)
BATCH, WORLD, QUEUE = 16, 2, 64


def setup(seed: int = 0):
    torch.manual_seed(seed)
    return DigitsNet(in_channels=1, dim=8, input_size=12)


def make_method(obj: Objective, with_queue: bool, model: nn.Module, data) -> Method:
    """The trainer's method for `obj` (MoCo's queue and key encoder, xent's head), its head drawn at random: the
    zero-initialised one would pass the encoder no gradient to compare."""
    cfg = TrainConfig(dataset="digits", dim=8, batch_size=BATCH, queue=QUEUE if with_queue else 0, ema=0.9)
    method = Method(cfg, obj, data, model)
    torch.manual_seed(1)
    for module in method.owned.values():
        nn.init.normal_(module.weight, std=0.1)
    return method


def grads(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": p.grad.clone() for i, m in enumerate(modules) for k, p in m.named_parameters()}


def parse(objective: str) -> tuple[Objective, bool]:
    return Objective.parse(objective.removeprefix("moco: ")), objective.startswith("moco: ")


def finish() -> None:
    """Both processes past their last collective before either tears its group down. Without the barrier, a process
    whose peer had already gone aborted now and then ("terminate called without an active exception"); with it, none
    in 100 spawns here."""
    dist.barrier()
    dist.destroy_process_group()


def worker(rank: int, port: int, objective: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    encoder = setup()
    model = nn.parallel.DistributedDataParallel(encoder)
    obj, with_queue = parse(objective)
    method = make_method(obj, with_queue, model, data)
    moco = method.moco
    gen = torch.Generator().manual_seed(100 + rank)
    idx = distributed.shard(torch.arange(BATCH))
    x = [IMAGE.views(data, data.train_images[idx], gen) for _ in range(obj.views)]
    loss, _ = method.loss(model, x, data.train_labels[:BATCH])
    loss.backward()
    if moco is not None:  # every process enqueued the keys of the global batch
        torch.save(moco.queue[:BATCH].clone(), f"{out}/queue{rank}.pt")
    torch.save({"loss": loss.detach(), "grads": grads(encoder, *method.owned.values())}, f"{out}/rank{rank}.pt")
    finish()


def reference(objective: str):
    """One process, the same global batch: each half encoded as its process encodes it (its own
    augmentation stream and BatchNorm statistics), the losses on the concatenated features."""
    data = load_dataset("digits")
    encoder = setup()
    obj, with_queue = parse(objective)
    method = make_method(obj, with_queue, encoder, data)
    moco = method.moco
    if moco is not None:
        moco.momentum_update()
        perm = torch.randperm(BATCH)  # Shuffle-BN's permutation, as process 0 draws it (its global generator)
    zs, key_views = [], []
    for rank in range(WORLD):
        gen = torch.Generator().manual_seed(100 + rank)
        idx = torch.arange(BATCH)[rank * BATCH // WORLD : (rank + 1) * BATCH // WORLD]
        x = [
            IMAGE.views(data, data.train_images[idx], gen).contiguous(memory_format=torch.channels_last)
            for _ in range(obj.views)
        ]
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
    queue = moco.queue.clone() if moco is not None else None
    loss, _ = obj(zx, zy, owned=method.owned, labels=data.train_labels[:BATCH], queue=queue)
    loss.backward()
    return loss.detach(), grads(encoder, *method.owned.values()), zy.detach()


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
    from hypersphere.sweep import load_sweep, run_sweep
    from hypersphere.__main__ import _parser, _from_args

    path = tmp_path / "s.yaml"
    path.write_text(
        f"defaults: {{dataset: digits, dim: 8, epochs: 1, batch_size: 128, device: cpu, "
        f"runs_dir: {tmp_path / 'runs'}}}\n"
        "evaluation: {taps: [output], cv_folds: 0, l2_grid: [1.0e-3], l2_folds: 2}\n"
        "runs:\n  - {objective: 'align + uniform', augment: {recipe: digits, scale: [0.5, 1.0]}, "
        "snapshot_epochs: [0, 1]}\n"
    )
    (run,) = load_sweep(path)
    assert _from_args(TrainConfig, _parser().parse_args(["train", *train_argv(run.config)])) == run.config
    # the README's commands
    typed = _from_args(
        TrainConfig, _parser().parse_args(["train", "--dataset", "digits", "--objective", "align + uniform"])
    )
    assert typed.run_dir() == TrainConfig(dataset="digits", objective="align + uniform").run_dir()
    df = run_sweep([run], tmp_path / "t.csv", executor="torchrun", gpus_per_run=2, progress=False)
    assert list(df["status"]) == ["done"] and df.loc[0, "val_output_linear"] > 0
    assert runs.train_status(run.config.run_dir(), TRAIN_VERSION) == "done"


def test_torchrun_processes_bind_gpu_local_rank_before_nccl_starts(monkeypatch):
    """Process 9 of 16 (second node of two, eight GPUs each) trains on its node's GPU 1, bound as the current
    device before the NCCL group starts, and NCCL is bound to it; a lone process keeps the device asked for."""
    env = {"WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert distributed.local_device(torch.device("cuda"), env) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cuda", 3), {}) == torch.device("cuda", 3)
    assert distributed.local_device(torch.device("cpu"), env) == torch.device("cpu")
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.init_from_env(torch.device("cuda"))[0] == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("nccl", {"device_id": torch.device("cuda", 1)})]


def test_torchrun_restarts_on_a_shared_store_are_refused_with_the_fix(monkeypatch):
    """torchrun's default store outlives a restart: a restarted group would read its predecessor's addresses (gloo:
    connection refused), so a run that may restart asks for a store per start at its first start."""
    for key, value in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "TORCHELASTIC_MAX_RESTARTS": "1",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="--standalone .* and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        distributed.init_from_env(torch.device("cpu"))


COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "broadcast",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
)


def record_collectives(seen: list) -> None:
    """Wrap torch.distributed's collectives to record each call's name and the devices of the tensors it gets."""

    def devices(value) -> set:
        if isinstance(value, torch.Tensor):
            return {value.device}
        return set().union(*map(devices, value)) if isinstance(value, (list, tuple)) else set()

    for name in COLLECTIVES:

        def recorded(*args, _name=name, _real=getattr(dist, name), **kw):
            seen.append((_name, devices([*args, *kw.values()])))
            return _real(*args, **kw)

        setattr(dist, name, recorded)


MOCO = TrainConfig(
    dataset="digits", dim=8, epochs=2, batch_size=256, queue=256, ema=0.9, device="cpu", checkpoint_minutes=0
)  # 5 steps an epoch, the state saved after each


def train_worker(rank: int, port: int, out: str) -> None:
    """One process of `torchrun --nnodes 2 --nproc_per_node 1` (LOCAL_RANK 0 on both nodes) training MOCO, every
    collective recorded."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK="0",
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE="1",
        GROUP_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    seen = []
    record_collectives(seen)
    run_dir = train(replace(MOCO, runs_dir=out), progress=False)
    torch.save(
        {
            "seen": seen,
            "bound": distributed.collective_device(),
            "run": run_dir,
            "cuda": distributed.local_device(torch.device("cuda"), os.environ),
        },
        f"{out}/rank{rank}.pt",
    )
    finish()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """MOCO trained by two gloo processes with torchrun's environment (train_worker): the run and the records."""
    out = tmp_path_factory.mktemp("two")
    mp.spawn(train_worker, args=(free_port(), str(out)), nprocs=WORLD)
    return out


def test_every_collective_of_a_torchrun_run_gets_tensors_on_the_process_device(two_processes):
    """Through train(): the features' gather and its backward, the step's agreement to save, the generator states'
    gather, Shuffle-BN's permutation and the barriers all get tensors on the device the process bound (the CPU
    under gloo), none through an object collective (those pick a device of their own); on CUDA each process
    would bind GPU LOCAL_RANK."""
    for rank in range(WORLD):
        out = torch.load(two_processes / f"rank{rank}.pt", weights_only=False)
        names = {name for name, _ in out["seen"]}
        assert {"all_gather", "all_reduce", "broadcast", "barrier"} <= names and not {n for n in names if "object" in n}
        assert out["bound"] == torch.device("cpu") and out["cuda"] == torch.device("cuda", 0)
        assert all(devices <= {out["bound"]} for _, devices in out["seen"]), out["seen"]
        assert runs.load_summary(out["run"])["device"] == "cpu"
    assert runs.train_status(out["run"], TRAIN_VERSION) == "done"


def test_a_process_killed_under_torchrun_restarts_and_resumes_to_the_same_weights(two_processes, tmp_path):
    """torchrun --max-restarts 1 (with a store per start): process 1 SIGKILLs itself mid-epoch 2 (train.py's kill
    hook), torchrun restarts the group, which resumes from the state saved there and ends with the weights and queue
    of the uninterrupted run bit for bit."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "--max-restarts=1",
        "-m",
        "hypersphere",
        "train",
        "--quiet",
        *train_argv(replace(MOCO, runs_dir=str(tmp_path))),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "HYPERSPHERE_KILL_AT": "2:2",
        "HYPERSPHERE_KILL_RANK": "1",
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (d for d in tmp_path.iterdir() if d.is_dir())
    assert runs.load_summary(run)["resumed"] == [{"epoch": 2, "step": 2}]
    a, b = (runs.load_checkpoint(d / runs.CHECKPOINT) for d in (two_processes / run.name, run))
    for module in ("encoder", "moco"):
        assert all(torch.equal(a[module][k], b[module][k]) for k in a[module]), module
