"""Command line: `python -m hypersphere {train,eval,sweep,data} ...` (`--help` on each)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

import yaml

from . import runs, sweep
from .data import DATASETS, load_dataset
from .train import Diverged, TrainConfig, train

EXAMPLES = """examples:
  python -m hypersphere train --dataset digits --objective "align(alpha=2) + uniform(t=2)" --epochs 30 --batch-size 128 --dim 32
  python -m hypersphere train --dataset stl10 --objective "contrastive(tau=0.19)" --download
  python -m hypersphere eval runs/digits-1a2b3c4d5e
  python -m hypersphere sweep cloud --profile quick
  RAY_ADDRESS=auto python -m hypersphere sweep cloud --profile paper --executor ray --gpus-per-run 0.25
"""


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, its default and comment shown by --help."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            parser.add_argument(flag, type=item, nargs="*", default=f.default, metavar=item.__name__.upper())
        else:
            parser.add_argument(flag, type=hint, default=f.default, help=f"(default: {f.default!r})")


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--set takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypersphere", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train and evaluate one encoder (skipped when its run is finished)",
                             description=TrainConfig.__doc__)
    _add_config_options(p_train)
    p_train.add_argument("--quiet", action="store_true", help="no progress bar")
    p_eval = sub.add_parser("eval", help="print a finished run's config and results")
    p_eval.add_argument("run_dir", type=Path)
    p_sweep = sub.add_parser("sweep", help="run a sweep file's missing runs and write results/<profile>/<name>.csv",
                             description=sweep.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_sweep.add_argument("name", help="a sweep of configs/sweeps/<profile>/ (e.g. cloud) or a path to a .yaml file")
    p_sweep.add_argument("--profile", default="quick", help="smoke | quick | paper (default: quick)")
    p_sweep.add_argument("--executor", choices=("local", "ray"), default="local",
                         help="ray: one Ray task per run, on a local instance or the cluster at $RAY_ADDRESS")
    p_sweep.add_argument("--workers", type=int, default=1, help="local: runs at a time, in worker processes")
    p_sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs per run (fractions share a card)")
    p_sweep.add_argument("--cpus-per-run", type=int, default=1, help="CPU threads per run (Ray: CPUs reserved per task)")
    p_sweep.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed (diverged)")
    p_sweep.add_argument("--results-dir", type=Path, default=Path("results"))
    p_sweep.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                         help="override a default of every run, e.g. --set data_dir=/data device=cuda")
    p_sweep.add_argument("--dry-run", action="store_true", help="validate and list the runs and their status, train nothing")
    p_data = sub.add_parser("data", help="download a dataset (torchvision's official files) and check it loads")
    p_data.add_argument("dataset", choices=DATASETS)
    p_data.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig.from_dict(values)
            run_dir = train(cfg, progress=not args.quiet)
            print(run_dir)
            print(json.dumps({k: v for k, v in runs.load_result(run_dir).items() if k != "trajectory"}, indent=2))
        elif args.command == "data":
            try:
                data = load_dataset(args.dataset, args.data_dir, download=True)
            except OSError as e:
                raise OSError(f"downloading {args.dataset} into {args.data_dir} failed ({e}); check the network, "
                              "or put the official files there by hand") from None
            print(f"{args.dataset}: {len(data.encoder_images)} encoder images, {len(data.train_images)} labeled train, "
                  f"{len(data.val_images)} validation, {tuple(data.train_images.shape[1:])} uint8, under {args.data_dir}")
        elif args.command == "sweep":
            path = sweep.sweep_path(args.name, args.profile)
            sweep_runs = sweep.load_sweep(path, dict(_parse_override(kv) for kv in args.set))
            table = args.results_dir / args.profile / f"{path.stem}.csv"
            if args.dry_run:
                for run in sweep_runs:
                    print(f"{sweep.status(run):7s} {run.config.run_dir().name:32s} {run.config.canonical_objective}")
                return 0
            df = sweep.run_sweep(sweep_runs, table, args.executor, args.retry_failed, args.workers, args.gpus_per_run,
                                 args.cpus_per_run)
            print(f"{table}: " + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()))
        else:
            result = runs.load_result(args.run_dir)
            print(json.dumps({"config": runs.read_json(args.run_dir / runs.CONFIG), "result": result}, indent=2))
    except (ValueError, OSError, runs.RunError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
