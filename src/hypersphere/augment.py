"""The paper's positive-pair augmentation as batched tensor ops (Sec. 3 "Common image setup").

Paper recipe (official STL-10 example): RandomResizedCrop(64, scale=(0.08, 1)), RandomHorizontalFlip,
ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(p=0.2), ToTensor, Normalize(mean, std).

Here every image of a batch gets its own random parameters, drawn from one torch.Generator that lives
on the images' device, and the batch is transformed with batched tensor ops (no loop over images):
- crop + resize (+ flip) is a batched separable resampling, out = Wy @ x @ Wx^T, with per-image weight
  matrices that reproduce torchvision's crop-then-`resize(antialias=True)` (triangle filter widened by
  the downscale factor, as PIL and F.interpolate(antialias=True) do);
- ColorJitter applies brightness, contrast, saturation and hue in a random order per image (images that
  share an order are one batch), each op with torchvision.transforms.v2.functional semantics on float
  images in [0, 1]; then RandomGrayscale and Normalize.
Deviation from the paper's PIL pipeline: images stay float between ops (PIL rounds to uint8 after each).
"""

from dataclasses import dataclass, replace
import itertools
import math

import torch
from torch import Tensor
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class AugmentConfig:
    """Positive-pair recipe; the defaults are the paper's (Sec. 3 common setup). MoCo v2's recipe (Chen et al.
    2020) also applies the jitter with a probability and a Gaussian blur (sigma ~ U(blur_sigma); `blur_kernel`
    taps, 23 ~ 10% of 224 px, +-5.5 sigma at sigma = 2)."""

    crop_size: int = 64
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4)  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    jitter_p: float = 1.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 23
    grayscale_first: bool = False  # MoCo v1's order: RandomGrayscale before ColorJitter (the paper's: after)


# Named positive-pair recipes. A dataset names its default; a run may name another (`augment: digits`) or
# override fields of one (`augment: {recipe: stl10, scale: [0.2, 1.0]}`); add a new recipe here.
RECIPES = {
    "stl10": AugmentConfig(),  # the paper's (Sec. 3)
    # CIFAR-10 at its native 32 px: the paper's recipe with 32 px crops
    "cifar10": AugmentConfig(crop_size=32),
    # Digits (28 px upsampled from 8 px; the digit fills most of the frame). Crops of at least 30% of the area:
    # at the paper's 8% a crop is about 2x2 of the original 8x8 digit pixels, which carries no shape. Resized to
    # 12 px, which still holds all of an 8 px digit and costs a quarter of 24 px: more steps, not more pixels.
    # No flip: a mirrored digit is not a digit, so flip invariance is not a nuisance to learn. Grey images:
    # brightness and contrast jitter only.
    "digits": AugmentConfig(crop_size=12, scale=(0.3, 1.0), flip=False, jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0),
    # Coloured digits: the same crops with the paper's full colour recipe (jitter 0.4 x 4, grayscale 0.2).
    "digits-color": AugmentConfig(crop_size=12, scale=(0.3, 1.0), flip=False),
    # MoCo v1 on ImageNet(-100): RandomResizedCrop(224, 0.2-1), grayscale 0.2, ColorJitter(0.4 x 4), flip.
    "mocov1": AugmentConfig(crop_size=224, scale=(0.2, 1.0)),
    # MoCo v2 on ImageNet(-100): RandomResizedCrop(224, 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
    # RandomGrayscale(0.2), GaussianBlur(0.1-2) with p 0.5, flip.
    "mocov2": AugmentConfig(crop_size=224, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5),
}


