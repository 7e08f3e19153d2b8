"""Encoders mapping images to the unit hypersphere S^{dim-1} (Wang & Isola, ICML 2020, Sec. 3 / Sec. 5).

SmallAlexNet is the paper's STL-10 / CIFAR-10 encoder (after CMC); DigitsNet is a small CNN with the same
feature taps for the fast digits dataset. Both expose three taps for evaluation:
  "conv5"  flattened output of the last conv block (after its pooling),
  "fc7"    penultimate activations (after BN + ReLU), what the paper's "fc7 + linear" rows probe,
  "output" the l2-normalised final features, what L_align / L_uniform act on.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

TAPS = ("conv5", "fc7", "output")
ARCHS = ("smallalexnet", "digitsnet")


def conv_block(c_in: int, c_out: int, pool: nn.Module | None) -> nn.Sequential:
    """conv3x3 (padding 1, no bias: BN follows) + BatchNorm + ReLU (+ pooling)."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([pool] if pool is not None else []))


def fc_block(d_in: int, d_out: int) -> nn.Sequential:
    """Linear (no bias: BN follows) + BatchNorm1d + ReLU."""
    return nn.Sequential(nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True))


def init_weights_(module: nn.Module) -> None:
    """Paper init (Sec. 3, common image setup): conv/linear weights N(0, 0.02), BN weight 1, all biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


@contextmanager
def frozen(encoder: nn.Module) -> Iterator[nn.Module]:
    """The encoder in eval mode inside (BatchNorm reads its running statistics, dropout is off), its own mode
    restored on leaving, on an error too. Gradients are the caller's to turn off: a probe trains its head inside."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield encoder
    finally:
        encoder.train(was_training)


