"""`make bench`: speed ratios of this replication against reference implementations, measured side by side.

Each row times our code and a reference doing the same work, alternately round after round, and reports the
median over rounds of (reference time / our time): higher is better, and a busy machine slows both sides
alike instead of faking a speedup. The table is printed and written to <out>/<machine>.md and .json together
with a description of the machine (CPU model, cores, threads, torch version, device, load average).

  benchmark  what                                                                      target (ratio)
  loss       L_uniform fwd+bwd: ours vs torch.pdist form, B 256-4096, d 128           >= 1.0 at 256, >= 1.5 at >= 768
             (+ finite loss and gradients where pdist gives -inf / NaN)
  augment    paper augmentation views/s: batched tensor ops vs torchvision+DataLoader  >= 3 (same cores each)
  train      train() pairs/s / (fwd+bwd+SGD on pre-augmented inputs) pairs/s           >= 0.85 on CPU
  probe      cached features (+5-NN) vs the paper's full augmented linear probe        >= 10, same accuracy
             sweep workers' sentence probes at once, BLAS capped at 1 thread vs default  >= 1
  stream     streamed JPEGs -> MoCo v2 views/s: ImageFiles + batched augment vs PIL    >= 1 (same cores each)
  cuda       the GPU check (make gpu-check): the trainer's own step for every kind of    (CUDA only; else skipped;
             step the paper sweeps train, at their batches (SmallAlexNet, ResNet-50     --dry-run: on the CPU)
             MoCo in memory and streamed through train(), Quick-Thought), bf16, the
             depth decoder, fp32 vs bf16 accuracy, a 2-process DDP run (2 GPUs), each
             paper sweep's projected GPU-hours and PFLOP (costs.py), packed runs

  python bench/run.py [--quick] [--only loss,augment,...] [--threads N] [--out DIR] [--cuda-only]

--threads sets torch's intra-op threads AND the reference DataLoader's workers (default: torch's default).
Small ops with 2 threads on a machine where other processes hold a core can be ~100x slower (OpenMP
spin/yield), so every results file states the thread count and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench_augment
import bench_cuda
import bench_loss
import bench_probe
import bench_stream
import bench_train
from timing import Row, finite_positive

BENCHES = ("loss", "augment", "train", "probe", "stream", "cuda")
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe_machine() -> dict[str, object]:
    cuda = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": f"cuda: {torch.cuda.get_device_name()} (x{torch.cuda.device_count()})" if cuda else "cpu only",
        "omp_env": " ".join(
            f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ
        )
        or "none set",
        "python": platform.python_version(),
        "commit": git_commit(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def machine_slug(machine: dict[str, object]) -> str:
    """File name for a machine: the GPU's name on CUDA machines, else the CPU model and core count."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"{machine['cpu']}-{machine['cores']}cores"
    name = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*?ghz", "", name, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(rows: list[Row]) -> str:
    head = ["benchmark", "case", "ours", "reference", "ratio", "target", "met", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        target = f">= {r.target:g}x" if r.target is not None else "-"
        lines.append("| " + " | ".join([r.bench, r.case, r.ours, r.reference, ratio, target, r.met, r.note]) + " |")
    return "\n".join(lines)


def write_results(
    out: Path, slug: str, machine: dict[str, object], rows: list[Row], args: argparse.Namespace, seconds: float
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    md = [
        f"# hypersphere benchmark: {slug}",
        "",
        f"`python bench/run.py {' '.join(sys.argv[1:])}` took {seconds:.0f} s.",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        "",
        "ratio = median over interleaved rounds of (reference time / our time) for the same work; higher is better.",
        "",
        table(rows),
        "",
    ]
    (out / f"{slug}.md").write_text("\n".join(md))
    record = {
        "machine": machine,
        "args": vars(args) | {"out": str(args.out)},
        "seconds": round(seconds, 1),
        "rows": [r.as_dict() for r in rows],
    }
    (out / f"{slug}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out / f"{slug}.md"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round (about a minute; used by the test)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--cuda-only", action="store_true", help="only the CUDA measurements (loss on CUDA + cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch threads = DataLoader workers (0: torch's default)")
    p.add_argument("--pack", type=int, default=4, help="processes packed on one GPU in the cuda benchmark")
    p.add_argument("--no-compile", action="store_true", help="cuda benchmark: skip the torch.compile variant")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --cuda-only on a machine without CUDA: run every "
        "code path on the CPU at tiny sizes (no measurement) and skip what needs a GPU",
    )
    p.add_argument("--name", default="", help="results file name (default: GPU name, else CPU model and cores)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    args = p.parse_args(argv)
    only = [b for b in args.only.split(",") if b] or list(BENCHES)
    if bad := set(only) - set(BENCHES):
        p.error(f"unknown benchmark(s) {sorted(bad)}; choose from {', '.join(BENCHES)}")
    if args.cuda_only:
        if not torch.cuda.is_available() and not args.dry_run:
            p.error("--cuda-only needs a CUDA device; run without it on a CPU machine, or add --dry-run")
        only = [b for b in only if b in ("loss", "cuda")]
    if args.threads < 0:
        p.error(f"--threads must be >= 1 (or 0 for torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    machine = describe_machine()
    slug = args.name or machine_slug(machine)
    slug += (
        "-quick" * args.quick
        + "-cuda" * args.cuda_only
        + "-dryrun" * args.dry_run
        + (f"-{'-'.join(only)}" if args.only else "")
    )
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with {threads} thread(s), "
        f"{machine['device']}, load average {machine['load_average_start']}",
        flush=True,
    )

    load = machine["load_average_start"]
    if load and threads > 1 and load[0] > machine["cores"] - threads + 0.5:
        print(
            f"warning: load average {load[0]:.1f} on {machine['cores']} cores while torch uses {threads} threads: "
            f"other processes compete for the cores, and small multi-threaded ops can run ~100x slower "
            f"(OpenMP spin-waiting). Timings will be noisy; compare --threads 1 or OMP_WAIT_POLICY=PASSIVE.",
            flush=True,
        )
    start, rows = time.perf_counter(), []
    devices = (
        [torch.device("cuda" if torch.cuda.is_available() else "cpu")] if args.cuda_only else [torch.device("cpu")]
    )
    if torch.cuda.is_available() and not args.cuda_only:
        devices.append(torch.device("cuda"))
    runners = {
        "loss": lambda: bench_loss.run(args.quick, devices),
        "augment": lambda: bench_augment.run(args.quick, threads),
        "train": lambda: bench_train.run(args.quick),
        "probe": lambda: bench_probe.run(args.quick),
        "stream": lambda: bench_stream.run(args.quick, threads),
        "cuda": lambda: bench_cuda.run(args.quick, args.pack, compile=not args.no_compile, dry_run=args.dry_run),
    }
    for name in only:
        t0 = time.perf_counter()
        new = runners[name]()
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]\n{table(new)}\n", flush=True)
        rows += new
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    seconds = time.perf_counter() - start
    path = write_results(args.out, slug, machine, rows, args, seconds)
    print(table(rows))
    bad = [r for r in rows if r.ratio is not None and not finite_positive(r.ratio)]
    print(
        f"\n{len(rows)} rows in {seconds:.0f} s; targets met: "
        f"{sum(r.met == 'yes' for r in rows)}/{sum(r.met in ('yes', 'no') for r in rows)}; written to {path}"
    )
    if bad:
        sys.exit(f"non-finite or non-positive ratio in {len(bad)} row(s)")


if __name__ == "__main__":
    main()
