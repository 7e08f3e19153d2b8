"""The trainer on the embedded digits: one short run per objective family, determinism, fine-tuning,
run records, the training-code version, augmentation recipes, bad input and divergence."""

import csv
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hypersphere import losses, methods, runs, train as train_module
from hypersphere.__main__ import main
from hypersphere.augment import RECIPES, augment, recipe
from hypersphere.losses import Objective
from hypersphere.domains import IMAGE
from hypersphere.methods import Method
from hypersphere.train import TRAIN_VERSION, Diverged, TrainConfig, load_data, load_encoder, train

FAST = dict(dataset="digits", dim=16, epochs=2, batch_size=128, device="cpu")


def cfg(tmp_path, **kw):
    return TrainConfig(**{**FAST, "runs_dir": str(tmp_path / "runs"), **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished contrastive run shared by the tests that only read it."""
    config = cfg(tmp_path_factory.mktemp("shared"), objective="contrastive(tau=2.5)")
    return config, train(config, progress=False)


@pytest.mark.parametrize(
    "objective",
    [
        "align(alpha=2) + uniform(t=2)",
        "contrastive(tau=0.5)",
        "contrastive(tau=0.5) + 0.5*align(alpha=1) + uniform(t=2)",
        "xent()",
    ],
)
def test_one_short_run_per_objective_family(tmp_path, objective):
    run_dir = train(cfg(tmp_path, objective=objective), progress=False)
    assert runs.train_status(run_dir, TRAIN_VERSION) == "done"
    summary = runs.load_summary(run_dir)
    assert summary["train_version"] == TRAIN_VERSION and summary["device"] == "cpu"
    assert summary["steps"] == 2 * (1347 // 128) and summary["final_loss"] == summary["final_loss"]
    log = (run_dir / runs.LOG).read_text().splitlines()
    assert len(log) == 1 + 2 and "loss" in log[0]
    assert ("xent" in log[0]) == (objective == "xent()")
    state = runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    assert ("head" in state) == (objective == "xent()")  # the supervised head is saved with the encoder
    assert json.loads((run_dir / runs.CONFIG).read_text())["dataset"] == "digits"


def test_same_config_and_seed_give_identical_weights(tmp_path):
    a = train(cfg(tmp_path / "a", seed=3, epochs=1), progress=False)
    b = train(cfg(tmp_path / "b", seed=3, epochs=1), progress=False)
    c = train(cfg(tmp_path / "c", seed=4, epochs=1), progress=False)
    assert a.name == b.name != c.name
    wa = runs.load_checkpoint(a / runs.CHECKPOINT)["encoder"]
    wb = runs.load_checkpoint(b / runs.CHECKPOINT)["encoder"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (
        runs.load_summary(a)["final_loss"] == runs.load_summary(b)["final_loss"] != runs.load_summary(c)["final_loss"]
    )


def test_run_identity_is_what_changes_the_weights(tmp_path):
    base = cfg(tmp_path)
    assert base.run_dir() == cfg(tmp_path, device="cuda", data_dir="/elsewhere", name="").run_dir()
    assert base.run_dir() != cfg(tmp_path, augment="digits-color").run_dir()
    assert base.run_dir() != cfg(tmp_path, lr=0.1).run_dir()
    assert (
        cfg(tmp_path, objective="uniform(t=2)+align()").run_dir()
        == cfg(tmp_path, objective="align(alpha=2) + uniform(t=2)").run_dir()
    )


def test_finished_run_is_not_retrained_but_an_older_version_is(tmp_path, monkeypatch, capsys):
    config = cfg(tmp_path, epochs=1)
    run_dir = train(config, progress=False)
    stamp = os.stat(run_dir / runs.TRAIN).st_mtime_ns
    assert train(config, progress=False) == run_dir
    assert os.stat(run_dir / runs.TRAIN).st_mtime_ns == stamp
    (run_dir / runs.EVALS).mkdir()
    (run_dir / runs.EVALS / "classify-x.json").write_text("{}")
    monkeypatch.setattr(train_module, "TRAIN_VERSION", TRAIN_VERSION + 1)  # a numerics-changing commit
    assert runs.train_status(run_dir, TRAIN_VERSION + 1) == "stale"
    train(config, progress=False)
    assert (
        f"trained by training-code version {TRAIN_VERSION}, this is version {TRAIN_VERSION + 1}"
        in capsys.readouterr().err
    )
    assert runs.load_summary(run_dir)["train_version"] == TRAIN_VERSION + 1
    assert not (run_dir / runs.EVALS).exists()  # evaluations of the old weights are gone with them


def test_fine_tuning_starts_from_the_parent_weights(tmp_path, finished):
    parent = finished[1]
    child_cfg = cfg(
        tmp_path, objective="align(alpha=2) + uniform(t=2)", init=str(parent), epochs=0, snapshot_epochs=(0,)
    )
    child = train(child_cfg, progress=False)
    saved = runs.load_checkpoint(parent / runs.CHECKPOINT)["encoder"]
    start = runs.load_checkpoint(runs.snapshot_path(child, 0))["encoder"]
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert child != parent and json.loads((child / runs.CONFIG).read_text())["init"] == parent.name
    encoder, config, _ = load_encoder(child, snapshot=0)
    assert all(torch.equal(encoder.state_dict()[k], saved[k]) for k in saved)


@pytest.mark.parametrize("batches_per_draw", [2, 1000])
@pytest.mark.parametrize("drop_last", [True, False])
def test_each_step_trains_on_the_views_of_its_own_batch(tmp_path, monkeypatch, batches_per_draw, drop_last):
    """Views are drawn for a chunk of batches at once (VIEW_VALUES): step s must get the views of the images
    perm[s B:(s + 1) B]. A recipe without randomness makes each view a function of its image alone. With
    drop_last false the 1,347 images give a sixth, partial batch of 67, as the official STL-10 loader keeps
    its last partial batch (137 steps of 768 on 105,000 images)."""
    fixed = {"recipe": "digits", "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "jitter": [0.0] * 4}
    config = cfg(tmp_path, augment=fixed, epochs=1, batch_size=256, drop_last=drop_last)
    monkeypatch.setattr(train_module, "VIEW_VALUES", batches_per_draw * 256 * 12 * 12)  # 5 steps: 2 + 2 + 1, or 5
    seen, real = [], Method.loss
    monkeypatch.setattr(Method, "loss", lambda self, model, x, labels: seen.append(x) or real(self, model, x, labels))
    run_dir = train(config, progress=False)
    data = load_data(config)
    perm = torch.randperm(len(data.encoder_images), generator=torch.Generator().manual_seed(config.seed))
    assert [len(x[0]) for x in seen] == [256] * 5 + [67] * (not drop_last)
    assert runs.load_summary(run_dir)["steps"] == len(seen)
    for s, x in enumerate(seen):
        expected = augment(
            data.encoder_images[perm[s * 256 : (s + 1) * 256]], data.augment, data.mean, data.std, torch.Generator()
        )
        assert len(x) == 2 and all(torch.allclose(v, expected, atol=1e-6) for v in x), s


def test_group_batchnorm_is_dataparallel_on_that_many_parts(tmp_path):
    """Each part normalised with its own statistics (each module run apart on its part, as DataParallel's
    replicas are), the running statistics of the first part only, eval mode untouched."""
    import copy

    from hypersphere.models import SmallAlexNet, group_batchnorm

    torch.manual_seed(0)
    reference = SmallAlexNet(3, 16, 32).train()
    grouped = group_batchnorm(copy.deepcopy(reference), 4)
    x = torch.randn(16, 3, 32, 32)
    replicas = [copy.deepcopy(reference) for _ in range(4)]
    expected = torch.cat([r(part) for r, part in zip(replicas, x.chunk(4))])
    assert torch.allclose(grouped(x), expected, atol=1e-5)
    assert not torch.allclose(reference(x), expected, atol=1e-3)  # one batch's statistics differ
    for (name, a), b in zip(grouped.state_dict().items(), replicas[0].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    grouped.eval(), replicas[0].eval()
    assert torch.allclose(grouped(x), replicas[0](x), atol=1e-5)


def test_recipe_settings_of_the_official_code_are_hashed_and_checked(tmp_path):
    """drop_last, bn_groups and bf16 name other runs when set, older runs keep their names at the defaults,
    and bn_groups trains (the weights differ from one BatchNorm over the whole batch)."""
    base = cfg(tmp_path, epochs=1)
    names = {
        cfg(tmp_path, epochs=1, **kw).run_dir().name
        for kw in ({}, {"drop_last": False}, {"bn_groups": 2}, {"bf16": True})
    }
    assert len(names) == 4 and not {"drop_last", "bn_groups", "bf16"} & set(base.hashed())
    with pytest.raises(ValueError, match="bn_groups must be >= 1 and divide batch_size 128"):
        cfg(tmp_path, bn_groups=3)
    with pytest.raises(ValueError, match="MoCo runs .* use Shuffle-BN"):
        cfg(tmp_path, bn_groups=2, queue=256, objective="contrastive(tau=0.2)")
    one = runs.load_checkpoint(train(base, progress=False) / runs.CHECKPOINT)["encoder"]
    two = runs.load_checkpoint(train(cfg(tmp_path, epochs=1, bn_groups=2), progress=False) / runs.CHECKPOINT)["encoder"]
    assert one.keys() == two.keys() and not all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast applies on CUDA only")
def test_bf16_is_an_explicit_option_on_cuda(tmp_path):
    from hypersphere.models import DigitsNet

    torch.manual_seed(0)
    encoder, objective = DigitsNet(1, 16, 12).cuda(), Objective.parse("align + uniform")
    x = [torch.randn(64, 1, 12, 12, device="cuda") for _ in range(2)]
    fp32, _ = Method(cfg(tmp_path, dim=16), objective, None, encoder).loss(encoder, x, None)
    with torch.no_grad():
        reference, _ = objective(*encoder(torch.cat(x)).chunk(2))
    bf16, _ = Method(cfg(tmp_path, dim=16, bf16=True), objective, None, encoder).loss(encoder, x, None)
    assert fp32.item() == pytest.approx(reference.item(), rel=1e-5) and bf16.item() != fp32.item()


def test_augmentation_recipes_by_name_and_with_overrides(tmp_path):
    assert recipe("digits") == RECIPES["digits"]
    assert recipe({"recipe": "stl10", "scale": [0.2, 1.0]}).scale == (0.2, 1.0)
    assert load_data(cfg(tmp_path, augment={"recipe": "digits", "grayscale_p": 0.5})).augment.grayscale_p == 0.5
    assert load_data(cfg(tmp_path)).augment == RECIPES["digits"]
    larger = load_data(cfg(tmp_path, augment={"recipe": "digits", "crop_size": 24}))
    assert (larger.augment.crop_size, larger.eval_resize) == (24, 26)  # Resize(13) + CenterCrop(12), doubled
    with pytest.raises(ValueError, match="unknown augmentation recipe 'pil'"):
        cfg(tmp_path, augment="pil")
    with pytest.raises(ValueError, match="unknown augmentation fields"):
        cfg(tmp_path, augment={"recipe": "digits", "blur": 1})


def test_missing_parent_and_corrupt_records_fail_clearly(tmp_path):
    with pytest.raises(runs.RunError, match="not a finished run"):
        train(cfg(tmp_path, init=str(tmp_path / "nope")), progress=False)
    run_dir = train(cfg(tmp_path, epochs=1), progress=False)
    (run_dir / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(runs.RunError, match="corrupt.*delete"):
        runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    (run_dir / runs.TRAIN).write_text('{"truncated": ')
    assert runs.train_status(run_dir, TRAIN_VERSION) == "todo"
    with pytest.raises(runs.RunError, match="corrupt"):
        runs.load_summary(run_dir)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(dataset="mnist"), "unknown dataset 'mnist'"),
        (dict(objective="unifrom(t=2)"), "unifrom"),
        (dict(lr=-0.1), "lr must be"),
        (dict(epochs=-1), "epochs must be"),
        (dict(arch="resnet"), "unknown arch"),
        (dict(snapshot_epochs=(5,)), "snapshot_epochs"),
    ],
)
def test_bad_configs_are_refused_before_any_work(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(tmp_path, **kw)
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"probe_mode": "cached"})


def test_missing_dataset_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        train(cfg(tmp_path, dataset="stl10", data_dir=str(tmp_path / "data")), progress=False)


def test_divergence_is_recorded_as_failed(tmp_path):
    config = cfg(tmp_path, objective="contrastive(tau=0.5)", lr=1e12, weight_decay=0.0)
    with pytest.raises(Diverged, match="epoch"):
        train(config, progress=False)
    failed = json.loads((config.run_dir() / runs.FAILED).read_text())
    # an lr of 1e12 kills the encoder: its outputs become non-finite (a NaN loss) or zero (a finite loss that
    # hides it; all-zero features give the contrastive loss log(2K - 1)), and either is a divergence
    assert failed["epoch"] >= 1 and any(w in failed["reason"] for w in ("nan", "inf", "left the sphere"))
    assert runs.train_status(config.run_dir(), TRAIN_VERSION) == "failed"


def test_cli_train_and_evaluate(tmp_path, capsys):
    args = [
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--dim",
        "8",
        "--batch-size",
        "256",
        "--runs-dir",
        str(tmp_path),
        "--quiet",
        "--objective",
        "align(alpha=2) + uniform(t=2)",
    ]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.splitlines()[0]
    assert (
        main(["evaluate", run_dir, "--probe", "adam", "--probe-epochs", "2", "--cv-folds", "0", "--taps", "output"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {
        "run",
        "val_output_linear",
        "val_output_5nn",
        "align",
        "uniform",
        "rankme",
        "uniform_centred",
        "eigen_decay",
    }
    assert main(["train", "--dataset", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["evaluate", run_dir, "--probe", "svm"]) == 2
    assert "unknown probe" in capsys.readouterr().err


def _train_cmd(runs_dir, *extra):
    return [
        sys.executable,
        "-m",
        "hypersphere",
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "4",
        "--dim",
        "8",
        "--batch-size",
        "128",
        "--runs-dir",
        str(runs_dir),
        "--quiet",
        "--objective",
        "align(alpha=2) + uniform(t=2)",
        "--snapshot-epochs",
        "0",
        "2",
        "4",
        *extra,
    ]


def test_a_killed_run_resumes_to_the_same_weights_bit_for_bit(tmp_path):
    """SIGKILL mid-epoch 2 (train.py's kill hook, right after the state of step 3 is saved; it is saved after every
    step here, --checkpoint-minutes 0), then the same command: every RNG, the optimiser and schedule, the epoch's
    sample order and partial loss sums are restored, so on CPU with one thread the final weights, log and snapshots
    equal an uninterrupted run's exactly. The resumed run starts after the kill point and never reaches it again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path / "a"), env=env, check=True, capture_output=True)
    (run_a,) = (tmp_path / "a").iterdir()
    run_b = tmp_path / "b" / run_a.name
    killed = {**env, "HYPERSPHERE_KILL_AT": "2:3"}
    cmd = _train_cmd(tmp_path / "b", "--checkpoint-minutes", "0")
    assert subprocess.run(cmd, env=killed, capture_output=True).returncode == -signal.SIGKILL
    assert runs.train_status(run_b, TRAIN_VERSION) == "todo"
    state = runs.load_state(run_b, json.loads((run_a / runs.CONFIG).read_text()), TRAIN_VERSION)
    assert (state["epoch"], state["step"]) == (2, 3)
    subprocess.run(cmd, env=killed, check=True, capture_output=True)
    assert runs.load_summary(run_b)["resumed"] == [{"epoch": 2, "step": 3}]
    for name in (runs.CHECKPOINT, "snapshots/epoch-2.pt", "snapshots/epoch-4.pt"):
        a, b = runs.load_checkpoint(run_a / name)["encoder"], runs.load_checkpoint(run_b / name)["encoder"]
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def log(d):
        return [
            {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
            for row in csv.DictReader((d / runs.LOG).open())
        ]

    assert log(run_a) == log(run_b)
    assert not (run_b / runs.STATE).exists()


def test_a_run_locked_by_a_live_process_is_not_trained_twice(tmp_path):
    config = cfg(tmp_path, epochs=1)
    with runs.lock(config.run_dir()):
        assert runs.is_locked(config.run_dir())
        with pytest.raises(runs.RunLocked, match=f"being trained by pid {os.getpid()}"):
            train(config, progress=False)
    assert not runs.is_locked(config.run_dir())  # released with the descriptor
    train(config, progress=False)


def crash_then_resume(tmp_path, monkeypatch, **kw):
    """An uninterrupted run (runs dir a) and the same config crashed in its fourth step, then run again (b)."""
    whole = train(cfg(tmp_path / "a", **kw), progress=False)
    real, calls = Method.loss, []

    def crash_on_the_fourth_step(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(Method, "loss", crash_on_the_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b", **kw), progress=False)
    monkeypatch.setattr(Method, "loss", real)
    return whole, train(cfg(tmp_path / "b", **kw), progress=False)


def test_a_moco_run_trains_and_resumes_its_queue_and_key_encoder_exactly(tmp_path, monkeypatch):
    """MoCo (queue > 0): a crash mid-epoch, then the same command, ends with the weights, key encoder and
    queue of an uninterrupted run (they are part of the saved state)."""
    moco = dict(
        objective="contrastive(tau=0.2) + align(alpha=2) + uniform(t=2)",
        arch="smallresnet",
        dim=8,
        batch_size=256,
        epochs=1,
        queue=512,
        ema=0.9,
        checkpoint_minutes=0.0,
    )
    whole, resumed = crash_then_resume(tmp_path, monkeypatch, **moco)
    assert runs.load_summary(resumed)["resumed"] == [{"epoch": 1, "step": 3}]  # 5 steps an epoch
    a, b = runs.load_checkpoint(whole / runs.CHECKPOINT), runs.load_checkpoint(resumed / runs.CHECKPOINT)
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert all(torch.equal(a["moco"][k], b["moco"][k]) for k in a["moco"])  # key encoder and queue
    with pytest.raises(ValueError, match="takes contrastive, align and uniform terms only"):
        cfg(tmp_path, objective="xent()", queue=512)
    with pytest.raises(ValueError, match="use queue >= batch_size"):
        cfg(tmp_path, **{**moco, "queue": 64})


@pytest.mark.parametrize(
    "objective, modules",
    [
        ("ntxent(tau=0.5)", ()),
        ("barlow", ()),
        ("vicreg", ()),
        ("simsiam", ("predictor",)),
        ("byol", ("predictor", "target")),
        ("dino", ("dino", "target")),
    ],
)
def test_objectives_beyond_the_paper_train_and_resume_exactly(tmp_path, monkeypatch, objective, modules):
    """SimCLR's NT-Xent (with the MLP projection head), Barlow Twins, VICReg, SimSiam and BYOL (with their papers'
    projectors), DINO: a crash mid-epoch, then the same command, ends with the weights (predictor, EMA target, DINO's
    prototypes and centre included) of an uninterrupted run."""
    heads = {"ntxent": "-mlp", "simsiam": "-simsiam", "byol": "-byol", "dino": "-mlp"}
    kw = dict(
        objective=objective,
        arch="digitsnet" + heads.get(objective.split("(")[0], ""),
        epochs=1,
        ema=0.9,
        checkpoint_minutes=0.0,
        lr=0.005,
    )  # the quick recipe's lr: at 0.06 VICReg's loss (x25) diverges
    whole, resumed = crash_then_resume(tmp_path, monkeypatch, **kw)
    a, b = runs.load_checkpoint(whole / runs.CHECKPOINT), runs.load_checkpoint(resumed / runs.CHECKPOINT)
    assert set(modules) == {k for k in ("predictor", "target", "dino") if k in a}
    for module in ("encoder", *modules):
        assert all(torch.equal(a[module][k], b[module][k]) for k in a[module]), module
    log = list(csv.DictReader((whole / runs.LOG).open()))
    assert ("spread" in log[0]) == (not objective.startswith("ntxent")) and float(log[0]["loss"]) == float(
        log[0]["loss"]
    )


def test_the_predictor_reads_the_projection_before_normalisation_when_asked(tmp_path):
    """predictor_on "projection" (SimSiam's and BYOL's code): the predictor reads the projector's output before the
    l2-normalisation; by default ("output") the unit-norm output. Hashed only when set; refused without a predictor."""
    norms = {}
    for where in ("output", "projection"):
        config = cfg(tmp_path, objective="simsiam(width=0.25)", arch="digitsnet-simsiam", predictor_on=where)
        torch.manual_seed(0)
        data = load_data(config)
        encoder = train_module.make_encoder(config, data)
        method = Method(config, Objective.parse(config.objective), data, encoder)
        seen = []
        method.owned["simsiam"][0].register_forward_pre_hook(lambda m, args: seen.append(args[0].norm(dim=1)))
        x = [IMAGE.views(data, data.train_images[:32], torch.Generator().manual_seed(i)) for i in range(2)]
        loss, _ = method.loss(encoder.train(), x, None)
        assert torch.isfinite(loss) and len(seen) == 2
        norms[where] = torch.cat(seen)
    assert torch.allclose(norms["output"], torch.ones(64), atol=1e-5)
    assert not torch.allclose(norms["projection"], torch.ones(64), atol=0.1)  # BatchNorm'd: about sqrt(16) each
    assert "predictor_on" not in cfg(tmp_path, objective="simsiam").hashed()
    assert cfg(tmp_path, objective="simsiam", predictor_on="projection").hashed()["predictor_on"] == "projection"
    with pytest.raises(ValueError, match="predictor_on applies to objectives with a predictor"):
        cfg(tmp_path, objective="align + uniform", predictor_on="projection")
    with pytest.raises(ValueError, match="predictor_on must be output or projection"):
        cfg(tmp_path, objective="simsiam", predictor_on="raw")


def test_a_collapse_is_recorded_as_a_failure_with_its_reason(tmp_path, monkeypatch):
    """_spread measures how far the features spread: ~1 for points spread over the sphere, 0 for one point; an
    epoch whose mean spread falls under COLLAPSED fails the run like a divergence, failed.json saying why."""
    spread_out = torch.nn.functional.normalize(torch.randn(4096, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    assert methods._spread(spread_out).item() == pytest.approx(1.0, abs=0.02)
    assert methods._spread(spread_out[:1].expand(64, -1)).item() == 0.0
    monkeypatch.setattr(methods, "_spread", lambda z: torch.tensor(0.01))  # as a collapsed encoder's
    with pytest.raises(Diverged, match="collapsed in epoch 1"):
        train(cfg(tmp_path, objective="simsiam", epochs=1), progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    assert runs.train_status(run, TRAIN_VERSION) == "failed"
    assert "spread" in json.loads((run / runs.FAILED).read_text())["reason"]
    with pytest.raises(ValueError, match="takes contrastive, align and uniform terms only"):
        cfg(tmp_path, objective="byol", queue=512)
    with pytest.raises(ValueError, match="'barlow' has no Quick-Thought form"):
        TrainConfig(dataset="standin", arch="qt-small", objective="barlow", optimizer="adam", lr=1e-3)


def test_a_last_partial_batch_of_one_is_refused_in_one_line(tmp_path):
    """drop_last false keeps the last partial batch; one example (1,347 digits at batch 673) has no pair for the
    in-batch losses nor a BatchNorm statistic: refused before the first step, naming the fix."""
    with pytest.raises(ValueError, match="last partial batch of 1 is too small.*set drop_last true"):
        train(cfg(tmp_path, epochs=1, batch_size=673, drop_last=False))


def test_a_new_objective_is_one_registered_term_and_trains(tmp_path):
    """An objective added from outside the package: one losses.TermKind registered, no other edit. Its loss is the
    formula it was given, it trains and is logged, it sorts after the existing terms (no run is renamed), and the
    forms it lacks (MoCo's queue, sentence windows) are refused before any data loads, naming it."""
    toy = losses.TermKind("w", 1.0, batch=lambda b, w: w * (b.zx - b.zy).pow(2).sum(1).mean())
    losses.register("toy", toy)
    try:
        with pytest.raises(ValueError, match="must be a new identifier"):
            losses.register("toy", toy)
        objective = Objective.parse("toy(w=0.5) + uniform(t=2)")
        assert str(objective) == "uniform(t=2) + toy(w=0.5)" and Objective.parse(str(objective)) == objective
        x, y = (F.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(s)), dim=1) for s in (0, 1))
        total, values = objective(x, y)
        assert values["toy"].item() == pytest.approx(0.5 * ((x - y) ** 2).sum(1).mean().item())
        assert total.item() == pytest.approx(values["toy"].item() + values["uniform"].item())
        run = train(cfg(tmp_path, objective="toy(w=0.5) + uniform(t=2)"), progress=False)
        assert runs.train_status(run, TRAIN_VERSION) == "done"
        log = list(csv.DictReader((run / runs.LOG).open()))
        assert len(log) == FAST["epochs"] and all(math.isfinite(float(row["toy"])) for row in log)
        with pytest.raises(ValueError, match="toy has no queue form"):
            cfg(tmp_path, objective="toy + uniform(t=2)", queue=512)
        with pytest.raises(ValueError, match="'toy' has no Quick-Thought form"):
            TrainConfig(dataset="standin", arch="qt-small", objective="toy", optimizer="adam", lr=1e-3)
    finally:
        del losses.TERMS["toy"]
