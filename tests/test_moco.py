"""Tests for hypersphere.moco: queue losses against brute-force float64 formulas (He et al. 2020 Eq. 1; Wang &
Isola 2020 appendix Eqs. 17-18), the EMA and the FIFO queue, the encoders' taps, the ImageNet-100 builder on a
generated ImageFolder tree, and the MoCo v2 augmentation against torchvision and augment()."""

import math
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.datasets import ImageFolder

from hypersphere.augment import RECIPES, AugmentConfig, augment, gaussian_blur
from hypersphere.losses import Objective, align_loss, queue_contrastive_loss, queue_uniform_loss
from hypersphere.moco import MoCo, build_imagenet100, read_classes, resnet50_moco, small_resnet_moco
from hypersphere.probes import MOCO_PROBE, _train_linear, topk_accuracy

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sphere(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def smooth_images(n, c=3, h=40, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, 5, 5, generator=g)
    x = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def tiny_moco(queue_size=8, momentum=0.9):
    torch.manual_seed(0)
    return MoCo(small_resnet_moco(dim=8, widths=(4, 8, 8, 8)), queue_size=queue_size, momentum=momentum)


# ----------------------------------------------------------------------------- queue losses


def test_queue_contrastive_loss_matches_bruteforce():
    q, k, queue, tau = sphere(5, 7, 0), sphere(5, 7, 1), sphere(11, 7, 2), 0.2
    expected = 0.0
    for i in range(5):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(11))
        expected += -math.log(pos / (pos + neg)) / 5
    assert queue_contrastive_loss(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-12)
    assert queue_contrastive_loss(q.float(), k.float(), queue.float(), tau).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("t", [2.0, 7.0])
@pytest.mark.parametrize("intra_batch", [False, True])
def test_queue_uniform_loss_is_weighted_mean_over_pair_union(t, intra_batch):
    K, N = 6, 13
    q, queue = sphere(K, 5, 3), sphere(N, 5, 4)
    pairs = [(q[i], queue[j]) for i in range(K) for j in range(N)]  # Eq. 17: query-queue pairs
    if intra_batch:  # Eq. 18: also the distinct intra-batch query pairs
        pairs += [(q[i], q[j]) for i in range(K) for j in range(i + 1, K)]
    weight = 2 / (2 * N * K + K * (K - 1)) if intra_batch else 1 / (N * K)
    assert weight * len(pairs) == pytest.approx(1.0, rel=1e-12)  # the paper's weights sum to one
    expected = math.log(sum(weight * math.exp(-t * float((a - b).pow(2).sum())) for a, b in pairs))
    assert queue_uniform_loss(q, queue, t, intra_batch).item() == pytest.approx(expected, rel=1e-12)
    assert queue_uniform_loss(q.float(), queue.float(), t, intra_batch).item() == pytest.approx(expected, rel=1e-5)


def test_queue_uniform_loss_large_t_does_not_underflow():
    q, queue, t = sphere(8, 4, 5), sphere(16, 4, 6), 5000.0
    naive = (q[:, None] - queue[None]).pow(2).sum(-1).float().mul(-t).exp().mean().log()
    assert naive.item() == -math.inf  # the direct formula underflows in float32
    d2 = (q[:, None] - queue[None]).pow(2).sum(-1).flatten()
    expected = (torch.logsumexp(-t * d2, 0) - math.log(len(d2))).item()  # float64, shifted
    assert queue_uniform_loss(q.float(), queue.float(), t, intra_batch=False).item() == pytest.approx(
        expected, rel=1e-4
    )