class TapEncoder(nn.Module):
    """conv trunk -> flatten ("conv5") -> fc blocks ("fc7") -> linear head -> l2-normalise ("output").

    Subclasses set self.conv, self.fc and self.head; this class gives forward / forward_taps / feature_dims.
    """

    def _finish(self, in_channels: int, input_size: int, fc_widths: Sequence[int], dim: int) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2 (features live on S^(dim-1)), got {dim}")
        conv5_dim = self._conv5_dim(in_channels, input_size)
        widths = [conv5_dim, *fc_widths]
        self.fc = nn.Sequential(*[fc_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.head = nn.Linear(widths[-1], dim)
        self.feature_dims = {"conv5": conv5_dim, "fc7": widths[-1], "output": dim}
        init_weights_(self)

    def _conv5_dim(self, in_channels: int, input_size: int) -> int:
        """Flattened conv output width, from a dummy forward (eval mode, so BN running stats stay untouched)."""
        try:
            with frozen(self.conv), torch.no_grad():
                return self.conv(torch.zeros(1, in_channels, input_size, input_size)).numel()
        except RuntimeError as e:
            raise ValueError(f"input_size {input_size} is too small for {type(self).__name__}: {e}") from None

    def forward_taps(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Activations at the requested taps (subset of TAPS); computes only as far as the deepest one."""
        taps = [taps] if isinstance(taps, str) else list(taps)
        bad = [t for t in taps if t not in TAPS]
        if bad or not taps:
            raise ValueError(f"unknown taps {bad or taps}; choose from {TAPS}")
        out = {}
        h = self.conv(x).flatten(1)
        if "conv5" in taps:
            out["conv5"] = h
        if "fc7" in taps or "output" in taps:
            h = self.fc(h)
            if "fc7" in taps:
                out["fc7"] = h
            if "output" in taps:
                out["output"] = F.normalize(self.head(h), dim=1)
        return out

    def forward(self, x: Tensor, normalize: bool = True) -> Tensor:
        """l2-normalised features [B, dim] on the unit hypersphere; with normalize=False the head's output before
        the normalisation (the embedding Barlow Twins and VICReg act on)."""
        if normalize:
            return self.forward_taps(x, ("output",))["output"]
        return self.head(self.fc(self.conv(x).flatten(1)))


class SmallAlexNet(TapEncoder):
    """The paper's image encoder (Sec. 3, after CMC): conv3x3+BN+ReLU blocks of widths 96, 192 (each followed by
    MaxPool(3, 2)), 384, 384, 192 (MaxPool(3, 2)) -> conv5 192x7x7 at 64 px; fc6 4096 and fc7 4096 (BN, ReLU);
    fc8 Linear to `dim` then l2-normalise."""

    def __init__(self, in_channels: int = 3, dim: int = 128, input_size: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            conv_block(in_channels, 96, nn.MaxPool2d(3, 2)),
            conv_block(96, 192, nn.MaxPool2d(3, 2)),
            conv_block(192, 384, None),
            conv_block(384, 384, None),
            conv_block(384, 192, nn.MaxPool2d(3, 2)),
        )
        self._finish(in_channels, input_size, fc_widths=(4096, 4096), dim=dim)


class DigitsNet(TapEncoder):
    """Small CNN for the embedded small images (12 px digits, 24 px rendered scenes) with the same taps as
    SmallAlexNet: conv3x3+BN+ReLU+MaxPool(2) blocks of widths 16, 32, 64 -> "conv5" (64x1x1 at 12 px, 64x3x3 at
    24 px); fc7 = Linear 128 + BN + ReLU; Linear to `dim`, l2-normalise. Sized for about 60 steps a second on one
    CPU thread at batch 128 and 12 px, so that a digits encoder gets 1,260 steps in ~20 s (widths 24, 48, 96 and
    fc7 256 took 1.7x as long, and reached no higher accuracy)."""

    WIDTHS, FC7 = (16, 32, 64), 128

    def __init__(self, in_channels: int = 1, dim: int = 32, input_size: int = 24):
        super().__init__()
        w = (in_channels, *self.WIDTHS)
        self.conv = nn.Sequential(*[conv_block(a, b, nn.MaxPool2d(2)) for a, b in zip(w[:-1], w[1:])])
        self._finish(in_channels, input_size, fc_widths=(self.FC7,), dim=dim)


def group_batchnorm(module: nn.Module, groups: int) -> nn.Module:
    """Make every BatchNorm of `module` normalise each of `groups` equal parts of a training batch with the part's
    own statistics, as nn.DataParallel on `groups` GPUs runs it: the official STL-10 code encodes
    cat([views x, views y]) on 4 GPUs, so each GPU's BatchNorm sees half of one view's batch. The running
    statistics follow the first part only (DataParallel keeps device 0's buffers). Eval mode is unchanged; the
    weights and state_dict keys too. Returns `module`."""

    def forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        first, *rest = x.chunk(groups)
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1 / bn.num_batches_tracked.item()  # cumulative average
        parts = [F.batch_norm(first, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)]
        parts += [F.batch_norm(p, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for p in rest]
        return torch.cat(parts)

    if groups > 1:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.forward = forward.__get__(m)
    return module


def _projector(width: int, dim: int, head: str) -> nn.Module:
    """The head between fc7 and the output: a Linear (the paper's fc8), or a projector of `HEADS`."""
    if head == "-mlp":  # SimCLR (Chen et al. 2020)
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))
    if head == "-byol":  # BYOL (Grill et al. 2020, Sec. 3.3): BatchNorm after the hidden layer only
        return nn.Sequential(fc_block(width, width), nn.Linear(width, dim))
    if head == "-simsiam":  # SimSiam's CIFAR projector (Chen & He 2021, Sec. 5): BatchNorm on its output too
        return nn.Sequential(fc_block(width, width), nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim))
    return nn.Linear(width, dim)


# an arch name's suffix: the head between fc7 (then the representation a probe reads, as those papers evaluate) and
# the l2-normalised output (_projector)
HEADS = ("", "-mlp", "-byol", "-simsiam")


def build_encoder(arch: str, in_channels: int, dim: int, input_size: int) -> TapEncoder:
    """Encoder by name: "smallalexnet" (STL-10 / CIFAR-10) or "digitsnet" (digits), then a suffix of HEADS: none
    keeps the linear fc8; "-mlp" is SimCLR's projection head Linear-ReLU-Linear (Chen et al. 2020), "-byol" BYOL's
    projector Linear-BN-ReLU-Linear, "-simsiam" SimSiam's Linear-BN-ReLU-Linear-BN, each as wide as fc7, fc7 then
    being the representation before the head and "output" the one after it."""
    base = next((arch.removesuffix(h) for h in HEADS if h and arch.endswith(h)), arch)
    if base not in ARCHS:
        heads = ", ".join(HEADS[1:])
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)} (each also with {heads})")
    encoder = (SmallAlexNet if base == "smallalexnet" else DigitsNet)(in_channels, dim, input_size)
    if head := arch.removeprefix(base):
        encoder.head = _projector(encoder.feature_dims["fc7"], dim, head)
        init_weights_(encoder.head)
    return encoder
