"""The GPU check's cost model: projected GPU-hours and counted PFLOP of the paper sweeps, from the seconds per step
the check measured (bench_cuda.py) and the FLOPs per sample it counted. Pure functions of configs and numbers: no
device, no timing (tests/test_bench.py checks them on made-up timings).

A run costs epochs x steps per epoch x the seconds per step measured for its kind of step (step_kind) at its batch,
training only (no evaluation). Runs of one kind at a batch the check did not measure take the nearest measured
batch's time scaled linearly by the batch (the dry run measures one small batch per kind); a precision never
measured takes the other one's. Its compute is epochs x samples per epoch x counted FLOPs per sample, device
independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypersphere.losses import TERMS, Objective

# samples an epoch iterates over, per paper dataset
PAPER_DATA = {
    "stl10": 105_000,  # train + unlabeled
    "nyu-depth-v2": 795,  # the labeled train split (depth.load_nyu)
    "cifar10": 50_000,
    "imagenet100": 126_689,  # CMC's 100 classes of ImageNet's train split (moco.build_imagenet100)
    "imagenet": 1_281_167,  # ImageNet-1k's train split
    "bookcorpus": 74_004_228,  # sentences: Zhu et al. 2015's count, an assumption (no longer distributed)
}
ASSUMED = {"bookcorpus"}  # sizes above that are assumptions, said so in the projections


def step_kind(cfg) -> str:
    """What sets a run's step time apart from another's, as a name: its dataset (the images' size), encoder, a MoCo
    queue, BatchNorm groups, and the modules its objective adds (its terms' own: a supervised head, SimSiam's and
    BYOL's predictor, DINO's prototypes; an EMA target). Not part of it, because they barely move the time (the loss
    is a small share of a step): the objective's terms and weights, the dim, the queue's length, lr and schedule;
    QT's unnormalised encoder (qt-raw: the same GRUs); and the precision, which Measured keeps apart."""
    objective = Objective.parse(cfg.objective)
    extras = (
        ("queue", cfg.queue > 0),
        (f"bn_groups={cfg.bn_groups}", cfg.bn_groups > 1),
        *((TERMS[t.name].key, TERMS[t.name].own is not None) for t in objective.terms),
        ("target", objective.reads("targets")),
    )
    return " ".join([cfg.dataset, cfg.arch.removesuffix("-raw")] + [name for name, on in extras if on])


def steps_per_epoch(samples: int, batch: int, drop_last: bool) -> int:
    return samples // batch if drop_last else -(-samples // batch)


@dataclass
class Measured:
    """What the projections use: seconds per step of each kind of step at each measured batch and precision, and
    the counted forward + backward FLOPs per sample (a positive pair, or a sentence) of each kind."""

    seconds: dict = field(default_factory=dict)  # (kind, bf16) -> {batch: seconds per step}
    flops: dict = field(default_factory=dict)  # kind -> FLOPs per sample

    def add(self, kind: str, batch: int, bf16: bool, seconds: float) -> None:
        self.seconds.setdefault((kind, bf16), {})[batch] = seconds

    def seconds_per_step(self, kind: str, batch: int, bf16: bool) -> tuple[float, int]:
        """Seconds per step at `batch`, from the nearest measured batch scaled linearly; and that batch."""
        table = self.seconds.get((kind, bf16)) or self.seconds[(kind, not bf16)]
        near = min(table, key=lambda b: abs(b - batch) / b)
        return table[near] * batch / near, near


@dataclass(frozen=True)
class Cost:
    seconds: float = 0.0
    flop: float = 0.0
    scaled: frozenset = frozenset()  # (batch, measured batch it was scaled from)

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600

    @property
    def pflop(self) -> float:
        return self.flop / 1e15

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.seconds + other.seconds, self.flop + other.flop, self.scaled | other.scaled)


def run_cost(cfg, measured: Measured, samples: dict[str, int] = PAPER_DATA) -> Cost:
    """One run's training: epochs x steps per epoch x seconds per step of its kind at its batch; epochs x the
    samples its steps see (all of them, or the full batches' when the last partial one is dropped) x FLOPs per
    sample."""
    n, kind = samples[cfg.dataset], step_kind(cfg)
    steps = steps_per_epoch(n, cfg.batch_size, cfg.drop_last)
    seconds, near = measured.seconds_per_step(kind, cfg.batch_size, cfg.bf16)
    return Cost(
        cfg.epochs * steps * seconds,
        cfg.epochs * min(n, steps * cfg.batch_size) * measured.flops[kind],
        frozenset({(cfg.batch_size, near)} - {(near, near)}),
    )


def sweep_cost(configs, measured: Measured, samples: dict[str, int] = PAPER_DATA) -> Cost:
    """The sum of run_cost over a sweep's runs."""
    return sum((run_cost(cfg, measured, samples) for cfg in configs), Cost())