@pytest.mark.parametrize("t", [2.0, 1e4])
def test_collapsed_features_give_finite_gradients(t):
    one = F.normalize(torch.ones(1, 8), dim=1)
    q = one.repeat(4, 1).requires_grad_()
    k, queue = one.repeat(4, 1), one.repeat(16, 1)
    losses = [
        queue_uniform_loss(q, queue, t, intra_batch=True),
        queue_uniform_loss(q, queue, t, intra_batch=False),
        queue_contrastive_loss(q, k, queue, tau=0.07),
        align_loss(q, k, alpha=1.0),
    ]
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, q)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # all potentials are exp(0) = 1, up to the rounding of ||x||^2 + ||y||^2 - 2 x.y in float32, times t
    assert losses[0].item() == pytest.approx(0.0, abs=1e-6 * t)
    for intra_batch in (True, False):  # the training path: an Objective against the queue, through the encoder's norm
        raw = one.repeat(4, 1).mul(3.0).requires_grad_()
        total, _ = Objective.parse(f"3*align(alpha=2) + uniform(t={t:g}) + contrastive(tau=0.07)")(
            F.normalize(raw, dim=1), k, queue=queue, intra_batch=intra_batch
        )
        (grad,) = torch.autograd.grad(total, raw)
        assert torch.isfinite(total) and torch.isfinite(grad).all()


def test_bf16_inputs_give_fp32_results():
    q, k, queue = sphere(16, 32, 7, torch.float32), sphere(16, 32, 8, torch.float32), sphere(64, 32, 9, torch.float32)
    qb, kb, queueb = q.bfloat16(), k.bfloat16(), queue.bfloat16()
    for f, full, half in [
        (queue_uniform_loss, (q, queue, 2.0), (qb, queueb, 2.0)),
        (queue_contrastive_loss, (q, k, queue, 0.2), (qb, kb, queueb, 0.2)),
    ]:
        out = f(*half)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(f(*full).item(), rel=2e-2)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # products must not drop to bf16 under autocast
            assert torch.equal(f(*half), out)


def test_an_objective_with_a_queue_maps_its_terms_to_the_queue_losses():
    q, k, queue = sphere(6, 5, 10), sphere(6, 5, 11), sphere(9, 5, 12)
    total, values = Objective.parse("3*align(alpha=2) + uniform(t=3)")(q, k, queue=queue, intra_batch=False)
    assert values["align"].item() == pytest.approx(align_loss(q, k, 2).item())
    assert values["uniform"].item() == pytest.approx(queue_uniform_loss(q, queue, 3, intra_batch=False).item())
    assert total.item() == pytest.approx(3 * values["align"].item() + values["uniform"].item())
    _, values = Objective.parse("contrastive(tau=0.07)")(q, k, queue=queue)
    assert values["contrastive"].item() == pytest.approx(queue_contrastive_loss(q, k, queue, 0.07).item())
    with pytest.raises(ValueError, match="xent has no MoCo queue form"):
        Objective.parse("xent()")(q, k, queue=queue)


# ----------------------------------------------------------------------------- MoCo


def test_ema_update_is_exact():
    model = tiny_moco(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before = [
        (p_k.clone(), p_q.clone()) for p_q, p_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters())
    ]
    model.momentum_update()
    for (k_old, q_old), p_k in zip(before, model.encoder_k.parameters()):
        assert torch.equal(p_k, k_old * 0.9 + q_old * (1 - 0.9))


def test_forward_train_and_eval():
    model = tiny_moco(queue_size=8).train()
    assert all(torch.equal(a, b) for a, b in zip(model.encoder_q.parameters(), model.encoder_k.parameters()))
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(8)) and torch.equal(model.queue, tiny_moco(8).queue)
    x = torch.randn(2, 4, 3, 16, 16)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
    queue_before = model.queue.clone()
    q, k, queue = model(x[0], x[1])
    model.enqueue(k)
    assert torch.equal(queue, queue_before) and torch.equal(model.queue[:4], k) and model.queue_ptr.item() == 4
    assert not k.requires_grad and all(not p.requires_grad for p in model.encoder_k.parameters())
    queue_contrastive_loss(q, k, queue, 0.2).backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    k_old = [p.clone() for p in model.encoder_k.parameters()]
    opt.step()  # the next forward applies the EMA towards the updated query encoder
    model(x[0], x[1])
    for p_k, p_q, old in zip(model.encoder_k.parameters(), model.encoder_q.parameters(), k_old):
        assert torch.equal(p_k, old * 0.9 + p_q * (1 - 0.9))

    model.eval()
    assert not model.encoder_k.training and not model.encoder_q.training
    state = {key: v.clone() for key, v in model.state_dict().items()}
    _, _, queue = model(x[0], x[1])
    assert torch.equal(queue, state["queue"])
    assert all(torch.equal(v, state[key]) for key, v in model.state_dict().items())  # eval changes nothing


