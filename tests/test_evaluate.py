"""Evaluation configs and records: pair metrics, the classification evaluation, and evaluate_run's caching
(a new evaluation config re-evaluates a run without retraining it)."""

import math

import pytest
import torch
import torch.nn as nn

from hypersphere import runs
from hypersphere.augment import AugmentConfig
from hypersphere.domains import image
from hypersphere.domains.image import ImageData, pair_metrics
from hypersphere.evaluate import EvalConfig, evaluate_run
from hypersphere.models import DigitsNet
from hypersphere.probes import sanity_check
from hypersphere.train import TrainConfig, train
from test_probes import MEAN, STD, snapshot, tiny_data


# ----------------------------------------------------------------------------- validation-pair metrics


class AngleEncoder(nn.Module):
    """Maps an image to the unit circle by its mean intensity: on constant images (which crops, flips and
    resizing leave unchanged) it is perfectly aligned."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        phi = self.scale * x.mean(dim=(1, 2, 3))
        return torch.stack([phi.cos(), phi.sin()], dim=1)


def test_pair_metrics_on_perfectly_aligned_encoder():
    values = torch.arange(0, 250, 9, dtype=torch.float32)  # 28 constant images
    images = values[:, None, None, None].expand(-1, 1, 12, 12).to(torch.uint8).contiguous()
    aug = AugmentConfig(crop_size=8, scale=(0.08, 1.0), flip=True, jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0)
    labels = torch.zeros(28, dtype=torch.long)
    data = ImageData(
        name="const",
        encoder_images=images,
        train_images=images,
        train_labels=labels,
        val_images=images,
        val_labels=labels,
        mean=MEAN,
        std=STD,
        num_classes=1,
        augment=aug,
        eval_resize=12,
    )
    enc = AngleEncoder()
    tau = 0.5
    out = pair_metrics(enc, data, tau=tau, batch_size=64, chunk_size=10)

    phi = 1.3 * ((values.double() / 255 - MEAN[0]) / STD[0])
    f = torch.stack([phi.cos(), phi.sin()], dim=1)
    n = len(f)
    pair_potentials = [math.exp(-2 * (f[i] - f[j]).pow(2).sum().item()) for i in range(n) for j in range(i + 1, n)]
    uniform = math.log(sum(pair_potentials) / len(pair_potentials))
    sims = f @ f.T / tau  # aligned: x-view == y-view == f
    contrastive = sum(-sims[i, i].item() + torch.logsumexp(sims[i], 0).item() for i in range(n)) / n
    assert out["align"] == pytest.approx(0.0, abs=1e-8)
    assert out["uniform"] == pytest.approx(uniform, abs=1e-4)
    assert out["contrastive"] == pytest.approx(contrastive, abs=1e-4)
    assert set(pair_metrics(enc, data)) == {"align", "uniform"}


# ----------------------------------------------------------------------------- the classification evaluation


@pytest.mark.parametrize("probe", ["lbfgs", "adam", "adam-full", "sgd-full"])
def test_classify_returns_flat_dict_and_leaves_the_encoder_frozen(probe):
    data = tiny_data(n_train=30, n_val=15)
    torch.manual_seed(0)
    model = DigitsNet(dim=4, input_size=12)
    before = snapshot(model)
    cfg = EvalConfig(probe=probe, probe_epochs=2, cv_folds=3, l2_folds=2)
    out = image.evaluate(model, data, cfg, torch.device("cpu"), tau=0.2, batch_size=8)
    keys = {
        f"{split}_{tap}_{kind}" for split in ("val", "cv") for tap in ("fc7", "output") for kind in ("linear", "5nn")
    }
    assert keys | {"align", "uniform", "contrastive"} <= set(out)
    if probe == "lbfgs":  # the chosen penalty and the convergence are recorded
        assert out["val_output_linear_l2"] in cfg.l2_grid and out["val_output_linear_grad"] < 1e-3
    assert all(0.0 <= out[k] <= 100.0 for k in keys)
    assert 0.0 <= out["align"] <= 4.0 and out["uniform"] <= 0.0
    sanity_check(before, model)
    no_cv = image.evaluate(
        model, data, EvalConfig(probe="adam", probe_epochs=1, cv_folds=0), torch.device("cpu"), taps=("output",)
    )
    assert set(no_cv) == {"val_output_linear", "val_output_5nn", "align", "uniform"}


@pytest.mark.parametrize(
    "probe,optimizer,lr",
    [("adam", "adam", 1e-3), ("adam-full", "adam", 1e-3), ("sgd-full", "sgd", 10.0), ("sgd-lincls", "sgd", 30.0)],
)
def test_cross_validation_fits_the_reported_probes_classifier(monkeypatch, probe, optimizer, lr):
    """The paper's CV (Table 3: 3 folds) is of the classifier it reports: the same optimiser and schedule, here on
    cached features."""
    import hypersphere.domains.image as image

    seen = []
    monkeypatch.setattr(
        image, "linear_probe_cached", lambda train_f, train_y, val_f, val_y, cfg: seen.append(cfg) or 50.0
    )
    image.evaluate(
        DigitsNet(dim=4, input_size=12),
        tiny_data(n_train=30, n_val=15),
        EvalConfig(probe=probe, probe_epochs=3, cv_folds=3, knn_k=1),
        torch.device("cpu"),
        taps=("output",),
    )
    cv = seen[-3:]  # the last three fits are the folds'
    assert {(c.optimizer, c.lr, c.epochs) for c in cv} == {(optimizer, lr, 3)}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"probe": "svm"}, "unknown probe"),
        ({"kind": "regression"}, "unknown evaluation kind"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"l2_grid": (0.0,)}, "l2_grid"),
        ({"knn_k": 0}, "knn_k"),
    ],
)
def test_bad_evaluation_configs_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kw)
    with pytest.raises(ValueError, match="unknown evaluation config keys"):
        EvalConfig.from_dict({"probe_mode": "full"})


def test_evaluation_records_are_cached_per_config_and_survive_nothing_else(tmp_path):
    cfg = TrainConfig(
        dataset="digits",
        objective="align(alpha=2) + uniform(t=2)",
        epochs=1,
        batch_size=256,
        dim=8,
        runs_dir=str(tmp_path),
        snapshot_epochs=(0, 1),
    )
    run_dir = train(cfg, progress=False)
    fast = EvalConfig(taps=("output",), cv_folds=0, l2_grid=(1e-3,), l2_folds=2)
    first = evaluate_run(run_dir, fast)
    assert runs.eval_path(run_dir, "classify", fast.hashed()).exists()
    checkpoint = (run_dir / runs.CHECKPOINT).stat().st_mtime_ns
    again = evaluate_run(run_dir, fast)  # read back, not recomputed
    assert again == first
    other = evaluate_run(run_dir, EvalConfig(probe="adam", probe_epochs=2, taps=("output",), cv_folds=0))
    assert other["results"]["align"] == first["results"]["align"]  # same weights, same validation pairs
    assert (run_dir / runs.CHECKPOINT).stat().st_mtime_ns == checkpoint  # nothing was retrained
    assert len(list((run_dir / runs.EVALS).glob("classify-*.json"))) == 2
    with_snapshots = evaluate_run(
        run_dir, EvalConfig(taps=("output",), cv_folds=0, l2_grid=(1e-3,), l2_folds=2, snapshots=True)
    )
    assert [p["epoch"] for p in with_snapshots["trajectory"]] == [0, 1]
    assert with_snapshots["trajectory"][-1]["val_output_linear"] == pytest.approx(first["results"]["val_output_linear"])


def test_records_hold_the_label_free_statistics_and_older_records_get_them_added(tmp_path, monkeypatch):
    """A new record holds rankme, uniform_centred and eigen_decay of the first validation view; a record written
    before they existed gets exactly those values added, its other results untouched and the probes not rerun."""
    from hypersphere import evaluate as evaluate_module
    from hypersphere.domains.image import view_pairs
    from hypersphere.metrics import LABEL_FREE, label_free
    from hypersphere.train import load_encoder

    cfg = TrainConfig(
        dataset="digits",
        objective="align(alpha=2) + uniform(t=2)",
        epochs=1,
        batch_size=256,
        dim=8,
        runs_dir=str(tmp_path),
    )
    run_dir = train(cfg, progress=False)
    fast = EvalConfig(taps=("output",), cv_folds=0, l2_grid=(1e-3,), l2_folds=2)
    record = evaluate_run(run_dir, fast)
    encoder, _, data = load_encoder(run_dir)
    fx, _ = view_pairs(encoder, data, torch.Generator().manual_seed(fast.seed), "cpu")
    assert {k: record["results"][k] for k in LABEL_FREE} == label_free(fx)
    path = runs.eval_path(run_dir, "classify", fast.hashed())
    older = {**record, "results": {k: v for k, v in record["results"].items() if k not in LABEL_FREE}}
    runs.write_json(path, older)
    monkeypatch.setattr(evaluate_module, "_evaluate", lambda *a, **k: pytest.fail("the probes were rerun"))
    assert evaluate_run(run_dir, fast)["results"] == record["results"]
    assert runs.read_json(path)["results"] == record["results"]
