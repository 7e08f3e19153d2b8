import math
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn as nn
from sklearn.neighbors import KNeighborsClassifier

from hypersphere import augment as augment_module
from hypersphere.augment import AugmentConfig, eval_transform
from hypersphere.data import ImageData
from hypersphere.evaluate import (ProbeConfig, cross_validate, evaluate, extract_features, knn_accuracy,
                                  linear_probe_cached, linear_probe_full, pair_metrics, sanity_check,
                                  stratified_folds)
from hypersphere.models import DigitsNet

MEAN, STD = (0.5,), (0.25,)


def tiny_data(n_train=40, n_val=20, size=12, classes=3, seed=0, augment=None) -> ImageData:
    """Synthetic 1-channel uint8 images whose brightness pattern depends on the class."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % classes
        base = torch.linspace(0, 1, size)[None, :] * (y[:, None] + 1) / classes   # class-dependent gradient
        img = base[:, None, None, :] * 200 + torch.rand(n, 1, size, size, generator=g) * 50
        return img.clamp(0, 255).to(torch.uint8), y

    (tr_x, tr_y), (va_x, va_y) = split(n_train), split(n_val)
    aug = augment or AugmentConfig(crop_size=size, scale=(0.5, 1.0), flip=True, jitter=(0.4, 0.4, 0, 0),
                                   grayscale_p=0.0)
    return ImageData(name="tiny", encoder_images=tr_x, train_images=tr_x, train_labels=tr_y, val_images=va_x,
                     val_labels=va_y, mean=MEAN, std=STD, num_classes=classes, augment=aug, eval_resize=size)


# ----------------------------------------------------------------------------- k-NN

def knn_reference(train_f, train_y, val_f, k):
    """Brute force with python loops: cosine similarity, majority vote, ties -> the tied class seen first
    when walking the neighbours from the nearest."""
    preds = []
    for v in val_f:
        sims = [(torch.dot(v, t) / (v.norm() * t.norm())).item() for t in train_f]
        ranked = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = Counter(int(train_y[i]) for i in ranked)
        best = max(votes.values())
        preds.append(next(int(train_y[i]) for i in ranked if votes[int(train_y[i])] == best))
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_matches_brute_force(k):
    g = torch.Generator().manual_seed(k)
    train_f, val_f = torch.randn(80, 6, generator=g), torch.randn(30, 6, generator=g)
    train_y, val_y = torch.randint(0, 4, (80,), generator=g), torch.randint(0, 4, (30,), generator=g)
    expected = 100.0 * (knn_reference(train_f, train_y, val_f, k) == val_y).float().mean().item()
    assert knn_accuracy(train_f, train_y, val_f, val_y, k=k, chunk_size=7) == pytest.approx(expected)
    # scale invariance: cosine similarity ignores feature norms
    assert knn_accuracy(train_f * 3.7, train_y, val_f * 0.1, val_y, k=k) == pytest.approx(expected)


def test_knn_matches_sklearn_without_ties():
    g = torch.Generator().manual_seed(1)
    train_f, val_f = torch.randn(100, 8, generator=g), torch.randn(50, 8, generator=g)
    train_y, val_y = torch.randint(0, 2, (100,), generator=g), torch.randint(0, 2, (50,), generator=g)
    ref = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(train_f.numpy(), train_y.numpy())
    expected = 100.0 * (torch.from_numpy(ref.predict(val_f.numpy())) == val_y).float().mean().item()
    assert knn_accuracy(train_f, train_y, val_f, val_y, k=5) == pytest.approx(expected)


def test_knn_tie_rule():
    def at(deg):
        return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))])

    train_f = torch.stack([at(a) for a in (1, 2, 3, 4, 5, 90)])
    query = at(0)[None]
    # neighbours nearest first: classes 2, 0, 0, 1, 1 -> 0 and 1 tie with 2 votes; 0's best neighbour is nearer
    assert knn_accuracy(train_f, torch.tensor([2, 0, 0, 1, 1, 3]), query, torch.tensor([0]), k=5) == 100.0
    # nearest neighbour's class is itself tied: classes 1, 0, 0, 1, 2 -> 1
    assert knn_accuracy(train_f, torch.tensor([1, 0, 0, 1, 2, 3]), query, torch.tensor([1]), k=5) == 100.0
    # a real majority beats the nearest neighbour: classes 2, 0, 0, 0, 1 -> 0
    assert knn_accuracy(train_f, torch.tensor([2, 0, 0, 0, 1, 3]), query, torch.tensor([0]), k=5) == 100.0
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(train_f, torch.zeros(6, dtype=torch.long), query, torch.tensor([0]), k=7)


# ----------------------------------------------------------------------------- linear probe on cached features

def blobs(n, classes, dim, noise, g):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(n) % classes
    return centers[y] + noise * torch.randn(n, dim, generator=g), y


def test_probe_config_schedule_and_validation():
    assert ProbeConfig().lr_milestones() == [60, 80]
    assert ProbeConfig(epochs=10).lr_milestones() == [6, 8]
    assert ProbeConfig(epochs=200).lr_milestones() == [120, 160]
    with pytest.raises(ValueError, match="mode"):
        ProbeConfig(mode="fast")


def test_cached_probe_separable_and_random_labels():
    g = torch.Generator().manual_seed(0)
    cfg = ProbeConfig(epochs=15, mode="cached")
    tr_f, tr_y = blobs(400, 4, 16, 0.5, g)
    va_f, va_y = blobs(400, 4, 16, 0.5, g)
    assert linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg) >= 99.0
    # random labels: nothing to learn, validation accuracy near chance (1/4); std of the estimate ~1.5 points
    rand_y = lambda n: torch.randint(0, 4, (n,), generator=g)  # noqa: E731
    acc = linear_probe_cached(torch.randn(400, 16, generator=g), rand_y(400), torch.randn(800, 16, generator=g),
                              rand_y(800), cfg)
    assert abs(acc - 25.0) < 7.0


def test_cached_probe_is_deterministic():
    g = torch.Generator().manual_seed(0)
    tr_f, tr_y = blobs(200, 3, 8, 3.0, g)
    va_f, va_y = blobs(200, 3, 8, 3.0, g)
    cfg = ProbeConfig(epochs=3, mode="cached", seed=5)
    assert linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg) == linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg)


# ----------------------------------------------------------------------------- cross-validation

def test_stratified_folds_disjoint_and_balanced():
    labels = torch.tensor([0] * 23 + [1] * 17 + [2] * 10)[torch.randperm(50, generator=torch.Generator().manual_seed(0))]
    folds = stratified_folds(labels, folds=5, seed=3)
    everything = torch.cat(folds).sort().values
    assert torch.equal(everything, torch.arange(50))  # disjoint and covering
    assert sorted(len(f) for f in folds) == [10] * 5
    for c, count in [(0, 23), (1, 17), (2, 10)]:
        per_fold = [(labels[f] == c).sum().item() for f in folds]
        assert sum(per_fold) == count and max(per_fold) - min(per_fold) <= 1
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=3)))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=4)))


def test_cross_validate_passes_each_fold_as_validation():
    labels = torch.arange(30) % 3
    features = torch.arange(30, dtype=torch.float32)[:, None]  # feature = index, to recover the split
    seen = []

    def probe(tr_f, tr_y, va_f, va_y):
        tr, va = tr_f[:, 0].long(), va_f[:, 0].long()
        assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 30
        assert torch.equal(tr_y, labels[tr]) and torch.equal(va_y, labels[va])
        seen.append(va)
        return float(len(seen))

    assert cross_validate(features, labels, probe, folds=5, seed=0) == pytest.approx(3.0)  # mean of 1..5
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(30))


def test_cross_validate_with_real_probes():
    g = torch.Generator().manual_seed(0)
    f, y = blobs(150, 3, 8, 0.5, g)
    assert cross_validate(f, y, partial(knn_accuracy, k=5)) == 100.0
    assert cross_validate(f, y, partial(linear_probe_cached, cfg=ProbeConfig(epochs=10, mode="cached"))) >= 99.0


# ----------------------------------------------------------------------------- frozen encoder checks

def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sanity_check_catches_changes():
    model = DigitsNet(dim=4, input_size=12)
    before = snapshot(model)
    sanity_check(before, model)  # unchanged: passes
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-3
    with pytest.raises(RuntimeError, match="head.weight"):
        sanity_check(before, model)

    model = DigitsNet(dim=4, input_size=12)
    before = snapshot(model)
    with torch.no_grad():
        model.conv[1][1].running_mean[3] += 0.5
    with pytest.raises(RuntimeError, match="running_mean"):
        sanity_check(before, model)

    model = DigitsNet(dim=4, input_size=12)
    before = snapshot(model)
    with torch.no_grad():
        model(torch.randn(4, 1, 12, 12))  # train-mode forward updates BN running stats (the forgot-eval() bug)
    with pytest.raises(RuntimeError, match="changed"):
        sanity_check(before, model)


def test_extract_features_matches_manual_eval_transform():
    data = tiny_data()
    torch.manual_seed(0)
    model = DigitsNet(dim=4, input_size=12)
    feats = extract_features(model, data.val_images, data, ("fc7", "output"), batch_size=7)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        x = eval_transform(data.val_images, 12, 12, MEAN, STD)
        ref = model.forward_taps(x, ("fc7", "output"))
    for tap in ("fc7", "output"):
        assert feats[tap].dtype == torch.float32 and feats[tap].shape == ref[tap].shape
        assert torch.allclose(feats[tap], ref[tap], atol=1e-5)


def test_linear_probe_full_frozen_and_deterministic(monkeypatch):
    data = tiny_data()
    torch.manual_seed(0)
    model = DigitsNet(dim=4, input_size=12)  # left in train mode on purpose: the probe must switch to eval
    before = snapshot(model)
    cfg = ProbeConfig(epochs=2, batch_size=16, seed=1)
    crop_cfgs = []

    def recording_augment(images, aug_cfg, *args):
        crop_cfgs.append(aug_cfg)
        return augment_module.augment(images, aug_cfg, *args)

    monkeypatch.setattr("hypersphere.evaluate.augment", recording_augment)
    acc1 = linear_probe_full(model, "output", data, cfg)
    acc2 = linear_probe_full(model, "output", data, cfg)
    assert acc1 == acc2 and 0.0 <= acc1 <= 100.0
    sanity_check(before, model)
    assert model.training
    # training crops: 2 runs x 2 epochs x 3 batches, the dataset's crops (scale, ratio, flip), no colour changes
    assert len(crop_cfgs) == 12
    for c in crop_cfgs:
        assert (c.crop_size, c.scale, c.ratio, c.flip) == (12, data.augment.scale, data.augment.ratio, True)
        assert c.jitter == (0.0, 0.0, 0.0, 0.0) and c.grayscale_p == 0.0
    monkeypatch.undo()

    model.eval = lambda: model  # simulate the bug: a probe that never switches BN to eval
    with pytest.raises(RuntimeError, match="sanity check"):
        linear_probe_full(model, "fc7", data, cfg)


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
    data = ImageData(name="const", encoder_images=images, train_images=images, train_labels=labels,
                     val_images=images, val_labels=labels, mean=MEAN, std=STD, num_classes=1, augment=aug,
                     eval_resize=12)
    enc = AngleEncoder()
    tau = 0.5
    out = pair_metrics(enc, data, torch.Generator().manual_seed(0), tau=tau, batch_size=64, chunk_size=10)

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
    assert set(pair_metrics(enc, data, torch.Generator().manual_seed(0))) == {"align", "uniform"}


# ----------------------------------------------------------------------------- everything together

@pytest.mark.parametrize("mode", ["cached", "full"])
def test_evaluate_returns_flat_dict(mode):
    data = tiny_data(n_train=30, n_val=15)
    torch.manual_seed(0)
    model = DigitsNet(dim=4, input_size=12)
    before = snapshot(model)
    out = evaluate(model, data, probe=ProbeConfig(epochs=2, mode=mode), cv_folds=3, tau=0.2, batch_size=8)
    keys = {f"{split}_{tap}_{kind}" for split in ("val", "cv") for tap in ("fc7", "output") for kind in ("linear", "5nn")}
    assert set(out) == keys | {"align", "uniform", "contrastive", "probe_mode"}
    assert out["probe_mode"] == mode
    assert all(isinstance(v, float) for k, v in out.items() if k != "probe_mode")
    assert all(0.0 <= out[k] <= 100.0 for k in keys)
    assert 0.0 <= out["align"] <= 4.0 and out["uniform"] <= 0.0
    sanity_check(before, model)
    no_cv = evaluate(model, data, taps=("output",), probe=ProbeConfig(epochs=1, mode="cached"), cv_folds=0)
    assert set(no_cv) == {"val_output_linear", "val_output_5nn", "align", "uniform", "probe_mode"}
