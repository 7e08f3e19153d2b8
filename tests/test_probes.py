import math
from collections import Counter
from dataclasses import replace
from functools import partial

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from hypersphere import augment as augment_module
from hypersphere.augment import AugmentConfig, eval_transform
from hypersphere.domains.image import ImageData
from hypersphere.probes import (
    LINCLS_PROBE,
    ProbeConfig,
    choose_l2,
    cross_validate,
    extract_features,
    fit_logistic,
    knn_accuracy,
    lbfgs_probe,
    linear_probe_cached,
    linear_probe_full,
    sanity_check,
    stratified_folds,
)
from hypersphere.models import DigitsNet

MEAN, STD = (0.5,), (0.25,)


def tiny_data(n_train=40, n_val=20, size=12, classes=3, seed=0, augment=None) -> ImageData:
    """Synthetic 1-channel uint8 images whose brightness pattern depends on the class."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % classes
        base = torch.linspace(0, 1, size)[None, :] * (y[:, None] + 1) / classes  # class-dependent gradient
        img = base[:, None, None, :] * 200 + torch.rand(n, 1, size, size, generator=g) * 50
        return img.clamp(0, 255).to(torch.uint8), y

    (tr_x, tr_y), (va_x, va_y) = split(n_train), split(n_val)
    aug = augment or AugmentConfig(
        crop_size=size, scale=(0.5, 1.0), flip=True, jitter=(0.4, 0.4, 0, 0), grayscale_p=0.0
    )
    return ImageData(
        name="tiny",
        encoder_images=tr_x,
        train_images=tr_x,
        train_labels=tr_y,
        val_images=va_x,
        val_labels=va_y,
        mean=MEAN,
        std=STD,
        num_classes=classes,
        augment=aug,
        eval_resize=size,
    )


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
    with pytest.raises(ValueError, match="epochs"):
        ProbeConfig(epochs=0)


def test_cached_probe_separable_and_random_labels():
    g = torch.Generator().manual_seed(0)
    cfg = ProbeConfig(epochs=15)
    tr_f, tr_y = blobs(400, 4, 16, 0.5, g)
    va_f, va_y = blobs(400, 4, 16, 0.5, g)
    assert linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg) >= 99.0
    # random labels: nothing to learn, validation accuracy near chance (1/4); std of the estimate ~1.5 points
    rand_y = lambda n: torch.randint(0, 4, (n,), generator=g)  # noqa: E731
    acc = linear_probe_cached(
        torch.randn(400, 16, generator=g), rand_y(400), torch.randn(800, 16, generator=g), rand_y(800), cfg
    )
    assert abs(acc - 25.0) < 7.0


def test_cached_probe_is_deterministic():
    g = torch.Generator().manual_seed(0)
    tr_f, tr_y = blobs(200, 3, 8, 3.0, g)
    va_f, va_y = blobs(200, 3, 8, 3.0, g)
    cfg = ProbeConfig(epochs=3, seed=5)
    assert linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg) == linear_probe_cached(tr_f, tr_y, va_f, va_y, cfg)


# ----------------------------------------------------------------------------- cross-validation


def test_stratified_folds_disjoint_and_balanced():
    labels = torch.tensor([0] * 23 + [1] * 17 + [2] * 10)[
        torch.randperm(50, generator=torch.Generator().manual_seed(0))
    ]
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
    assert cross_validate(f, y, partial(linear_probe_cached, cfg=ProbeConfig(epochs=10))) >= 99.0


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
    data = tiny_data(augment=AugmentConfig(crop_size=12, scale=(0.5, 1.0), jitter=(0.4, 0.4, 0, 0), blur_p=0.5))
    torch.manual_seed(0)
    model = DigitsNet(dim=4, input_size=12)  # left in train mode on purpose: the probe must switch to eval
    before = snapshot(model)
    cfg = ProbeConfig(epochs=2, batch_size=16, seed=1)
    crop_cfgs = []

    def recording_augment(images, aug_cfg, *args):
        crop_cfgs.append(aug_cfg)
        return augment_module.augment(images, aug_cfg, *args)

    monkeypatch.setattr("hypersphere.probes.augment", recording_augment)
    (acc1, top5), (acc2, _) = (
        linear_probe_full(model, "output", data, cfg),
        linear_probe_full(model, "output", data, cfg),
    )
    assert math.isnan(top5)  # three classes: no top-5
    assert acc1 == acc2 and 0.0 <= acc1 <= 100.0
    sanity_check(before, model)
    assert model.training
    # training crops: 2 runs x 2 epochs x 3 batches, the dataset's crops (scale, ratio, flip), no colour changes
    assert len(crop_cfgs) == 12
    for c in crop_cfgs:
        assert (c.crop_size, c.scale, c.ratio, c.flip) == (12, data.augment.scale, data.augment.ratio, True)
        assert c.jitter == (0.0, 0.0, 0.0, 0.0) and c.grayscale_p == 0.0 and c.blur_p == 0.0
    crop_cfgs.clear()  # MoCo's main_lincls.py: RandomResizedCrop at its default scale, where MoCo trains at 0.2-1
    linear_probe_full(model, "output", data, replace(cfg, epochs=1, crop_scale=(0.08, 1.0)))
    assert {c.scale for c in crop_cfgs} == {(0.08, 1.0)} and {c.blur_p for c in crop_cfgs} == {0.0}
    assert (
        LINCLS_PROBE.optimizer,
        LINCLS_PROBE.lr,
        LINCLS_PROBE.batch_size,
        LINCLS_PROBE.epochs,
        LINCLS_PROBE.lr_milestones(),
        LINCLS_PROBE.gamma,
        LINCLS_PROBE.crop_scale,
    ) == ("sgd", 30.0, 256, 100, [60, 80], 0.1, (0.08, 1.0))
    monkeypatch.undo()

    model.eval = lambda: model  # simulate the bug: a probe that never switches BN to eval
    with pytest.raises(RuntimeError, match="sanity check"):
        linear_probe_full(model, "fc7", data, cfg)


# ----------------------------------------------------------------------------- converged logistic regression


def test_lbfgs_probe_matches_scikit_learn():
    """The same problem as LogisticRegression(C = 1 / (l2 n)) on standardised features: our objective at our
    solution is within 1e-3 of the objective at scikit-learn's (converged to the same minimum), and validation
    accuracy is within 1 point,
    on badly scaled features with overlapping classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.1, 10, 24)
    (tr_f, tr_y), (va_f, va_y) = blobs(600, 5, 24, 6.0, g), blobs(600, 5, 24, 6.0, g)
    tr_f, va_f = tr_f * scale, va_f * scale
    scaler = StandardScaler().fit(tr_f.numpy())
    s_tr, s_va = (torch.from_numpy(scaler.transform(f.numpy())).float() for f in (tr_f, va_f))
    for l2 in (1e-3, 1e-1):
        clf, info = fit_logistic(tr_f, tr_y, 5, l2)
        assert info["grad_max"] < 1e-3
        ref = LogisticRegression(C=1 / (l2 * len(tr_y)), tol=1e-10, max_iter=10_000).fit(s_tr.numpy(), tr_y.numpy())
        w, b = torch.from_numpy(ref.coef_).float(), torch.from_numpy(ref.intercept_).float()
        ref_objective = torch.nn.functional.cross_entropy(s_tr @ w.T + b, tr_y) + l2 / 2 * w.pow(2).sum()
        assert info["objective"] == pytest.approx(ref_objective.item(), abs=1e-3)
        theirs = 100 * (ref.predict(s_va.numpy()) == va_y.numpy()).mean()
        assert abs(lbfgs_probe(tr_f, tr_y, va_f, va_y, l2)[0] - theirs) <= 1.0


def test_choose_l2_takes_the_best_cv_score_and_the_stronger_penalty_on_ties():
    g = torch.Generator().manual_seed(1)
    grid = (1e-5, 1e-3, 1e-1, 10.0)
    noise = torch.randn(120, 60, generator=g), torch.randint(0, 3, (120,), generator=g)
    for f, y in (noise, blobs(300, 3, 10, 3.0, g)):
        best, scores = choose_l2(f, y, grid, folds=3)
        assert set(scores) == set(grid)
        assert best == max(l2 for l2 in grid if scores[l2] == max(scores.values()))
    manual = []  # the score of the weakest penalty, recomputed fold by fold
    for val_idx in stratified_folds(y, 3, 0):
        train = torch.ones(len(y), dtype=torch.bool)
        train[val_idx] = False
        manual.append(lbfgs_probe(f[train], y[train], f[val_idx], y[val_idx], 1e-5)[0])
    assert scores[1e-5] == pytest.approx(sum(manual) / 3, abs=1.0)
