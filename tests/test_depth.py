"""Tests for hypersphere.domains.depth: the NYU-Depth-V2 loader on tiny files in the real MATLAB formats, the ray-cast
stand-in against analytic depths, the spatial taps and Table 6's decoder, and the frozen-encoder depth probe."""

import math

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn as nn

from hypersphere.augment import AugmentConfig, eval_transform, recipe
from hypersphere.domains.depth import (
    FOV,
    NYU_FILES,
    NYU_VALID,
    DepthData,
    DepthDecoder,
    DepthProbeConfig,
    depth_probe,
    depth_views,
    feature_maps,
    load_nyu,
    load_scenes,
    render,
    render_scenes,
    sample_scenes,
)
from hypersphere.domains.image import pair_metrics
from hypersphere.models import DigitsNet, SmallAlexNet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return load_scenes(tmp_path_factory.mktemp("data"), n_train=400, n_test=200, size=32, seed=0)


# ---------------------------------------------------------------------------------------- NYU-Depth-V2


def write_nyu(folder, n=5):
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 stores it (HDF5, width before height) and splits.mat (MATLAB 5,
    1-based column vectors). Frame k: red follows the row, green the column, blue is 40 k; depth 1 + k + 2 row / 480."""
    row, col = torch.arange(480)[:, None].expand(480, 640), torch.arange(640)[None, :].expand(480, 640)
    rgb = torch.stack(
        [torch.stack([row * 255 // 479, col * 255 // 639, torch.full_like(row, 40 * k)]) for k in range(n)]
    ).to(torch.uint8)  # [n, 3, 480, 640]
    depth = torch.stack([1 + k + 2 * row.float() / 480 for k in range(n)])  # [n, 480, 640]
    with h5py.File(folder / NYU_FILES[0], "w") as f:
        f.create_dataset("images", data=rgb.transpose(2, 3).numpy())  # (n, 3, 640, 480)
        f.create_dataset("depths", data=depth.transpose(1, 2).numpy())  # (n, 640, 480)
    splits = {"trainNdxs": np.array([[1.0], [3], [5]]), "testNdxs": np.array([[2.0], [4]])}
    scipy.io.savemat(folder / NYU_FILES[1], splits)


def test_load_nyu_reads_the_matlab_layout_crops_resizes_and_splits(tmp_path):
    write_nyu(tmp_path)
    d = load_nyu(tmp_path)
    assert d.name == "nyu-depth-v2" and d.encoder_images is d.train_images
    assert d.train_images.shape == (3, 3, 96, 126) and d.val_images.shape == (2, 3, 96, 126)
    assert d.train_depth.shape == (3, 1, 96, 126) and d.val_depth.shape == (2, 1, 96, 126)
    assert d.train_images.dtype == torch.uint8 and d.train_depth.dtype == torch.float32
    assert d.augment == recipe("stl10") and d.eval_resize == 70
    # the split, 1-based: train frames 1, 3, 5 (blue 0, 80, 160), validation frames 2, 4
    assert d.train_images[:, 2].flatten(1).unique(dim=1).flatten().tolist() == [0, 80, 160]
    assert d.val_images[:, 2].flatten(1).unique(dim=1).flatten().tolist() == [40, 120]
    # red varies down the rows only, green along the columns only: a swapped width and height would not
    red, green = d.train_images[:, 0].int(), d.train_images[:, 1].int()
    assert (red == red[..., :1]).all() and (green == green[:, :1]).all()
    assert red[0, -1, 0] - red[0, 0, 0] > 200 and green[0, 0, -1] - green[0, 0, 0] > 200
    # depth: linear in the source row, so the antialiased resize of the valid crop keeps it exactly inside
    top, bottom = NYU_VALID[:2]
    source_row = top + (torch.arange(96) + 0.5) * (bottom - top) / 96 - 0.5
    for depth, frames in ((d.train_depth, (0, 2, 4)), (d.val_depth, (1, 3))):
        expected = torch.stack([1 + k + 2 * source_row / 480 for k in frames])[:, None, :, None].expand_as(depth)
        torch.testing.assert_close(depth[:, :, 5:-5], expected[:, :, 5:-5], atol=1e-4, rtol=0)
    assert d.depth_mean == pytest.approx(d.train_depth.mean().item())
    assert len(d.mean) == len(d.std) == 3


def test_load_nyu_without_its_files_says_what_to_download(tmp_path):
    for present in ((), (NYU_FILES[0],)):
        for name in present:
            (tmp_path / name).write_bytes(b"")
        with pytest.raises(FileNotFoundError) as err:
            load_nyu(tmp_path)
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path) in msg and "nyu_depth_v2.html" in msg
        assert all(f in msg for f in NYU_FILES)


# ---------------------------------------------------------------------------------------- rendered scenes


def test_render_scenes_shapes_dtypes_and_determinism():
    rgb, depth = render_scenes(6, size=32, seed=3)
    assert rgb.shape == (6, 3, 32, 32) and rgb.dtype == torch.uint8
    assert depth.shape == (6, 1, 32, 32) and depth.dtype == torch.float32
    assert torch.isfinite(depth).all() and depth.min() > 0.2 and depth.max() < 12
    again = render_scenes(6, size=32, seed=3)
    assert torch.equal(rgb, again[0]) and torch.equal(depth, again[1])
    assert not torch.equal(rgb, render_scenes(6, size=32, seed=4)[0])
    assert rgb.float().std() > 20  # not a blank image: textured, shaded surfaces


def one_scene(height=1.5, pitch=0.3, yaw=0.0, back=6.0, half_width=3.0):
    """A sampled scene with its camera and room set and no objects."""
    s = sample_scenes(1, torch.Generator().manual_seed(0))
    s.update(
        height=torch.tensor([height]),
        pitch=torch.tensor([pitch]),
        yaw=torch.tensor([yaw]),
        back=torch.tensor([back]),
        half_width=torch.tensor([half_width]),
    )
    s["kind"] = torch.zeros_like(s["kind"])
    return s


def test_floor_depth_follows_from_camera_height_and_pitch():
    """A floor pixel's ray is forward + tan(FOV/2) (x right + y up): its height falls at sin(pitch) - tan y cos(pitch)
    per unit of depth, whatever the yaw, so depth = height / (sin(pitch) - tan(FOV/2) y cos(pitch))."""
    size, h, pitch = 16, 1.2, 0.35
    _, depth = render(one_scene(height=h, pitch=pitch, yaw=0.4, back=40, half_width=40), size, supersample=1)
    y = 1 - 2 * (torch.arange(size) + 0.5) / size
    expected = h / (math.sin(pitch) - math.tan(FOV / 2) * y * math.cos(pitch))
    rows = slice(size // 2 + 1, size)  # below the horizon: the floor, nearer than the walls 40 m away
    torch.testing.assert_close(depth[0, 0, rows], expected[rows, None].expand(-1, size).float(), atol=1e-4, rtol=1e-5)


def test_sphere_depth_and_occlusion():
    """A sphere of radius r centred on the optical axis at depth Z: the central pixel sees its nearest point at
    depth Z - r; it hides the wall behind it (smaller depth there, the same elsewhere) over a disc whose radius
    is tan(asin(r / Z)) / tan(FOV / 2) half-widths."""
    size, h, pitch, yaw, Z, r = 33, 1.5, 0.15, 0.2, 3.0, 0.5
    empty = one_scene(height=h, pitch=pitch, yaw=yaw)
    _, wall = render(empty, size, supersample=1)
    ball = {k: v.clone() for k, v in empty.items()}
    forward = torch.tensor([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    ball["kind"][0, 0] = 1
    ball["centre"][0, 0] = torch.tensor([0.0, h, 0.0]) + Z * forward
    ball["size"][0, 0] = r
    _, depth = render(ball, size, supersample=1)
    assert depth[0, 0, size // 2, size // 2].item() == pytest.approx(Z - r, abs=1e-4)
    changed = depth != wall
    assert (depth[changed] < wall[changed]).all()
    radius_px = math.tan(math.asin(r / Z)) / math.tan(FOV / 2) * size / 2
    assert abs(changed.sum().item() - math.pi * radius_px**2) < 2 * math.pi * radius_px  # within a ring of 1 px


def test_load_scenes_caches_one_npz_and_reads_it_back(tmp_path):
    d = load_scenes(tmp_path, n_train=12, n_test=6, size=32, seed=1)
    files = list((tmp_path / "scenes").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary left behind
    rgb, depth = render_scenes(12, 32, seed=2)
    assert torch.equal(d.train_images, rgb) and torch.equal(d.train_depth, depth)
    assert torch.equal(d.val_images, render_scenes(6, 32, seed=3)[0])
    assert d.encoder_images is d.train_images and d.augment.crop_size == 32 and d.eval_resize == 35
    assert d.depth_std == pytest.approx(depth.std().item())
    with np.load(files[0]) as z:  # the second call reads the file: change it and see the change
        arrays = dict(z)
    arrays["train_depth"][:] = 7.0
    np.savez(files[0], **arrays)
    assert (load_scenes(tmp_path, n_train=12, n_test=6, size=32, seed=1).train_depth == 7.0).all()
    assert len(list((tmp_path / "scenes").iterdir())) == 1


# ---------------------------------------------------------------------------------------- taps and decoder


@pytest.mark.parametrize(
    "encoder, size, shapes",
    [
        (SmallAlexNet(3, 128, 64), 64, {"conv4": (384, 15, 15), "conv5": (192, 7, 7)}),
        (DigitsNet(3, 32, 32), 32, {"conv4": (32, 8, 8), "conv5": (64, 4, 4)}),
    ],
)
def test_feature_maps_and_decoder_shapes(encoder, size, shapes):
    encoder.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = feature_maps(encoder, x)
        assert torch.equal(maps["conv5"].flatten(1), encoder.forward_taps(x, ["conv5"])["conv5"])
        assert torch.equal(maps["conv4"], encoder.conv[:-1](x))
    for tap, shape in shapes.items():
        assert maps[tap].shape == (2, *shape)
        decoder = DepthDecoder(shape[0], shape[1], size)
        assert decoder(maps[tap]).shape == (2, 1, size, size)
        ups = [m for m in decoder if isinstance(m, nn.ConvTranspose2d)]
        assert [m.out_channels for m in ups] == [shape[0] // 2 ** (i + 1) for i in range(len(ups))]
        assert len(ups) == round(math.log2(size / shape[1]))
    with pytest.raises(ValueError, match="unknown spatial taps"):
        feature_maps(encoder, x, ("fc7",))
    with pytest.raises(ValueError, match="unknown spatial taps"):
        feature_maps(encoder, x, (f"conv{5 - len(encoder.conv)}",))


# ---------------------------------------------------------------------------------------- depth probe


def test_depth_views_are_pixel_aligned_with_the_rgb_evaluation_view():
    """Depth equal to the red channel / 255 gives, after standardisation is undone, eval_transform's red channel."""
    images = torch.randint(0, 256, (4, 3, 40, 52), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    depth = images[:, :1].float() / 255
    data = DepthData(
        "t", images, images, depth, images, depth, (0.0,) * 3, (1.0,) * 3, 0.5, 2.0, AugmentConfig(crop_size=24), 28
    )
    view = depth_views(depth, data) * data.depth_std + data.depth_mean
    torch.testing.assert_close(view, eval_transform(images, 24, 28, data.mean, data.std)[:, :1])


def test_depth_probe_is_deterministic_and_leaves_the_encoder_as_it_was(scenes):
    encoder = DigitsNet(3, 32, 32)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = DepthProbeConfig(epochs=1)
    first = depth_probe(encoder, "conv5", scenes, cfg, progress=False)
    assert first == depth_probe(encoder, "conv5", scenes, cfg, progress=False)
    assert set(first) == {"mse", "rmse_m", "mean_mse", "pixel_mean_mse"}
    assert first["rmse_m"] == pytest.approx(math.sqrt(first["mse"]) * scenes.depth_std)
    assert encoder.training and all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_depth_probe_raises_when_the_encoder_changes(scenes):
    encoder = DigitsNet(3, 32, 32)

    def drift(block, inputs, output):  # moves BN statistics, as a probe that forgot eval() would
        block[1].running_mean.add_(1.0)

    encoder.conv[0].register_forward_hook(drift)
    with pytest.raises(RuntimeError, match="sanity check failed"):
        depth_probe(encoder, "conv5", scenes, DepthProbeConfig(epochs=1), progress=False)


def test_scene_depth_is_learnable_from_random_conv5_features(scenes):
    """A decoder on an untrained encoder's conv5 beats the image-blind predictors: the train mean depth and the
    train mean depth map. (Measured: MSE 0.38 vs 0.95 and 0.42.)"""
    torch.manual_seed(0)
    r = depth_probe(DigitsNet(3, 32, 32), "conv5", scenes, DepthProbeConfig(epochs=15, batch_size=32), progress=False)
    assert r["mean_mse"] == pytest.approx(1.0, abs=0.1)  # standardised target: the mean predictor scores ~1
    assert r["mse"] < 0.5 * r["mean_mse"] and r["mse"] < r["pixel_mean_mse"]


@pytest.mark.slow
def test_scene_depth_from_random_conv5_features_beats_the_mean_depth_map_clearly(tmp_path):
    """With 1,000 training scenes and 20 epochs of the paper's schedule the margin over the mean depth map is
    about 20% (measured: MSE 0.365 vs 0.460)."""
    data = load_scenes(tmp_path, n_train=1000, n_test=300, size=32, seed=0)
    torch.manual_seed(0)
    r = depth_probe(DigitsNet(3, 32, 32), "conv5", data, DepthProbeConfig(epochs=20), progress=False)
    assert r["mse"] < 0.9 * r["pixel_mean_mse"]


def test_depth_data_serves_the_pair_metrics_and_moves_devices(scenes):
    """DepthData names its splits as ImageData does, so the Fig. 5 axes (L_align, L_uniform) apply unchanged."""
    torch.manual_seed(0)
    m = pair_metrics(DigitsNet(3, 32, 32), scenes)
    assert 0 <= m["align"] <= 4 and -4 <= m["uniform"] <= 0
    moved = scenes.to("meta")
    assert moved.train_depth.device.type == "meta" and moved.encoder_images is moved.train_images


def test_depth_probe_cross_validates_on_disjoint_folds_covering_the_train_split(scenes, monkeypatch):
    """cv_mse is the mean held-out MSE of `cv_folds` decoders, each trained on the other folds of the train split."""
    from hypersphere.domains import depth as D

    calls = []
    real = D.fit_decoder

    def spy(train_f, train_y, val_f, val_y, *args, **kw):
        calls.append((len(train_f), val_f, real(train_f, train_y, val_f, val_y, *args, **kw)))
        return calls[-1][-1]

    monkeypatch.setattr(D, "fit_decoder", spy)
    r = depth_probe(DigitsNet(3, 32, 32), "conv5", scenes, DepthProbeConfig(epochs=1), progress=False, cv_folds=3)
    (_, _, full), *folds = calls
    assert full == r["mse"] and len(folds) == 3
    assert [n + len(v) for n, v, _ in folds] == [len(scenes.train_images)] * 3  # train on the rest, test on the fold
    assert sum(len(v) for _, v, _ in folds) == len(scenes.train_images)
    held = torch.cat([v.flatten(1) for _, v, _ in folds])
    assert len(torch.unique(held, dim=0)) == len(held)  # disjoint: no train image is held out twice
    assert r["cv_mse"] == pytest.approx(sum(m for _, _, m in folds) / 3)


@pytest.mark.slow
def test_depth_is_an_evaluation_kind_of_the_depth_domain(tmp_path):
    """A scenes run trains through the one trainer and gets a `depth` evaluation record: MSE per spatial tap, CV on
    the first tap only, image-blind baselines and the Fig. 5 axes; `classify` is refused in one line."""
    from hypersphere.evaluate import EvalConfig, evaluate_run
    from hypersphere.sweep import load_sweep
    from hypersphere.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="scenes",
        objective="align(alpha=2) + uniform(t=2)",
        epochs=1,
        batch_size=256,
        dim=8,
        data_dir=str(tmp_path / "data"),
        runs_dir=str(tmp_path / "runs"),
        device="cpu",
    )
    run_dir = train(cfg, progress=False)
    ev = EvalConfig(kind="depth", decoder_epochs=1, cv_folds=2)
    assert ev.taps == ("conv5", "conv4") and EvalConfig().taps == ("fc7", "output")
    record = evaluate_run(run_dir, ev, "cpu", cfg.data_dir, progress=False)
    r = record["results"]
    assert {
        "val_conv5_mse",
        "val_conv4_mse",
        "cv_conv5_mse",
        "val_mean_mse",
        "val_pixel_mean_mse",
        "align",
        "uniform",
    } <= set(r) and "cv_conv4_mse" not in r
    assert 0 < r["val_conv5_mse"] < r["val_mean_mse"] and -4 <= r["uniform"] <= 0
    assert evaluate_run(run_dir, ev, "cpu", cfg.data_dir, progress=False) == record  # cached, not recomputed
    with pytest.raises(ValueError, match="evaluation kind 'classify' does not apply to scenes; use kind: depth"):
        evaluate_run(run_dir, EvalConfig(), "cpu", cfg.data_dir, progress=False)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "defaults: {dataset: scenes}\nevaluation: {probe: lbfgs}\nruns:\n  - {objective: 'uniform(t=2)'}\n"
    )
    with pytest.raises(ValueError, match="entry 1 .*does not apply to scenes"):
        load_sweep(sweep)
