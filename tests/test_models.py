import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hypersphere.models import TAPS, DigitsNet, SmallAlexNet, build_encoder, frozen


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return SmallAlexNet(in_channels=3, dim=128, input_size=64).eval()


def test_smallalexnet_shapes_and_conv5(alexnet):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert alexnet.conv(x).shape == (3, 192, 7, 7)  # the paper: conv5 output 192x7x7 at 64 px
        out = alexnet.forward_taps(x, TAPS)
    assert out["conv5"].shape == (3, 192 * 7 * 7)
    assert out["fc7"].shape == (3, 4096)
    assert out["output"].shape == (3, 128)
    assert alexnet.feature_dims == {"conv5": 9408, "fc7": 4096, "output": 128}
    assert torch.allclose(out["output"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert (out["fc7"] >= 0).all()  # after ReLU


@pytest.mark.parametrize("dim", [2, 8192])
def test_smallalexnet_extreme_dims_other_input_size(dim):
    torch.manual_seed(0)
    model = SmallAlexNet(dim=dim, input_size=32)  # 32 px: 32 -> 15 -> 7 -> 3, conv5 = 192x3x3
    assert model.feature_dims["conv5"] == 192 * 3 * 3
    with torch.no_grad():
        z = model(torch.randn(4, 3, 32, 32))  # train mode: batch statistics
    assert z.shape == (4, dim)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_smallalexnet_parameter_count(alexnet):
    # Counted by hand from the architecture in docs/paper.md: convs have no bias (BN follows), BN has weight + bias,
    # fc6/fc7 have no bias (BN follows), fc8 has a bias.
    widths = [3, 96, 192, 384, 384, 192]
    conv = sum(9 * a * b + 2 * b for a, b in zip(widths[:-1], widths[1:]))
    fc6 = 192 * 7 * 7 * 4096 + 2 * 4096
    fc7 = 4096 * 4096 + 2 * 4096
    fc8 = 4096 * 128 + 128
    assert sum(p.numel() for p in alexnet.parameters()) == conv + fc6 + fc7 + fc8 == 58_678_368


def test_init_statistics(alexnet):
    for m in alexnet.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            assert abs(w.std().item() - 0.02) < 0.002, m
            assert abs(w.mean().item()) < 0.002, m
            assert m.bias is None or (m.bias == 0).all()
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert (m.weight == 1).all() and (m.bias == 0).all()
            assert (m.running_mean == 0).all() and (m.running_var == 1).all()  # dummy forward left them alone
            assert m.num_batches_tracked.item() == 0


@pytest.mark.parametrize("arch, channels, size", [("smallalexnet", 3, 40), ("digitsnet", 1, 24)])
def test_taps_agree_with_forward(arch, channels, size):
    torch.manual_seed(0)
    model = build_encoder(arch, channels, 16, size).eval()
    x = torch.randn(5, channels, size, size)
    with torch.no_grad():
        taps = model.forward_taps(x, TAPS)
        # recompute each tap from the previous one, independently of forward_taps
        assert torch.equal(taps["conv5"], model.conv(x).reshape(5, -1))
        assert torch.allclose(taps["fc7"], model.fc(taps["conv5"]), atol=1e-6)
        expected = model.head(taps["fc7"])
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(taps["output"], expected, atol=1e-6)
        assert torch.allclose(model(x), taps["output"], atol=1e-6)
        assert set(model.forward_taps(x, ["fc7"])) == {"fc7"}
    assert {k: v.shape[1] for k, v in taps.items()} == model.feature_dims


def test_forward_taps_computes_only_as_far_as_needed():
    model = DigitsNet().eval()
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append("fc"))
    model.head.register_forward_hook(lambda *a: calls.append("head"))
    x = torch.randn(2, 1, 24, 24)
    model.forward_taps(x, ("conv5",))
    assert calls == []
    model.forward_taps(x, ("conv5", "fc7"))
    assert calls == ["fc"]


def test_channels_last_input():
    torch.manual_seed(0)
    model = DigitsNet(in_channels=3, dim=16, input_size=24).eval()
    x = torch.randn(6, 3, 24, 24)
    with torch.no_grad():
        ref = model.forward_taps(x, TAPS)
        out = model.to(memory_format=torch.channels_last).forward_taps(x.to(memory_format=torch.channels_last), TAPS)
    for tap in TAPS:
        assert torch.allclose(ref[tap], out[tap], atol=1e-5), tap


@pytest.mark.parametrize("dim", [2, 32, 300])
def test_digitsnet_shapes_and_gradients(dim):
    torch.manual_seed(0)
    model = DigitsNet(dim=dim)
    x = torch.randn(8, 1, 24, 24)
    z = model(x)
    assert z.shape == (8, dim)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
    F.mse_loss(z, torch.roll(z.detach(), 1, 0)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.feature_dims == {"conv5": 64 * 3 * 3, "fc7": 128, "output": dim}


def test_build_encoder_and_errors():
    enc = build_encoder("digitsnet", in_channels=3, dim=4, input_size=28)
    assert isinstance(enc, DigitsNet)
    assert enc.eval()(torch.randn(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="smallalexnet"):
        build_encoder("resnet50", 3, 128, 64)
    with pytest.raises(ValueError, match="dim"):
        build_encoder("digitsnet", 1, 1, 24)
    with pytest.raises(ValueError, match="input_size"):
        SmallAlexNet(input_size=8)
    with pytest.raises(ValueError, match="taps"):
        DigitsNet().forward_taps(torch.randn(2, 1, 24, 24), ("fc6",))


@pytest.mark.parametrize("training", [True, False])
def test_frozen_evaluates_inside_and_restores_the_mode_even_on_an_error(training):
    """Inside frozen() BatchNorm reads its running statistics (its buffers stay put); on leaving, normally or by an
    exception, every submodule is back in the mode it had."""
    enc = DigitsNet(in_channels=1, dim=8)
    enc.train(training)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with frozen(enc):
        assert not any(m.training for m in enc.modules())
        enc(torch.randn(4, 1, 24, 24))
    assert all(m.training == training for m in enc.modules())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    with pytest.raises(RuntimeError), frozen(enc):
        raise RuntimeError("inside")
    assert all(m.training == training for m in enc.modules())
