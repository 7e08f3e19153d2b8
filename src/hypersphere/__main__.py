"""Command line: `python -m hypersphere {train,evaluate,sweep,decide,data,notebook,report,profile} ...` (`--help` on
each)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

import yaml

from . import decide, measure, notebook, profiles, report, runs, scale, sweep
from .domains import DOMAINS, domain_of
from .evaluate import EvalConfig, evaluate_run
from .items import say
from .train import Diverged, TrainConfig, train

EXAMPLES = """examples:
  python -m hypersphere train --dataset digits --objective "align(alpha=2) + uniform(t=2)" --epochs 30 \
--batch-size 128 --dim 32
  python -m hypersphere evaluate runs/digits-1a2b3c4d5e --probe adam --cv-folds 0
  python -m hypersphere sweep cloud --profile quick --eval probe=adam
  RAY_ADDRESS=auto python -m hypersphere sweep cloud --profile paper --executor ray --gpus-per-run 0.25
  python -m hypersphere notebook notebooks/03_metrics_vs_accuracy.ipynb --profile quick
  python -m hypersphere report --profile quick
  python -m hypersphere profile new mystudy --from quick
  python -m hypersphere scale --profile paper --host-gb 64
"""


def _add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the config dataclass `cls`, its default shown by --help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            parser.add_argument(flag, type=item, nargs="*", default=f.default, metavar=item.__name__.upper())
        elif hint is typing.Any:  # e.g. an augmentation recipe: a name or a YAML mapping
            # argparse passes a string default through `type`, and YAML reads "" as None: keep the default as it is
            parser.add_argument(
                flag,
                type=lambda text: yaml.safe_load(text) if text else text,
                default=f.default,
                help=f"(default: {f.default!r})",
            )
        else:
            parser.add_argument(flag, type=hint, default=f.default, help=f"(default: {f.default!r})")


def _from_args(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()):
    return cls.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip})


def _key_values(items: list[str]) -> dict[str, object]:
    out = {}
    for text in items:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {text!r}")
        out[key] = yaml.safe_load(value)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hypersphere",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one encoder (skipped when its run is finished)")
    _add_options(p, TrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("evaluate", help="evaluate finished runs (cached per evaluation config) and print the results")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    _add_options(p, EvalConfig)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default="data")
    p = sub.add_parser(
        "sweep",
        help="train and evaluate a sweep's missing runs into results/<profile>/<name>.csv",
        description=sweep.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="a sweep of configs/sweeps/<profile>/ (e.g. cloud) or a path to a .yaml file")
    p.add_argument("--profile", default="quick", help=f"one of {', '.join(profiles.names())} (default: quick)")
    p.add_argument(
        "--executor",
        choices=("local", "torchrun", "ray"),
        default="local",
        help="torchrun: each run on --gpus-per-run GPUs with DDP; ray: one Ray task per run, on a local "
        "instance or the cluster at $RAY_ADDRESS",
    )
    p.add_argument(
        "--workers",
        default=None,
        help="local: runs at a time, in worker processes, or auto (all cores; default: the profile's)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        help="Ray: GPUs per run (fractions share a card); torchrun: processes (GPUs) per run",
    )
    p.add_argument("--cpus-per-run", type=int, default=1, help="CPU threads per run (Ray: CPUs reserved per task)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed (diverged)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override a training default of every run, e.g. --set data_dir=/data device=cuda",
    )
    p.add_argument(
        "--eval",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override the sweep's evaluation config, e.g. --eval probe=adam cv_folds=3",
    )
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs and their status, train nothing")
    p = sub.add_parser(
        "decide",
        help="every comparison of a profile with a `decide:` design: its first stage, the "
        "plan it fixes, the planned seeds, then the verdicts (hypersphere.decide)",
        description=decide.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", default="decide")
    p.add_argument("--workers", default=None, help="runs at a time, or auto (default: the profile's)")
    p = sub.add_parser(
        "data",
        help="download a dataset (torchvision's official files; the embedded stand-ins are built) and check it loads",
    )
    p.add_argument("dataset", choices=[ds for d in DOMAINS.values() for ds in d.datasets])
    p.add_argument("--data-dir", default="data")
    p = sub.add_parser("notebook", help="execute a notebook at a profile into build/<profile>/")
    p.add_argument("path", type=Path)
    p.add_argument("--profile", default="quick")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("report", help="render build/<profile>/ to HTML with an index of paper items and verdicts")
    p.add_argument("--profile", default="quick")
    p = sub.add_parser(
        "measure",
        help="L_align, L_uniform (with CIs) and effective rank of a features file, a run "
        "or any module (hypersphere.measure)",
        description=measure.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        help="features.npy or .pt ([2, N, d], or [N, d] with --positives), a run directory, or "
        "module:callable returning an nn.Module",
    )
    p.add_argument("--positives", help="[P, 2] positive index pairs (.npy or .pt) into [N, d] features")
    p.add_argument(
        "--dataset",
        help="for module:callable: a dataset of this project (imagefolder: --data-dir holds train/ and val/)",
    )
    p.add_argument("--data-dir", default="data")
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--t", type=float, default=2.0)
    p.add_argument("--normalize", action="store_true", help="l2-normalise the features first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser(
        "publish", help="copy build/<profile>/'s executed notebooks, figures and an index into docs/<profile>/"
    )
    p.add_argument("--profile", default="quick")
    p = sub.add_parser("profile", help="show a profile, or create one to edit (`profile new NAME --from quick`)")
    p.add_argument("action", choices=("show", "new"))
    p.add_argument("name")
    p.add_argument("--from", dest="base", default="quick")
    p = sub.add_parser(
        "rehearse",
        help="every sweep of a profile at miniature size through the real code, then its "
        "notebooks (hypersphere.rehearse)",
    )
    p.add_argument("--profile", default="paper", help="a profile whose datasets miniature.py writes (default: paper)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("build/rehearse"),
        help="output folder, emptied first (default: build/rehearse)",
    )
    p = sub.add_parser(
        "scale",
        help="a scale model of the paper's datasets: host memory and time of loading, a "
        "training step and an evaluation, projected to the paper's sizes",
        description=scale.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scale.add_arguments(p)
    return parser


def _workers(value: str | None, profile: profiles.Profile) -> int:
    if value is None:
        return profile.workers
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            run_dir = train(_from_args(TrainConfig, args), progress=not args.quiet)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process reports
                print(run_dir)
                print(json.dumps(runs.load_summary(run_dir), indent=2))
        elif args.command == "evaluate":
            cfg = _from_args(EvalConfig, args)
            for run_dir in args.run_dirs:
                record = evaluate_run(run_dir, cfg, args.device, args.data_dir)
                print(json.dumps({"run": record["run"], **record["results"]}, indent=2))
        elif args.command == "sweep":
            prof = profiles.load(args.profile)
            path = sweep.sweep_path(args.name, args.profile)
            sweep_runs = sweep.load_sweep(path, _key_values(args.set), _key_values(args.eval))
            table = prof.results_dir / f"{path.stem}.csv"
            staged = bool(prof.decide) and path.stem in decide.COMPARISONS  # the two-stage design (decide.py)
            if args.dry_run:
                if staged and (plan := decide.load_plan(prof.figures_dir).get(decide.COMPARISONS[path.stem].item)):
                    sweep_runs = sweep_runs + decide.repeat_at(sweep_runs, plan["new_seeds"])
                for run in sweep_runs:
                    print(f"{sweep.status(run):11s} {run.config.run_dir().name:32s} {run.config.canonical_objective}")
                return 0

            def run_sweep(these: list[sweep.SweepRun]):
                return sweep.run_sweep(
                    these,
                    table,
                    args.executor,
                    args.retry_failed,
                    _workers(args.workers, prof),
                    args.gpus_per_run,
                    args.cpus_per_run,
                )

            if staged:
                df = decide.run(path.stem, sweep_runs, prof.results_dir, prof.figures_dir, prof.decide, run_sweep)
            else:
                df = run_sweep(sweep_runs)
            print(f"{table}: " + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()))
        elif args.command == "decide":
            prof = profiles.load(args.profile)
            if not prof.decide:
                raise ValueError(f"profile {prof.name!r} sets no `decide:` design; use --profile decide")
            workers = ["--workers", args.workers] if args.workers else []
            for name in prof.sweeps:
                if rc := main(["sweep", name, "--profile", prof.name, *workers]):
                    return rc
            plans = decide.load_plan(prof.figures_dir)
            for c in (decide.COMPARISONS[name] for name in prof.sweeps if name in decide.COMPARISONS):
                print(say(decide.judge(c, c.claims(prof.results_dir), plans.get(c.item))))
        elif args.command == "data":
            try:
                data = domain_of(args.dataset).load(args.dataset, args.data_dir, True)
            except OSError as e:
                raise OSError(
                    f"downloading {args.dataset} into {args.data_dir} failed ({e}); check the network, "
                    "or put the official files there by hand"
                ) from None
            print(f"{args.dataset}: {data.summary()}, under {args.data_dir}")
        elif args.command == "notebook":
            print(notebook.execute(args.path, args.profile, ".", args.data_dir, args.device))
        elif args.command == "report":
            prof = profiles.load(args.profile)
            print(report.build_report(prof.build_dir, prof.figures_dir, prof.build_dir / "report"))
        elif args.command == "measure":
            kw = {"alpha": args.alpha, "t": args.t, "normalize": args.normalize}
            if Path(args.what).is_dir():
                result = measure.from_run(args.what, args.data_dir, **kw)
            elif ":" in args.what and not Path(args.what).exists():
                if not args.dataset:
                    raise ValueError("module:callable needs --dataset (e.g. --dataset digits-color)")
                result = measure.from_module(args.what, args.dataset, args.data_dir, **kw)
            else:
                result = measure.from_file(args.what, args.positives, **kw)
            print(json.dumps(result, indent=2) if args.json else measure.table(result))
        elif args.command == "rehearse":
            from . import rehearse

            return rehearse.main(args.profile, args.out)
        elif args.command == "scale":
            return scale.run(args)
        elif args.command == "publish":
            prof = profiles.load(args.profile)
            print(report.publish(prof.build_dir, prof.figures_dir, Path("docs") / prof.name))
        elif args.action == "new":
            print(
                f"{profiles.new(args.name, args.base)}: edit it and configs/sweeps/{args.name}/, then "
                f"`make PROFILE={args.name}`"
            )
        else:
            print(profiles.path(args.name).read_text())
    except (ValueError, OSError, KeyError, runs.RunError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
