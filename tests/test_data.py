"""Tests for hypersphere.domains.image: the bundled digits sets, and the STL-10 / CIFAR-10 / ImageFolder loaders on tiny
files written in the real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import torchvision.datasets.cifar
from torchvision.datasets import STL10

from hypersphere.augment import AugmentConfig
from hypersphere.domains.image import DATASETS, MIN_LUMA_CONTRAST, ImageData, load_dataset

LUMA = np.array([0.2989, 0.587, 0.114])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_color():
    return load_dataset("digits-color", seed=0)


@pytest.fixture(scope="module")
def reference_digits():
    """All 1,797 digits upsampled independently with PIL (float32 mode 'F', bilinear), uint8 [1797, 28, 28]."""
    d = load_digits()
    up = [
        np.asarray(Image.fromarray((im / 16).astype(np.float32), mode="F").resize((28, 28), Image.BILINEAR))
        for im in d.images
    ]
    return np.clip(np.round(np.stack(up) * 255), 0, 255).astype(np.uint8), d.target


# ---------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_recipe(digits):
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.train_images.shape == (1347, 1, 28, 28) and digits.val_images.shape == (450, 1, 28, 28)
    for t in (digits.encoder_images, digits.train_images, digits.val_images):
        assert t.dtype == torch.uint8
    for t in (digits.train_labels, digits.val_labels):
        assert t.dtype == torch.int64 and set(t.tolist()) == set(range(10))
    assert digits.encoder_images is digits.train_images
    assert digits.augment == AugmentConfig(12, (0.3, 1.0), (3 / 4, 4 / 3), False, (0.4, 0.4, 0.0, 0.0), 0.0)
    assert digits.eval_resize == 13


def test_digits_are_an_exact_stratified_partition(digits, reference_digits):
    """Every loaded image is one of sklearn's digits (upsampled as PIL does, +-1 for rounding), with its label;
    train and val are disjoint and together hold all 1,797; class proportions agree within one image."""
    ref, target = reference_digits
    ref_flat = torch.from_numpy(ref).flatten(1).float()
    matched = []
    for images, labels in ((digits.train_images, digits.train_labels), (digits.val_images, digits.val_labels)):
        flat = images.flatten(1).float()
        idx = torch.cdist(flat, ref_flat).argmin(1)
        assert (flat - ref_flat[idx]).abs().max() <= 1
        assert torch.equal(labels, torch.from_numpy(target)[idx])
        matched.append(set(idx.tolist()))
    assert not matched[0] & matched[1] and len(matched[0] | matched[1]) == 1797
    expected_val = np.bincount(target) * 450 / 1797
    assert np.abs(np.bincount(digits.val_labels.numpy()) - expected_val).max() <= 1


def test_digits_split_is_fixed(digits):
    again = load_dataset("digits", seed=5)
    assert torch.equal(again.train_images, digits.train_images) and torch.equal(again.val_labels, digits.val_labels)


def test_digits_mean_std_are_train_statistics(digits, digits_color):
    for d in (digits, digits_color):
        x = d.train_images.numpy() / 255.0
        np.testing.assert_allclose(d.mean, x.mean(axis=(0, 2, 3)), atol=1e-6)
        np.testing.assert_allclose(d.std, x.std(axis=(0, 2, 3), ddof=1), atol=1e-6)
    assert len(digits.mean) == 1 and len(digits_color.std) == 3


# ---------------------------------------------------------------------------------------- digits-color


def _fit_colours(colour: torch.Tensor, grey: torch.Tensor):
    """Per image and channel, least-squares fit colour = bg + alpha * (fg - bg) with alpha = grey / 255;
    returns (bg [N, 3], fg [N, 3], max abs residual in 0-255 units)."""
    a = grey.double().flatten(1) / 255  # [N, P]
    y = colour.double().flatten(2)  # [N, 3, P]
    a_mean, y_mean = a.mean(1, keepdim=True), y.mean(2, keepdim=True)
    slope = ((a - a_mean)[:, None] * (y - y_mean)).sum(2) / ((a - a_mean) ** 2).sum(1, keepdim=True)
    bg = y_mean.squeeze(2) - slope * a_mean
    residual = (y - (bg[:, :, None] + slope[:, :, None] * a[:, None])).abs().amax()
    return bg / 255, (bg + slope) / 255, residual


def test_digits_color_structure(digits, digits_color):
    """Same split and labels as digits; each image is its grey digit painted between a background and a
    foreground colour (alpha = grey level), with enough luminance contrast, and the colours vary."""
    d = digits_color
    assert (
        d.name == "digits-color" and d.train_images.shape == (1347, 3, 28, 28) and d.train_images.dtype == torch.uint8
    )
    assert torch.equal(d.train_labels, digits.train_labels) and torch.equal(d.val_labels, digits.val_labels)
    assert d.augment == AugmentConfig(crop_size=12, scale=(0.3, 1.0), flip=False) and d.eval_resize == 13
    bg, fg, residual = _fit_colours(d.train_images, digits.train_images)
    assert residual <= 1.0  # uint8 rounding only
    assert bg.min() >= -0.01 and fg.max() <= 1.01
    contrast = np.abs((fg - bg).numpy() @ LUMA)
    assert (contrast >= MIN_LUMA_CONTRAST - 0.01).mean() > 0.99
    assert (bg.std(0) > 0.2).all() and (fg.std(0) > 0.2).all()  # uniform colours: std ~0.29 per channel


def test_digits_color_depends_on_seed_only(digits_color):
    again = load_dataset("digits-color", seed=0)
    other = load_dataset("digits-color", seed=1)
    assert torch.equal(again.train_images, digits_color.train_images)
    assert torch.equal(again.val_images, digits_color.val_images)
    assert (other.train_images != digits_color.train_images).float().mean() > 0.5
    assert torch.equal(other.train_labels, digits_color.train_labels)


# ---------------------------------------------------------------------------------------- real formats


def _images(n, c, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_stl10_binary_format(tmp_path, monkeypatch):
    """Files as in stl10_binary.tar.gz: uint8 images stored column-major (N, 3, 96, 96 with W before H),
    labels 1-10 as uint8. Only the md5 check of the official files is bypassed."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    train, test, unlabeled = _images(4, 3, 96, 96, 0), _images(3, 3, 96, 96, 1), _images(5, 3, 96, 96, 2)
    train_y, test_y = np.array([1, 10, 3, 5], np.uint8), np.array([2, 2, 9], np.uint8)
    for name, arr in (("train_X", train), ("test_X", test), ("unlabeled_X", unlabeled)):
        arr.transpose(0, 1, 3, 2).tofile(folder / f"{name}.bin")  # column-major, as the official files
    train_y.tofile(folder / "train_y.bin")
    test_y.tofile(folder / "test_y.bin")
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)

    d = load_dataset("stl10", root=tmp_path)
    assert torch.equal(d.encoder_images, torch.from_numpy(np.concatenate([train, unlabeled])))
    assert torch.equal(d.train_images, torch.from_numpy(train)) and torch.equal(d.val_images, torch.from_numpy(test))
    assert d.train_labels.tolist() == [0, 9, 2, 4] and d.val_labels.tolist() == [1, 1, 8]
    assert d.train_labels.dtype == torch.int64 and d.encoder_images.is_contiguous() and d.val_images.is_contiguous()
    assert d.mean == (0.4409, 0.4279, 0.3868) and d.std == (0.2683, 0.2610, 0.2687)
    assert d.augment == AugmentConfig() and d.eval_resize == 70 and d.num_classes == 10