def test_queue_is_fifo_with_wraparound():
    model = tiny_moco(queue_size=5)
    batches = [torch.full((2, 8), float(i)) + torch.arange(2.0)[:, None] / 10 for i in range(1, 4)]
    model.enqueue(batches[0])
    model.enqueue(batches[1])
    assert torch.equal(model.queue[:4], torch.cat(batches[:2])) and model.queue_ptr.item() == 4
    model.enqueue(batches[2])  # fills row 4, then overwrites the oldest key (row 0)
    assert torch.equal(model.queue[4], batches[2][0]) and torch.equal(model.queue[0], batches[2][1])
    assert torch.equal(model.queue[1:4], torch.cat(batches[:2])[1:]) and model.queue_ptr.item() == 1
    with pytest.raises(ValueError, match="queue_size"):
        model.enqueue(torch.zeros(6, 8))


# ----------------------------------------------------------------------------- encoders


def test_resnet50_moco_taps_and_heads():
    torch.manual_seed(0)
    model = resnet50_moco(dim=128).eval()
    assert model.feature_dims == {"penultimate": 2048, "output": 128}
    assert [tuple(m.weight.shape) for m in model.head if hasattr(m, "weight")] == [(2048, 2048), (128, 2048)]
    with torch.no_grad():
        out = model.forward_taps(torch.randn(2, 3, 64, 64), ("penultimate", "output"))
    assert out["penultimate"].shape == (2, 2048) and out["output"].shape == (2, 128)
    assert torch.allclose(out["output"].norm(dim=1), torch.ones(2), atol=1e-5) and (out["penultimate"] >= 0).all()
    assert tuple(resnet50_moco(dim=64, mlp=False).head.weight.shape) == (64, 2048)  # MoCo v1 head


@pytest.mark.parametrize("size", [24, 32])
def test_small_resnet_taps(size):
    torch.manual_seed(0)
    model = small_resnet_moco(dim=16)
    out = model.forward_taps(torch.randn(3, 3, size, size), ["penultimate", "output"])
    assert model.feature_dims == {"penultimate": 256, "output": 16}
    assert out["penultimate"].shape == (3, 256) and out["output"].shape == (3, 16)
    assert torch.allclose(model(torch.randn(3, 3, size, size)).norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="unknown taps"):
        model.forward_taps(torch.randn(1, 3, size, size), ("fc7",))


# ----------------------------------------------------------------------------- ImageNet-100


def test_imagenet100_classes_file():
    wnids = read_classes()
    assert len(wnids) == len(set(wnids)) == 100
    assert wnids[0] == "n02869837" and wnids[-1] == "n02090622"  # CMC's published order


def fake_imagenet(root, wnids, val_missing=()):
    for split in ("train", "val"):
        for i, w in enumerate(wnids):
            if split == "val" and w in val_missing:
                continue
            (root / split / w).mkdir(parents=True)
            for j in range(2 if split == "train" else 1):
                Image.new("RGB", (8, 8), (30 * i, 10 * j, 0)).save(root / split / w / f"{w}_{j}.png")


def test_build_imagenet100_on_tiny_tree(tmp_path):
    wnids = ["n00000004", "n00000002", "n00000003", "n00000001"]
    fake_imagenet(tmp_path / "imagenet", wnids, val_missing=["n00000004"])
    classes = tmp_path / "classes.txt"
    classes.write_text("# a small subset\nn00000003\nn00000001\n\n")
    out = build_imagenet100(tmp_path / "imagenet", tmp_path / "sub", classes)
    for _ in range(2):  # a second build finds everything in place
        train, val = ImageFolder(str(out / "train")), ImageFolder(str(out / "val"))
        assert train.classes == val.classes == ["n00000001", "n00000003"]
        assert len(train) == 4 and len(val) == 2
        assert os.readlink(out / "val" / "n00000003") == str((tmp_path / "imagenet" / "val" / "n00000003").resolve())
        build_imagenet100(tmp_path / "imagenet", tmp_path / "sub", classes)

    classes.write_text("n00000004\nn00000003\n")
    with pytest.raises(FileNotFoundError, match=r"missing under .*: val/n00000004;"):
        build_imagenet100(tmp_path / "imagenet", tmp_path / "sub2", classes)
    classes.write_text("n00000002\n")  # out_root still holds the other subset's classes
    with pytest.raises(FileExistsError, match="n00000001"):
        build_imagenet100(tmp_path / "imagenet", tmp_path / "sub", classes)
    classes.write_text("n0000002\n")
    with pytest.raises(ValueError, match="not a WordNet id"):
        build_imagenet100(tmp_path / "imagenet", tmp_path / "sub3", classes)


