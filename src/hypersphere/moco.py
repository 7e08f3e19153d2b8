"""The MoCo setting of Wang & Isola (ICML 2020, Sec. 5 and appendix: Fig. 9a, Table 3 on ImageNet-100, Table 5
on ImageNet): a query encoder trained by gradient, a key encoder that follows it by an exponential moving
average, and a FIFO queue of past keys that supplies the negatives (He et al. 2020, "Momentum Contrast", MoCo v1;
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning", MoCo v2).

- Queue losses: in losses.py (`queue_contrastive_loss`, `queue_uniform_loss`; an Objective called with a queue).
- `MoCo`: the two encoders, the EMA, the queue and Shuffle-BN under DDP; `resnet50_moco` (MoCo v2 head) and
  `small_resnet_moco` (for 24-32 px images on a CPU), both with the taps "penultimate" and "output".
- Data: `build_imagenet100` (the CMC 100-class subset as symlinks); MoCo v2's augmentation is the recipe
  "mocov2" of augment.RECIPES.
- Linear evaluation: the probe "sgd-full" of evaluate.py (probes.MOCO_PROBE), with top-1 and top-5.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import distributed, resources


# ----------------------------------------------------------------------------- encoders


class MocoEncoder(nn.Module):
    """trunk (images -> pooled features, tap "penultimate") -> head -> l2-normalise (tap "output").

    The head is MoCo v1's Linear(width, dim), or with `mlp` MoCo v2's Linear(width, width)-ReLU-Linear(width, dim)
    (Chen et al. 2020). Same interface as models.TapEncoder: forward, forward_taps, feature_dims."""

    TAPS = ("penultimate", "output")

    def __init__(self, trunk: nn.Module, width: int, dim: int, mlp: bool):
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2 (features live on S^(dim-1)), got {dim}")
        self.trunk = trunk
        self.head = (
            nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))
            if mlp
            else nn.Linear(width, dim)
        )
        self.feature_dims = {"penultimate": width, "output": dim}

    def forward_taps(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        taps = [taps] if isinstance(taps, str) else list(taps)
        if not taps or any(tap not in self.TAPS for tap in taps):
            raise ValueError(f"unknown taps {taps}; choose from {self.TAPS}")
        h = self.trunk(x)
        out = {"penultimate": h} if "penultimate" in taps else {}
        if "output" in taps:
            out["output"] = F.normalize(self.head(h), dim=1)
        return out

    def forward(self, x: Tensor, normalize: bool = True) -> Tensor:
        """The output tap, or with normalize=False the head's output before the l2-normalisation."""
        return self.forward_taps(x, ("output",))["output"] if normalize else self.head(self.trunk(x))


def resnet50_moco(dim: int = 128, mlp: bool = True) -> MocoEncoder:
    """torchvision's ResNet-50 (random init) with its fc replaced by MoCo's head; penultimate = pooled 2048-d."""
    import torchvision  # here, not at the top: it imports torch._dynamo, ~3 s of every CLI start

    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc = nn.Identity()
    return MocoEncoder(trunk, 2048, dim, mlp)


def small_resnet_moco(
    dim: int = 128,
    mlp: bool = True,
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (1, 1, 1, 1),
    in_channels: int = 3,
) -> MocoEncoder:
    """A ResNet for 24-32 px images on a CPU: the CIFAR stem (conv3x3 stride 1, no max-pool), then stages of
    torchvision BasicBlocks of `widths` (strides 1, 2, 2, 2), global average pooling (penultimate = widths[-1]).
    The defaults are ResNet-18's layout at half width with one block per stage; init as torchvision's ResNet."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    c_in = widths[0]
    for stage, (width, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            down = (
                nn.Sequential(conv1x1(c_in, width, stride), nn.BatchNorm2d(width))
                if stride != 1 or c_in != width
                else None
            )
            layers.append(BasicBlock(c_in, width, stride, down))
            c_in = width
    trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return MocoEncoder(trunk, widths[-1], dim, mlp)


# ----------------------------------------------------------------------------- MoCo


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_target <- m theta_target + (1 - m) theta_online for every parameter (buffers are the target's own)."""
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(momentum).add_(p_o.detach() * (1 - momentum))


class EMATarget(nn.Module):
    """BYOL's target network (Grill et al. 2020): a copy of the online encoder without gradient that follows it by
    an exponential moving average, applied (in training mode) before each use, as MoCo's key encoder is."""

    def __init__(self, encoder: nn.Module, momentum: float):
        super().__init__()
        self.online = [encoder]  # a list: not a submodule, so neither its weights nor DDP's wrapper are saved twice
        self.encoder = copy.deepcopy(getattr(encoder, "module", encoder)).requires_grad_(False)
        self.momentum = momentum

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            ema_update(self.encoder, self.online[0], self.momentum)
        with torch.no_grad():
            return self.encoder(x)


