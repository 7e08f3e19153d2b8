"""Command line: `python -m hypersphere {train,eval} ...` (`--help` on each)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from . import runs
from .train import Diverged, TrainConfig, train

EXAMPLES = """examples:
  python -m hypersphere train --dataset digits --objective "align(alpha=2) + uniform(t=2)" --epochs 30 --batch-size 128 --dim 32
  python -m hypersphere train --dataset stl10 --objective "contrastive(tau=0.19)" --download
  python -m hypersphere eval runs/digits-1a2b3c4d5e
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
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
            run_dir = train(cfg, progress=not args.quiet)
            print(run_dir)
            print(json.dumps({k: v for k, v in runs.load_result(run_dir).items() if k != "trajectory"}, indent=2))
        else:
            result = runs.load_result(args.run_dir)
            print(json.dumps({"config": runs.read_json(args.run_dir / runs.CONFIG), "result": result}, indent=2))
    except (ValueError, FileNotFoundError, runs.RunError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