def recipe(spec: str | dict) -> AugmentConfig:
    """The AugmentConfig named by `spec`: a recipe name, or {"recipe": name, **field overrides}."""
    spec = {"recipe": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("recipe", None)
    if name not in RECIPES:
        raise ValueError(
            f"unknown augmentation recipe {name!r}; choose from {', '.join(RECIPES)} (or add one to augment.RECIPES)"
        )
    fields = AugmentConfig.__dataclass_fields__
    if unknown := set(spec) - set(fields):
        raise ValueError(f"unknown augmentation fields {sorted(unknown)}; known: {', '.join(fields)}")
    return replace(RECIPES[name], **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


# ---------------------------------------------------------------------------------------- crops


def sample_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """n independent draws of torchvision's RandomResizedCrop.get_params -> (top, left, h, w), int64 [n].

    Same semantics: area fraction ~ U(scale), aspect ratio log-uniform in `ratio`, w = round(sqrt(A r)),
    h = round(sqrt(A / r)); the first of `tries` candidates that fits is used, else the central-crop fallback.
    All candidates are drawn at once; tensors live on generator.device.
    """
    dev = generator.device
    u = torch.rand(3, n, tries, generator=generator, device=dev)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height  # torchvision's central-crop fallback when no candidate fits
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = ok.any(dim=1)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)

    pos = torch.rand(2, n, generator=generator, device=dev)  # randint(0, height - h + 1) etc.
    top = torch.where(found, (pos[0] * (height - h + 1)).long().clamp_max(height - h), (height - fh) // 2)
    left = torch.where(found, (pos[1] * (width - w + 1)).long().clamp_max(width - w), (width - fw) // 2)
    return top, left, h, w


def _resize_weights(
    start: Tensor, length: Tensor, size: int, out: int, flip: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """[B, out, size] weights that resample pixels [start, start + length) of an axis to `out` pixels.

    Matches F.interpolate(mode="bilinear", align_corners=False, antialias=True) applied to the crop:
    output pixel i is centred at start + (i + 0.5) * length / out; input pixel j gets the triangle weight
    max(0, 1 - |j + 0.5 - centre| / support), support = max(length / out, 1), restricted to the crop and
    normalised to sum `scale`. Where `flip` is True the output order is reversed (horizontal flip).
    """
    dev = start.device
    step = length.float() / out  # [B]
    support = step.clamp_min(1.0)[:, None]  # [B, 1]
    centre = start[:, None] + (torch.arange(out, device=dev) + 0.5) * step[:, None]  # [B, out]
    if flip is not None:
        centre = torch.where(flip[:, None], centre.flip(1), centre)
    j = torch.arange(size, device=dev)
    inside = (j >= start[:, None]) & (j < (start + length)[:, None])  # [B, size]
    pos = torch.where(inside, (j + 0.5) / support, torch.inf)  # pixel centres in units of support; inf: no weight
    wts = (pos[:, None, :] - (centre / support)[:, :, None]).abs_().neg_().add_(1).clamp_min_(0)  # triangle
    return wts.mul_(scale / wts.sum(dim=2, keepdim=True))


def resized_crop(
    images: Tensor,
    top: Tensor,
    left: Tensor,
    h: Tensor,
    w: Tensor,
    size: int,
    flip: Tensor | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Per-image crop [top:top+h, left:left+w] resized to size x size (antialiased bilinear), flipped
    horizontally where `flip` is True, times `scale`. images [B, C, H, W] (any dtype) -> float32.

    Two batched matmuls (columns, then rows): out[b, c] = Wy[b] @ x[b, c] @ Wx[b]^T. On CPU the batch
    goes in chunks of 64 images, which keeps the float copies cache-sized (about 2x faster).
    """
    B, C, H, W = images.shape
    out = torch.empty(B, C, size, size, device=images.device)
    step = 64 if images.device.type == "cpu" else B
    with torch.autocast(images.device.type, enabled=False):  # fp32 resampling even inside bf16 autocast
        for i in range(0, B, step):
            s = slice(i, i + step)
            wy = _resize_weights(top[s], h[s], H, size, scale=scale)  # [b, size, H]
            wx = _resize_weights(left[s], w[s], W, size, None if flip is None else flip[s])  # [b, size, W]
            cols = torch.bmm(images[s].float().view(-1, C * H, W), wx.transpose(1, 2))  # [b, C * H, size]
            torch.matmul(wy[:, None], cols.view(-1, C, H, size), out=out[s])  # [b, C, size, size]
    return out


# ---------------------------------------------------------------------------------------- colour


def _gray(x: Tensor) -> Tensor:
    """Luminance [B, 1, H, W] of RGB (or the image itself if 1 channel), torchvision weights."""
    if x.shape[1] == 1:
        return x
    return GRAY_WEIGHTS[0] * x[:, 0:1] + GRAY_WEIGHTS[1] * x[:, 1:2] + GRAY_WEIGHTS[2] * x[:, 2:3]


def _blend(x: Tensor, y: Tensor, f: Tensor) -> Tensor:
    """torchvision's _blend, f * x + (1 - f) * y clamped to [0, 1], with one factor per image."""
    return torch.lerp(y, x, f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """torchvision adjust_brightness with a factor per image: x * f, clamped (float x in [0, 1], f [B])."""
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """torchvision adjust_contrast per image: blend with the mean of the image's grayscale."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """torchvision adjust_saturation per image: blend with the grayscale image (no-op on 1 channel)."""
    return x if x.shape[1] == 1 else _blend(x, _gray(x), f)


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """torchvision adjust_hue per image: rotate the HSV hue by f in [-0.5, 0.5] (no-op on 1 channel).

    Same maths as torchvision's rgb->hsv, shift, hsv->rgb, without the hsv tensor: with v = max and
    v * s = max - min, output channel n in (R, G, B) = (5, 3, 1) is v - v * s * clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 h) mod 6 (the closed form of hsv->rgb). Written with float masks instead of torch.where
    and with floor instead of remainder: both are ~10x slower per element on CPU.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    rng = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = rng.clamp_min(1e-12).reciprocal()  # hue is arbitrary (and unused) where rng == 0
    is_r = 1 - torch.sign(maxc - r)  # 1 where max == r (maxc >= r, so the sign is 0 or 1)
    is_g = (1 - torch.sign(maxc - g)) * (1 - is_r)
    is_b = 1 - is_r - is_g
    h6 = is_r * (g - b) * inv + is_g * ((b - r) * inv + 2) + is_b * ((r - g) * inv + 4)  # hue * 6, in (-1, 5]
    h6 = h6 + 6 * f.view(-1, 1, 1)
    out = []
    for n in (5, 3, 1):
        k = h6 + n
        k = k - 6 * torch.floor(k * (1 / 6))  # k mod 6
        out.append(maxc - rng * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, dim=1)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def jitter_orders(strength: tuple[float, float, float, float], channels: int) -> list[tuple[int, ...]]:
    """All orders of the active ColorJitter ops (0-3: brightness, contrast, saturation, hue). Ops with
    strength 0, and saturation and hue on 1-channel images, are left out (torchvision skips or no-ops them),
    so a uniform choice among these orders is torchvision's randperm(4) per image."""
    active = [k for k in range(4) if strength[k] > 0 and (k < 2 or channels == 3)]
    return list(itertools.permutations(active))


# ---------------------------------------------------------------------------------------- pipelines


def _check_images(images: Tensor, mean, std, generator: torch.Generator | None = None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if not len(mean) == len(std) == images.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {images.shape[1]}-channel images")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(
            f"generator is on {generator.device} but images on {images.device}; "
            f"use torch.Generator(device=images.device)"
        )


def _normalizer(mean, std, device) -> tuple[Tensor, Tensor]:
    """(x - mean) / std written as x * a + b, for torch.addcmul."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return 1 / s, -m / s


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-image Gaussian blur: float [B, C, H, W] with sigma [B] -> [B, C, H, W]. Separable (a row pass and a
    column pass, each one grouped conv over all images and channels), kernel exp(-d^2 / (2 sigma^2)) normalised
    over d = -(k-1)/2 .. (k-1)/2, reflect padding: torchvision's gaussian_blur per image."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"blur kernel_size must be odd and positive, got {kernel_size}")
    B, C, H, W = x.shape
    if B * C == 0:
        return x.float()
    pad = kernel_size // 2
    if pad >= min(H, W):
        raise ValueError(
            f"blur kernel {kernel_size} is too large for {H}x{W} images; use kernel_size < 2 * {min(H, W)}"
        )
    d = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - pad
    # per (image, channel)
    w = torch.softmax(-0.5 * (d / sigma.float()[:, None]) ** 2, dim=1).repeat_interleave(C, dim=0)
    h = F.pad(x.float().reshape(1, B * C, H, W), (pad, pad, 0, 0), mode="reflect")
    h = F.pad(F.conv2d(h, w.view(B * C, 1, 1, kernel_size), groups=B * C), (0, 0, pad, pad), mode="reflect")
    return F.conv2d(h, w.view(B * C, 1, kernel_size, 1), groups=B * C).view(B, C, H, W)


def _random_grayscale(x: Tensor, coins: Tensor) -> Tensor:
    """RandomGrayscale: the luminance of the images whose coin [B, 1, 1, 1] is 1 (a lerp by 0 or 1)."""
    return torch.lerp(x, _gray(x).expand_as(x), coins)


def augment(images: Tensor, cfg: AugmentConfig, mean, std, generator: torch.Generator) -> Tensor:
    """One random view per image (paper Sec. 3): RandomResizedCrop, horizontal flip, ColorJitter (with
    probability jitter_p), RandomGrayscale (before the jitter with `grayscale_first`, as MoCo v1), Gaussian blur
    (with probability blur_p), Normalize.
    uint8 [B, C, H, W] -> float32 [B, C, crop, crop] on the same device; independent parameters per image, all
    drawn from `generator` (which must live on images.device). The coins of jitter_p < 1 and blur_p > 0 are
    drawn after everything else, so the paper's recipe draws exactly what it always drew.

    Images that share a ColorJitter order (24 orders for RGB, and no jitter) go through the colour ops as one batch.
    """
    _check_images(images, mean, std, generator)
    B, C, H, W = images.shape
    dev = images.device
    top, left, h, w = sample_crops(B, H, W, cfg.scale, cfg.ratio, generator)
    flip = torch.rand(B, generator=generator, device=dev) < 0.5 if cfg.flip else None
    x = resized_crop(images, top, left, h, w, cfg.crop_size, flip, scale=1 / 255)  # in [0, 1]

    u = torch.rand(4, B, generator=generator, device=dev)  # ColorJitter factors, torchvision's ranges
    b, c, s, hue = cfg.jitter
    factors = [(1 - v + 2 * v * u[k]).clamp_min(0) for k, v in enumerate((b, c, s))] + [hue * (2 * u[3] - 1)]
    orders = jitter_orders(cfg.jitter, C)
    which = torch.randint(len(orders), (B,), generator=generator, device=dev)
    gray = (torch.rand(B, generator=generator, device=dev) < cfg.grayscale_p).float().view(-1, 1, 1, 1)
    if cfg.jitter_p < 1:  # the images without jitter form one more group, with no colour op
        jittered = torch.rand(B, generator=generator, device=dev) < cfg.jitter_p
        which, orders = torch.where(jittered, which, len(orders)), [*orders, ()]
    if cfg.blur_p > 0:
        blur = torch.rand(B, generator=generator, device=dev) < cfg.blur_p
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * torch.rand(
            B, generator=generator, device=dev
        )
    a, bias = _normalizer(mean, std, dev)

    for i, order in enumerate(orders):  # the groups are disjoint, so each can be written back into x
        idx = (which == i).nonzero().squeeze(1)
        xs = x[idx]
        greying = C == 3 and cfg.grayscale_p > 0
        if greying and cfg.grayscale_first:
            xs = _random_grayscale(xs, gray[idx])
        for k in order:
            xs = _JITTER_OPS[k](xs, factors[k][idx])
        if greying and not cfg.grayscale_first:
            xs = _random_grayscale(xs, gray[idx])
        if cfg.blur_p > 0 and (b := blur[idx]).any():
            xs[b] = gaussian_blur(xs[b], sigma[idx][b], cfg.blur_kernel)
        x[idx] = torch.addcmul(bias, xs, a)
    return x


def eval_transform(images: Tensor, crop_size: int, resize: int, mean, std) -> Tensor:
    """Evaluation view (paper: Resize(70) + CenterCrop(64)): shorter side to `resize` (bilinear,
    antialiased), centre crop `crop_size`, normalise. uint8 [B, C, H, W] -> float32 [B, C, crop, crop]."""
    _check_images(images, mean, std)
    H, W = images.shape[-2:]
    short, long = min(H, W), max(H, W)
    size = (resize, int(resize * long / short)) if H <= W else (int(resize * long / short), resize)
    if min(size) < crop_size:
        raise ValueError(f"eval resize {resize} is smaller than the crop {crop_size}; use resize >= crop_size")
    x = images.float().div_(255)
    if size != (H, W):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    top, left = int(round((size[0] - crop_size) / 2)), int(round((size[1] - crop_size) / 2))
    a, bias = _normalizer(mean, std, images.device)
    return torch.addcmul(bias, x[:, :, top : top + crop_size, left : left + crop_size], a)
