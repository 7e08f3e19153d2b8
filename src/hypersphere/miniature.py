"""Miniature copies of the paper's datasets, written in their real on-disk formats at any size.

The paper profile's datasets cannot be downloaded here (and some not at all), so the rehearsal of the paper
profile (rehearse.py), the scale model (scale.py) and the loaders' tests write these files and read them
through the very loaders a user's real files go through:

| dataset        | written as (under `root`)                                               | loader             |
|----------------|-------------------------------------------------------------------------|--------------------|
| `stl10`        | stl10_binary/{train,test,unlabeled}_X.bin (uint8, column-major),        | image._stl10       |
|                | {train,test}_y.bin                                                      |                    |
| `cifar10`      | cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickles) | image._cifar10     |
| `nyu-depth-v2` | nyu_depth_v2/nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5),             | depth.load_nyu     |
|                | splits.mat (MATLAB 5)                                                   |                    |
| `imagenet100`  | imagenet100/{train,val}/<wnid>/*.JPEG                                   | image._imagefolder |
| `imagenet`     | imagenet/{train,val}/<wnid>/*.JPEG                                      | image.ImageFiles   |
|                | (one greyscale file per class, as ImageNet has)                         |                    |
| `bookcorpus`   | bookcorpus/*.txt, one lowercased tokenized sentence per line            | text.load_dataset  |
|                | (the books_large form),                                                 |                    |
|                | mr/rt-polarity.{pos,neg} and cr/custrev.{pos,neg} (Windows-1252)        |                    |

Images are smooth random colour fields (a 4 x 4 grid of random colours resized bicubically), so JPEG files have
realistic sizes and augmentations change them; sentences are drawn from a small Zipf-distributed vocabulary.
Everything is seeded: the same call writes the same bytes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

DATASETS = ("stl10", "cifar10", "nyu-depth-v2", "imagenet100", "imagenet", "bookcorpus")
WORDS = 2000  # the miniature corpora's vocabulary


def _fields(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """n smooth random colour fields as uint8 [n, h, w, 3]."""
    from PIL import Image

    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        out[i] = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    return out


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 40, seed: int = 0) -> Path:
    """stl10_binary/ as in stl10_binary.tar.gz: images [N, 3, 96, 96] stored column-major (W before H), labels
    1-10 as uint8 (each class in turn)."""
    rng, folder = np.random.default_rng(seed), Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        _fields(rng, n, 96, 96).transpose(0, 3, 2, 1).tofile(folder / f"{name}_X.bin")  # [N, 3, W, H]
        if name != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")
    return folder


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 10, seed: int = 0) -> Path:
    """cifar-10-batches-py/ as in cifar-10-python.tar.gz: five training batches and a test batch, each a pickled
    dict with 'data' uint8 [N, 3072] (R, G, B planes, row-major) and 'labels'; batches.meta names the classes."""
    rng, folder = np.random.default_rng(seed), Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)] + [n_test]
    for name, n in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], sizes):
        data = _fields(rng, n, 32, 32).transpose(0, 3, 1, 2).reshape(n, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(k % 10) for k in range(n)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return folder


def write_nyu(root: Path, n: int = 12, seed: int = 0, height: int = 480, width: int = 640) -> Path:
    """nyu_depth_v2/ as NYU-Depth-V2's labeled release: nyu_depth_v2_labeled.mat (MATLAB v7.3, i.e. HDF5, width
    before height: `images` uint8 [n, 3, W, H], `depths` float [n, W, H] in metres) and splits.mat (MATLAB 5,
    1-based column vectors `trainNdxs` and `testNdxs`: about 55% / 45%, as 795 / 654)."""
    import h5py
    import scipy.io

    from .domains.depth import NYU_FILES

    rng, folder = np.random.default_rng(seed), Path(root) / "nyu_depth_v2"
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _fields(rng, n, height, width).transpose(0, 3, 2, 1)  # [n, 3, W, H]
    depth = 1 + 9 * rgb[:, 0].astype(np.float32) / 255  # depth follows the red channel: learnable
    with h5py.File(folder / NYU_FILES[0], "w") as f:
        f.create_dataset("images", data=rgb)
        f.create_dataset("depths", data=depth)
    order = rng.permutation(n) + 1.0
    cut = max(1, min(n - 1, round(n * 795 / 1449)))
    scipy.io.savemat(
        folder / NYU_FILES[1], {"trainNdxs": np.sort(order[:cut])[:, None], "testNdxs": np.sort(order[cut:])[:, None]}
    )
    return folder


def write_imagefolder(
    root: Path,
    classes: int = 4,
    per_class: int = 8,
    val_per_class: int = 2,
    seed: int = 0,
    low: int = 64,
    high: int = 320,
) -> Path:
    """root/{train,val}/<wnid>/*.JPEG, ImageNet's layout: JPEGs of random sizes in [low, high) px, the first file
    of each class greyscale (ImageNet has greyscale and CMYK files among its JPEGs)."""
    from PIL import Image

    rng, root = np.random.default_rng(seed), Path(root)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(low, high, size=2))
                image = Image.fromarray(_fields(rng, 1, h, w)[0])
                (image.convert("L") if i == 0 else image).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)
    return root


def _sentence(rng: np.random.Generator, probs: np.ndarray) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(4, 20)), p=probs)
    return " ".join(f"w{w}" for w in words) + " ."


def _sentences(rng: np.random.Generator, probs: np.ndarray, n: int) -> str:
    """n sentences as _sentence writes them (4-19 Zipf-distributed words, then " ."), one per line, drawn in two
    calls."""
    lengths = rng.integers(4, 20, size=n)
    words = rng.choice(WORDS, size=int(lengths.sum()), p=probs).tolist()
    gaps = [" "] * len(words)
    for end in np.cumsum(lengths).tolist():
        gaps[end - 1] = " .\n"
    names = [f"w{w}" for w in range(WORDS)]
    return "".join(map(str.__add__, map(names.__getitem__, words), gaps))


def write_bookcorpus(
    root: Path, n: int = 400, books: int = 8, labelled: int = 40, seed: int = 0, vectorized: bool = False
) -> Path:
    """bookcorpus/book_k.txt in the books_large_p1.txt form that Quick-Thought used: one lowercased, tokenized
    sentence per line, `n` sentences over `books` files; mr/rt-polarity.{pos,neg} and cr/custrev.{pos,neg}, one
    snippet per line in Windows-1252 with its 0x85 ellipses and 0x92 apostrophes (MR's raw Cornell files).
    `vectorized` draws each book's sentences at once (the same distribution, other bytes; ~20x faster, for the
    millions of sentences of the scale model)."""
    rng, root = np.random.default_rng(seed), Path(root)
    probs = 1 / np.arange(1, WORDS + 1)
    probs /= probs.sum()
    (root / "bookcorpus").mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(n), books)):
        text = (
            _sentences(rng, probs, len(part)) if vectorized else "\n".join(_sentence(rng, probs) for _ in part) + "\n"
        )
        (root / "bookcorpus" / f"book_{k:04d}.txt").write_text(text, encoding="utf-8")
    from .domains.text import CR_FILES, MR_FILES

    for folder, files in (("mr", MR_FILES), ("cr", CR_FILES)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for label, name in enumerate(files):
            lines = [f"{'good' if label == 0 else 'bad'} {_sentence(rng, probs)}" for _ in range(labelled // 2)]
            lines[0] = lines[0].replace(" .", " it\u2019s \u2026")  # cp1252 0x92 and 0x85
            (root / folder / name).write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    return root


def write(dataset: str, root: Path, n: int | None = None, seed: int = 0) -> Path:
    """Write `dataset` (one of DATASETS) under `root` with about `n` training examples (a small default when None);
    returns `root`, the data_dir the loaders take."""
    root = Path(root)
    if dataset == "stl10":
        n = n or 40
        write_stl10(root, n_train=max(10, n // 4), n_test=max(10, n // 8), n_unlabeled=n, seed=seed)
    elif dataset == "cifar10":
        n = n or 50
        write_cifar10(root, n_train=n, n_test=max(10, n // 5), seed=seed)
    elif dataset == "nyu-depth-v2":
        write_nyu(root, n=n or 12, seed=seed)
    elif dataset in ("imagenet100", "imagenet"):
        per_class = max(2, (n or 32) // 4)
        write_imagefolder(
            root / dataset, classes=4, per_class=per_class, val_per_class=max(2, per_class // 4), seed=seed
        )
    elif dataset == "bookcorpus":
        write_bookcorpus(root, n=n or 400, seed=seed)
    else:
        raise ValueError(f"no miniature writer for dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return root