# ----------------------------------------------------------------------------- MoCo v2 augmentation


@pytest.mark.parametrize("kernel", [9, 23])
def test_blur_matches_torchvision(kernel):
    x = torch.rand(3, 3, 20, 26, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.7, 2.0])
    out = gaussian_blur(x, sigma, kernel)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [kernel, kernel], [sigma[i].item()] * 2)
        torch.testing.assert_close(out[i], ref, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, sigma, 4)


def test_the_mocov2_recipe_and_the_paper_recipe_draws():
    mocov2 = RECIPES["mocov2"]
    assert (mocov2.crop_size, mocov2.scale, mocov2.jitter, mocov2.jitter_p, mocov2.grayscale_p, mocov2.blur_p) == (
        224,
        (0.2, 1.0),
        (0.4, 0.4, 0.4, 0.1),
        0.8,
        0.2,
        0.5,
    )
    # without the coins, the recipe draws what it always drew: jitter_p = 1 and blur_p = 0 give the same views
    x = smooth_images(16)
    cfg = AugmentConfig(crop_size=24)
    out = augment(x, replace(cfg, jitter_p=1.0, blur_p=0.0), MEAN3, STD3, torch.Generator().manual_seed(3))
    assert torch.equal(out, augment(x, cfg, MEAN3, STD3, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("field,p", [("jitter_p", 0.8), ("blur_p", 0.5)])
def test_jitter_and_blur_apply_with_their_probability(field, p):
    x = smooth_images(400, h=16, w=16)
    base = AugmentConfig(crop_size=12, grayscale_p=0.0, jitter_p=0.0, blur_p=0.0, blur_sigma=(1.0, 2.0), blur_kernel=5)
    plain = augment(x, replace(base, **{field: 1e-9}), MEAN3, STD3, torch.Generator().manual_seed(1))
    changed = augment(x, replace(base, **{field: p}), MEAN3, STD3, torch.Generator().manual_seed(1)) != plain
    assert abs(changed.flatten(1).any(1).float().mean().item() - p) < 0.06  # 400 draws: binomial sd <= 0.025


# ----------------------------------------------------------------------------- linear evaluation


def test_the_moco_probe_and_topk():
    cfg = MOCO_PROBE
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.epochs, cfg.batch_size) == ("sgd", 10.0, 0.9, 60, 256)
    assert cfg.lr_milestones() == [30, 40, 50] and replace(cfg, epochs=6).lr_milestones() == [3, 4, 5]
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 1, 9, 2, 3, 4]])
    # label ranks 1, 2 and 6: top-1 hits row 0, top-5 rows 0 and 1
    assert topk_accuracy(logits, torch.tensor([5, 1, 0])) == pytest.approx((100 / 3, 200 / 3))
    with pytest.raises(ValueError, match="top-7"):
        topk_accuracy(logits, torch.tensor([0, 0, 0]), ks=(1, 7))


def test_the_sgd_probe_learns_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    labels = torch.arange(6).repeat(100)
    feats = centres[labels] + 0.1 * torch.randn(600, 16, generator=g)
    clf = _train_linear(lambda idx: feats[idx], labels, 16, 6, replace(MOCO_PROBE, epochs=6, batch_size=64), "cpu")
    top1, top5 = topk_accuracy(clf(feats), labels)
    assert top1 > 95 and top5 == 100