class MoCo(nn.Module):
    """Query encoder f_q, key encoder f_k = EMA of f_q, and a queue of `queue_size` l2-normalised keys (He et al.
    2020, Algorithm 1). f_k starts as a copy of f_q, gets no gradient, and follows theta_k <- m theta_k +
    (1 - m) theta_q (Eq. 2) over parameters; its buffers (BN running statistics) come from its own forward
    passes. Both encoders share the module's train/eval mode. The queue starts as random unit vectors
    (seeded), holds rows [N, dim], and is a FIFO: each batch of keys overwrites the oldest rows (wrapping).

    Under DDP the key encoder runs with Shuffle-BN (He et al. 2020, Sec. 3.3; `_keys`), so that no process's
    BatchNorm statistics for keys come from the same images as its queries.
    """

    def __init__(
        self,
        encoder: nn.Module,
        queue_size: int = 16384,
        momentum: float = 0.999,
        seed: int = 0,
        intra_batch: bool = True,
    ):
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum, self.intra_batch = momentum, intra_batch
        inner = getattr(encoder, "module", encoder)  # the encoder itself when DistributedDataParallel wraps it
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(inner).requires_grad_(False)
        dim = inner.feature_dims["output"]
        init = torch.randn(queue_size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("queue", F.normalize(init, dim=1).to(next(encoder.parameters()).device))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=self.queue.device))

    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for every parameter (He et al. 2020, Eq. 2)."""
        ema_update(self.encoder_k, self.encoder_q, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write `keys` [B, dim] over the B oldest rows (FIFO, wrapping at the end); no host synchronisation.
        With several processes, pass the keys of every process (gathered), so that all queues stay equal."""
        size = len(self.queue)
        if len(keys) > size:
            raise ValueError(f"a batch of {len(keys)} keys does not fit a queue of {size}; use a larger queue_size")
        rows = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue.index_copy_(0, rows, keys.detach().to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def forward(self, im_q: Tensor, im_k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q, k, queue) for a pair of views: q = f_q(im_q) with gradient, k = f_k(im_k) without, and a snapshot of
        the queue (the negatives for this step). In training mode this first applies the EMA (as after the
        previous optimiser step); the caller enqueues the keys after the loss (the keys of every process, under
        DDP: methods.Method.loss)."""
        q = self.encoder_q(im_q)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            k = self._keys(im_k)
        return q, k, self.queue.clone()

    @torch.no_grad()
    def _keys(self, im_k: Tensor) -> Tensor:
        """f_k(im_k); with several processes, by Shuffle-BN (He et al. 2020, Sec. 3.3): gather every process's key
        images, permute them with one permutation (drawn by process 0 from torch's global generator, broadcast),
        encode this process's share of the permuted batch, gather the keys and undo the permutation. Each process
        thus normalises its keys with BatchNorm statistics of a random part of the global batch, not of the
        images whose queries it holds, and the model cannot tell positives by their shared statistics. Returns
        this process's keys, in the order of its images."""
        rank, world = distributed.rank_world()
        if world == 1:
            return self.encoder_k(im_k)
        images = distributed.gather(im_k.contiguous())
        # drawn on the CPU, whose generator state a resumed run restores; the broadcast overwrites the others'
        n = len(images)
        perm = (torch.randperm(n) if rank == 0 else torch.empty(n, dtype=torch.long)).to(images.device)
        torch.distributed.broadcast(perm, 0)
        mine = images[distributed.shard(perm)].contiguous(memory_format=torch.channels_last)
        k = distributed.gather(self.encoder_k(mine))
        return distributed.shard(k[torch.argsort(perm)])


# ----------------------------------------------------------------------------- ImageNet-100

_WNID = re.compile(r"^n[0-9]{8}$")


def read_classes(path: str | Path | None = None) -> list[str]:
    """The WordNet ids of a classes file, one a line ('#' comments and blank lines skipped), in file order.
    Default: data/reference/imagenet100_classes.txt, CMC's ImageNet-100 subset (Tian et al. 2019)."""
    path = Path(path) if path is not None else resources.reference("imagenet100_classes.txt")
    lines = [line.strip() for line in path.read_text().splitlines()]
    wnids = [line for line in lines if line and not line.startswith("#")]
    if bad := [w for w in wnids if not _WNID.match(w)]:
        raise ValueError(f"{path}: {bad[0]!r} is not a WordNet id like n01558993; write one id per line")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: class ids repeat; list each once")
    return wnids


def build_imagenet100(imagenet_root: str | Path, out_root: str | Path, classes_file: str | Path | None = None) -> Path:
    """out_root/{train,val}/<wnid> as symlinks to imagenet_root/{train,val}/<wnid> for the classes of
    `classes_file` (default: ImageNet-100), i.e. an ImageFolder tree of the subset. The val split must already
    be sorted into class folders. Idempotent: links that already point to the right folder are kept; anything
    else in the way is an error. Returns out_root."""
    wnids = read_classes(classes_file)
    root, out = Path(imagenet_root).resolve(), Path(out_root)
    splits = ("train", "val")
    missing = [f"{s}/{w}" for s in splits for w in wnids if not (root / s / w).is_dir()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"ImageNet class folders missing under {root}: {', '.join(missing[:5])}{more}; "
            "point imagenet_root at a train/ + val/ tree with val sorted into class folders"
        )
    for s in splits:
        (out / s).mkdir(parents=True, exist_ok=True)
        if extra := sorted(set(os.listdir(out / s)) - set(wnids)):
            raise FileExistsError(
                f"{out / s} holds {extra[0]!r}, not a class of the classes file; remove it or choose an empty out_root"
            )
        for w in wnids:
            link, target = out / s / w, root / s / w
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if link.exists() or link.is_symlink():
                raise FileExistsError(
                    f"{link} exists and is not a link to {target}; remove it or choose an empty out_root"
                )
            link.symlink_to(target, target_is_directory=True)
    return out


# ----------------------------------------------------------------------------- MoCo v2 augmentation
