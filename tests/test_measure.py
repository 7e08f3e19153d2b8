"""`measure` for any encoder's features: the statistics against independent formulas, the three inputs (a features
file, a run, a module on a dataset of this project) and one-line errors for bad input."""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from hypersphere import measure as M
from hypersphere.__main__ import main
from hypersphere.metrics import alignment, uniformity
from hypersphere.train import TrainConfig, train


def sphere(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def pairs(n=400, d=16, noise=0.3, seed=0):
    x = sphere(n, d, seed)
    return x, F.normalize(x + noise * torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1)), dim=1)


def test_effective_rank_matches_scipys_entropy_of_the_singular_values():
    f = sphere(300, 12) * torch.linspace(0.2, 1.0, 12)  # anisotropic
    s = np.linalg.svd(f.double().numpy(), compute_uv=False)
    assert M.effective_rank(f) == pytest.approx(np.exp(entropy(s / s.sum())), rel=1e-6)
    line = torch.randn(50, 1, generator=torch.Generator().manual_seed(1)) * torch.ones(1, 8)  # rank 1
    assert M.effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert M.effective_rank(torch.eye(8)) == pytest.approx(8.0, rel=1e-6)


def test_measure_is_the_papers_metrics_with_intervals_that_cover_them():
    x, y = pairs()
    r = M.measure(x, y)
    assert r["align"] == pytest.approx(alignment(x, y), rel=1e-5)
    assert r["uniform"] == pytest.approx((uniformity(x) + uniformity(y)) / 2, rel=1e-6)
    assert r["align_low"] < r["align"] < r["align_high"] and r["uniform_low"] < r["uniform"] < r["uniform_high"]
    more = M.measure(*pairs(n=1600))  # 4x the inputs: about half as wide
    width = lambda q, k: q[f"{k}_high"] - q[f"{k}_low"]  # noqa: E731
    assert width(more, "align") < 0.7 * width(r, "align") and width(more, "uniform") < 0.7 * width(r, "uniform")
    shuffled = M.measure(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(2))])
    assert shuffled["align_low"] > r["align_high"]  # unrelated "pairs" are far worse aligned


def test_a_features_file_two_views_or_index_pairs(tmp_path, capsys):
    x, y = pairs()
    np.save(tmp_path / "views.npy", torch.stack([x, y]).numpy())
    assert main(["measure", str(tmp_path / "views.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 400 and out["align"] == pytest.approx(alignment(x, y), rel=1e-5)
    torch.save(torch.cat([x, y]), tmp_path / "feats.pt")
    torch.save(torch.stack([torch.arange(400), torch.arange(400, 800)], 1), tmp_path / "pairs.pt")
    assert main(["measure", str(tmp_path / "feats.pt"), "--positives", str(tmp_path / "pairs.pt")]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"L_align\(alpha=2\)\s+{alignment(x, y):.4f}", table)
    assert f"{uniformity(torch.cat([x, y])):.4f}" in table and "effective rank" in table


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x, y, p: np.save(p / "f.npy", 2 * torch.stack([x, y]).numpy()), "not unit-norm"),
        (
            lambda x, y, p: np.save(p / "f.npy", torch.stack([x, y]).numpy() * np.where(np.arange(16) == 3, np.nan, 1)),
            "not unit-norm",
        ),
        (lambda x, y, p: np.save(p / "f.npy", x.numpy()), r"shape \(400, 16\); give \[2, N, d\]"),
        (lambda x, y, p: torch.save({"x": x}, p / "f.npy.pt") or (p / "f.npy.pt").rename(p / "f.npy"), "not an array"),
        (lambda x, y, p: (p / "f.npy").write_bytes(b"\x93NUMPY garbage"), "not a readable"),
        (lambda x, y, p: None, "no such file"),
    ],
)
def test_bad_features_fail_in_one_line(tmp_path, capsys, make, message):
    x, y = pairs()
    make(x, y, tmp_path)
    assert main(["measure", str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and re.search(message, err), err


def test_bad_positive_pairs_fail_in_one_line(tmp_path, capsys):
    x, _ = pairs()
    np.save(tmp_path / "f.npy", x.numpy())
    np.save(tmp_path / "p.npy", np.array([[0, 1], [2, 400]]))
    assert main(["measure", str(tmp_path / "f.npy"), "--positives", str(tmp_path / "p.npy")]) == 2
    assert "index pairs must be integers in 0..399" in capsys.readouterr().err


def test_a_run_and_a_module_on_a_dataset_of_this_project(tmp_path, capsys, monkeypatch):
    run = train(
        TrainConfig(dataset="digits", dim=8, epochs=1, batch_size=256, device="cpu", runs_dir=str(tmp_path / "runs")),
        progress=False,
    )
    assert main(["measure", str(run), "--json"]) == 0
    by_run = json.loads(capsys.readouterr().out)
    from hypersphere.domains.image import load_dataset, pair_metrics
    from hypersphere.train import load_encoder

    encoder, _, data = load_encoder(run)
    expected = pair_metrics(encoder, data, seed=0, device="cpu")
    assert by_run["n"] == 450 and by_run["align"] == pytest.approx(expected["align"], rel=1e-5)
    assert by_run["uniform"] == pytest.approx(expected["uniform"], rel=1e-5)
    # the same weights as any module: module:callable on the digits dataset
    torch.save(encoder.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "my_encoders.py").write_text(
        "import torch\nfrom hypersphere.models import build_encoder\n\n\ndef digits():\n"
        "    e = build_encoder('digitsnet', 1, 8, 12)\n"
        f"    e.load_state_dict(torch.load({str(tmp_path / 'weights.pt')!r}))\n"
        "    return e\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["measure", "my_encoders:digits", "--dataset", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["align"] == pytest.approx(by_run["align"], rel=1e-6)
    assert main(["measure", "my_encoders:nope", "--dataset", "digits"]) == 2
    assert "cannot load 'my_encoders:nope'" in capsys.readouterr().err
    assert main(["measure", "my_encoders:digits"]) == 2 and "needs --dataset" in capsys.readouterr().err
    assert load_dataset("digits").val_images.shape[0] == 450
