"""The trainer on the embedded digits: one short run per objective family, determinism, fine-tuning,
run records, bad input and divergence."""
import json
import os

import pytest
import torch

from hypersphere import runs
from hypersphere.__main__ import main
from hypersphere.train import Diverged, TrainConfig, _load_parent, make_encoder, train
from hypersphere.data import load_dataset

FAST = dict(dataset="digits", dim=16, epochs=2, batch_size=128, probe_mode="cached", probe_epochs=5, cv_folds=2,
            device="cpu")


def cfg(tmp_path, **kw):
    return TrainConfig(**{**FAST, "runs_dir": str(tmp_path / "runs"), **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished contrastive run shared by the tests that only read it."""
    config = cfg(tmp_path_factory.mktemp("shared"), objective="contrastive(tau=2.5)")
    return config, train(config, progress=False)


@pytest.mark.parametrize("objective, supervised", [
    ("align(alpha=2) + uniform(t=2)", False),
    ("contrastive(tau=0.5)", False),
    ("contrastive(tau=0.5) + 0.5*align(alpha=1) + uniform(t=2)", False),
    ("", True),
])
def test_one_short_run_per_objective_family(tmp_path, objective, supervised):
    run_dir = train(cfg(tmp_path, objective=objective or "align", supervised=supervised), progress=False)
    assert runs.is_complete(run_dir)
    result = runs.load_result(run_dir)
    for key in ("val_output_linear", "val_output_5nn", "val_fc7_linear", "cv_output_linear", "align", "uniform"):
        assert key in result and result[key] == result[key]  # present and not NaN
    assert result["probe_mode"] == "cached" and result["device"] == "cpu"
    assert ("contrastive" in result) == ("contrastive" in objective)
    log = (run_dir / runs.LOG).read_text().splitlines()
    assert len(log) == 1 + 2 and "loss" in log[0]
    assert json.loads((run_dir / runs.CONFIG).read_text())["dataset"] == "digits"


def test_same_config_and_seed_give_identical_numbers(tmp_path):
    a = train(cfg(tmp_path / "a", seed=3, epochs=1), progress=False)
    b = train(cfg(tmp_path / "b", seed=3, epochs=1), progress=False)
    c = train(cfg(tmp_path / "c", seed=4, epochs=1), progress=False)
    assert a.name == b.name != c.name
    ra, rb = runs.load_result(a), runs.load_result(b)
    keys = [k for k in ra if k.startswith(("val_", "cv_")) or k in ("align", "uniform", "final_loss")]
    assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}
    wa = runs.load_checkpoint(a / runs.CHECKPOINT)["encoder"]
    wb = runs.load_checkpoint(b / runs.CHECKPOINT)["encoder"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert runs.load_result(c)["final_loss"] != ra["final_loss"]


def test_finished_run_is_not_retrained(finished):
    config, run_dir = finished
    stamp = os.stat(run_dir / runs.RESULT).st_mtime_ns
    assert train(config, progress=False) == run_dir
    assert os.stat(run_dir / runs.RESULT).st_mtime_ns == stamp


def test_fine_tuning_starts_from_the_parent_weights(tmp_path, finished):
    parent = finished[1]
    child_cfg = cfg(tmp_path, objective="align(alpha=2) + uniform(t=2)", init=str(parent), epochs=1)
    encoder = make_encoder(child_cfg, load_dataset("digits"))
    _load_parent(child_cfg, encoder)
    saved = runs.load_checkpoint(parent / runs.CHECKPOINT)["encoder"]
    assert all(torch.equal(encoder.state_dict()[k], saved[k]) for k in saved)
    child = train(child_cfg, progress=False)
    assert child != parent and runs.is_complete(child)
    assert json.loads((child / runs.CONFIG).read_text())["init"] == parent.name


def test_missing_parent_and_corrupt_records_fail_clearly(tmp_path):
    with pytest.raises(runs.RunError, match="not a finished run"):
        train(cfg(tmp_path, init=str(tmp_path / "nope")), progress=False)
    run_dir = train(cfg(tmp_path, epochs=1), progress=False)
    (run_dir / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(runs.RunError, match="corrupt.*delete"):
        runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    (run_dir / runs.RESULT).write_text('{"truncated": ')
    assert not runs.is_complete(run_dir)
    with pytest.raises(runs.RunError, match="corrupt"):
        runs.load_result(run_dir)


@pytest.mark.parametrize("kw, message", [
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(objective="unifrom(t=2)"), "unifrom"),
    (dict(lr=-0.1), "lr must be"),
    (dict(epochs=-1), "epochs must be"),
    (dict(taps=("fc9",)), "unknown taps"),
    (dict(arch="resnet"), "unknown arch"),
])
def test_bad_configs_are_refused_before_any_work(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(tmp_path, **kw)


def test_missing_dataset_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        train(cfg(tmp_path, dataset="stl10", data_dir=str(tmp_path / "data")), progress=False)


def test_divergence_is_recorded_as_failed(tmp_path):
    config = cfg(tmp_path, objective="contrastive(tau=0.5)", lr=1e12, weight_decay=0.0)
    with pytest.raises(Diverged, match="epoch"):
        train(config, progress=False)
    failed = json.loads((config.run_dir() / runs.FAILED).read_text())
    assert failed["epoch"] >= 1 and ("nan" in failed["reason"] or "inf" in failed["reason"])
    assert not runs.is_complete(config.run_dir())


def test_cli_train_and_eval(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--epochs", "1", "--dim", "8", "--batch-size", "256", "--probe-mode",
            "cached", "--probe-epochs", "2", "--cv-folds", "0", "--runs-dir", str(tmp_path), "--quiet",
            "--objective", "align(alpha=2) + uniform(t=2)", "--taps", "output"]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.splitlines()[0]
    assert main(["eval", run_dir]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["objective"] == "align(alpha=2) + uniform(t=2)"
    assert main(["train", "--dataset", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