def test_cifar10_pickle_format(tmp_path, monkeypatch):
    """Pickled batches as in cifar-10-python.tar.gz: dicts with 'data' uint8 [N, 3072] (R, G, B planes,
    row-major) and 'labels'. Only torchvision's md5 check of the official files is bypassed."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": (_images(2, 3, 32, 32, i), [i, (i + 3) % 10]) for i in range(1, 6)}
    batches["test_batch"] = (_images(3, 3, 32, 32, 9), [7, 8, 9])
    for name, (images, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(len(images), 3072), "labels": labels}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)

    d = load_dataset("cifar10", root=tmp_path)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(d.train_images, torch.from_numpy(train)) and d.encoder_images is d.train_images
    assert d.train_labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(d.val_images, torch.from_numpy(batches["test_batch"][0])) and d.val_labels.tolist() == [7, 8, 9]
    assert d.augment.crop_size == 32 and d.eval_resize == 35 and d.augment.scale == (0.08, 1.0)


def test_imagefolder_pngs(tmp_path):
    """ImageFolder of PNGs: 96 px images round-trip exactly; others are resized (shorter side) and centre
    cropped to 96 px; classes are the sorted folder names."""
    arrays = {}
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                arr = _images(1, 3, 96, 96, len(arrays))[0].transpose(1, 2, 0)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
                arrays[split, cls, i] = arr
    Image.fromarray(np.zeros((50, 120), np.uint8)).save(tmp_path / "val" / "dog" / "2_wide_grey.png")

    d = load_dataset("imagefolder", root=tmp_path)
    assert d.num_classes == 2 and d.train_labels.tolist() == [0, 0, 1, 1] and d.val_labels.tolist() == [0, 0, 1, 1, 1]
    assert d.train_images.shape == (4, 3, 96, 96) and d.val_images.shape == (5, 3, 96, 96)
    for j, (cls, i) in enumerate((("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1))):
        assert torch.equal(d.train_images[j], torch.from_numpy(arrays["train", cls, i]).permute(2, 0, 1))
        assert torch.equal(d.val_images[j], torch.from_numpy(arrays["val", cls, i]).permute(2, 0, 1))
    assert (d.val_images[4] == 0).all()
    assert (
        d.mean == (0.485, 0.456, 0.406)
        and d.augment == AugmentConfig()
        and d.eval_resize == 70
        and d.name == "imagefolder"
    )


# ---------------------------------------------------------------------------------------- errors, device


@pytest.mark.parametrize("name,folder", [("stl10", "stl10_binary"), ("cifar10", "cifar-10-batches-py")])
def test_missing_data_is_one_clear_line(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / folder) in msg
    assert f"make data DATASET={name}" in msg and "download=True" in msg


def test_missing_imagefolder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train") as err:
        load_dataset("imagefolder", root=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def _save(path, shade, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 50, 3), shade, np.uint8)).save(path, fmt)


def test_a_raw_imagenet_val_folder_names_the_sorting_script(tmp_path, capsys):
    """ImageNet's val/ as downloaded: its JPEGs side by side, not in <wnid>/ folders. Loading fails in one line naming
    the fix (valprep.sh) instead of torchvision's bare "Couldn't find any class folder", and `train` stops before
    it trains anything."""
    from hypersphere.__main__ import main

    for k, wnid in enumerate(("n01440764", "n01443537")):
        _save(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{k}.JPEG", 60 * k, "JPEG")
    for i in range(1, 4):
        _save(tmp_path / "imagenet" / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", 30 * i, "JPEG")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenet", root=tmp_path)
    msg = str(err.value)
    assert (
        "\n" not in msg and str(tmp_path / "imagenet" / "val") in msg and "class folders" in msg and "valprep.sh" in msg
    )
    runs = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "--dataset",
                "imagenet",
                "--data-dir",
                str(tmp_path),
                "--runs-dir",
                str(runs),
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    assert "valprep.sh" in capsys.readouterr().err and not list(runs.rglob("*.pt"))


def test_images_the_decoder_cannot_read_fail_once_up_front(tmp_path):
    """torchvision's ImageFolder lists .bmp and .tif files, which TorchCodec does not decode: one error names their
    extensions, their number and the fix before any image is decoded; JPEG, PNG and WebP files load."""
    for split in ("train", "val"):
        _save(tmp_path / split / "cat" / "0.png", 10)
        _save(tmp_path / split / "dog" / "0.webp", 20)
        _save(tmp_path / split / "dog" / "1.JPG", 30, "JPEG")
    _save(tmp_path / "train" / "cat" / "1.bmp", 40)
    _save(tmp_path / "train" / "dog" / "2.tif", 50)
    with pytest.raises(ValueError) as err:
        load_dataset("imagefolder", root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "train") in msg and "2 images as .bmp, .tif" in msg
    assert "convert them to PNG or JPEG, or remove them" in msg
    for path in (tmp_path / "train" / "cat" / "1.bmp", tmp_path / "train" / "dog" / "2.tif"):
        path.unlink()
    d = load_dataset("imagefolder", root=tmp_path)
    assert d.train_images.shape == (3, 3, 96, 96) and d.train_labels.tolist() == [0, 1, 1]


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as err:
        load_dataset("mnist")
    assert all(name in str(err.value) for name in DATASETS)


def test_to_moves_tensors_and_keeps_aliasing(digits):
    moved = digits.to("cpu")
    assert isinstance(moved, ImageData) and moved.train_images.dtype == torch.uint8
    assert moved.encoder_images is moved.train_images
    assert torch.equal(moved.val_images, digits.val_images) and moved.augment == digits.augment


def test_imagenet100_from_an_imagenet_layout_through_the_symlink_builder(tmp_path):
    """The ImageNet-100 tree is built from a full ImageNet train/ + val/ layout by symlinks (moco.py), then loaded
    at 256 px (shorter side, centre crop) with MoCo's recipe; a missing tree names the builder."""
    from hypersphere.moco import build_imagenet100

    wnids = ["n01440764", "n01443537", "n01484850"]
    for split in ("train", "val"):
        for k, wnid in enumerate(wnids):
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            Image.fromarray(np.full((300, 400, 3), 40 * k, np.uint8)).save(
                tmp_path / "imagenet" / split / wnid / "a.JPEG", "JPEG"
            )
    (tmp_path / "classes.txt").write_text("\n".join(wnids[:2]) + "\n")
    with pytest.raises(FileNotFoundError, match="build_imagenet100"):
        load_dataset("imagenet100", root=tmp_path)
    build_imagenet100(tmp_path / "imagenet", tmp_path / "imagenet100", tmp_path / "classes.txt")
    d = load_dataset("imagenet100", root=tmp_path)
    assert d.train_images.shape == (2, 3, 256, 256) and d.val_labels.tolist() == [0, 1] and d.num_classes == 2
    assert abs(int(d.train_images[1].float().mean()) - 40) <= 1  # the second class's grey level survives decoding
    assert d.augment.crop_size == 224 and d.augment.scale == (0.2, 1.0) and d.eval_resize == 256
