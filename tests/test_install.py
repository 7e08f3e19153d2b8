"""A non-editable install, as a user who wants the losses and `measure` in a project of their own gets it: the wheel
built from this checkout, installed into a fresh virtual environment outside the repository, runs the command line
from a folder outside the repository. It fails when the wheel leaves out a subpackage or a shipped data file."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel, trains a digits encoder (about 30 s)

REPO = Path(__file__).resolve().parents[1]
# what the wheel must hold: each folder of the checkout and where it lands in site-packages (pyproject's package-dir)
SHIPPED = {
    "src/hypersphere": "hypersphere",
    "configs": "hypersphere/configs",
    "data/reference": "hypersphere/reference",
}
NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _python_path(python: Path, key: str) -> Path:
    return Path(
        subprocess.check_output(
            [python, "-c", f"import sysconfig; print(sysconfig.get_paths()[{key!r}])"], text=True
        ).strip()
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's bin folder, a copy of the sources its wheel was built from). The environment holds
    hypersphere from the wheel only; its dependencies come from this interpreter's site-packages through a .pth
    line, which puts that folder on sys.path without running its .pth files (site.addpackage), so the editable
    install's finder there cannot leak in."""
    tmp = tmp_path_factory.mktemp("install")
    sources = tmp / "sources"  # a copy: building in the checkout would write build/lib and src/*.egg-info there
    for name in ("pyproject.toml", "README.md"):
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, sources / name)
    for folder in SHIPPED:
        shutil.copytree(REPO / folder, sources / folder, ignore=NOT_SOURCES)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "wheel", sources], check=True
    )
    (wheel,) = (tmp / "wheel").glob("hypersphere-*.whl")
    env = tmp / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run(pip + ["--python", python, "install", "--no-deps", "--no-index", wheel], check=True)
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))  # after the install: pip
    (_python_path(python, "purelib") / "_dependencies.pth").write_text("\n".join(deps) + "\n")  # sees none of them
    return env / "bin", sources


def _run(bin_dir: Path, cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_holds_every_subpackage_and_shipped_file(installed):
    bin_dir, sources = installed
    site = _python_path(bin_dir / "python", "purelib")
    for folder, target in SHIPPED.items():
        missing = _files(sources / folder) - _files(site / target)
        assert not missing, f"the wheel leaves out {sorted(missing)} of {folder}/"
    assert {p.parent.name for p in (sources / "src/hypersphere").glob("*/__init__.py")} >= {"domains", "items"}


def test_the_installed_package_is_the_wheels_not_the_checkouts(installed, tmp_path):
    bin_dir, _ = installed
    probe = (
        "import json, sys, hypersphere, hypersphere.train, hypersphere.domains.image; from hypersphere import "
        "resources; print(json.dumps({'file': hypersphere.__file__, 'configs': str(resources.configs()), "
        "'editable': [m for m in sys.modules if 'editable' in m] + [repr(f) for f in sys.meta_path "
        "if 'editable' in repr(f)]}))"
    )
    out = json.loads(_run(bin_dir, tmp_path, bin_dir / "python", "-c", probe))
    env = bin_dir.parent.resolve()
    assert Path(out["file"]).resolve().is_relative_to(env) and Path(out["configs"]).resolve().is_relative_to(env)
    assert out["editable"] == []


def test_the_command_line_runs_from_outside_the_repository(installed, tmp_path):
    """train (the smoke-sized digits run), evaluate and measure it, and list a paper sweep (the paper profile, its
    sweep file and the reference table it reads, all from the wheel)."""
    bin_dir, _ = installed
    assert not tmp_path.resolve().is_relative_to(REPO)
    cli = bin_dir / "hypersphere"
    out = _run(
        bin_dir,
        tmp_path,
        cli,
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--dim",
        "8",
        "--batch-size",
        "256",
        "--device",
        "cpu",
        "--quiet",
    )
    run_dir = out.splitlines()[0]
    assert (tmp_path / run_dir).is_dir() and Path(run_dir).parts[0] == "runs"
    out = _run(
        bin_dir,
        tmp_path,
        cli,
        "evaluate",
        run_dir,
        "--probe",
        "adam",
        "--probe-epochs",
        "2",
        "--cv-folds",
        "0",
        "--taps",
        "output",
        "--device",
        "cpu",
    )
    assert {"align", "uniform", "val_output_linear"} <= set(json.loads(out))
    listed = _run(bin_dir, tmp_path, cli, "sweep", "cloud", "--profile", "paper", "--dry-run").splitlines()
    assert len(listed) > 300 and all(line.startswith("todo") for line in listed)  # the paper's 306 + 3 STL-10 encoders
    measured = json.loads(_run(bin_dir, tmp_path, cli, "measure", run_dir, "--json"))
    assert measured["n"] == 450 and {"align", "uniform"} <= set(measured)
