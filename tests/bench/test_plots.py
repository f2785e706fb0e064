"""Training-curve and certified-accuracy plots: a valid PNG, written atomically."""

from __future__ import annotations

import struct

import pytest
import torch

from bastion.bench.plots import plot_certified_accuracy, plot_history
from bastion.certify.summary import rows_to_certificate
from bastion.records import CertificationRow, History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _overfitting_history(peak: int = 5, epochs: int = 12, shift: float = 0.0) -> History:
    """Robust train accuracy keeps rising, robust test accuracy peaks then falls."""
    recs = []
    for t in range(1, epochs + 1):
        test = 0.3 + 0.05 * min(t, peak) - 0.02 * max(0, t - peak) + shift
        recs.append({
            "epoch": t,
            "train_robust_acc": min(0.95, 0.3 + 0.06 * t + shift),
            "test_robust_acc": test,
            "train_clean_acc": min(0.99, 0.6 + 0.035 * t),
            "test_clean_acc": 0.6 + 0.02 * min(t, 8),
        })
    return History.of(recs)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_single_history_writes_a_png(tmp_path):
    path = plot_history(_overfitting_history(), tmp_path / "sub" / "curves.png")
    data = path.read_bytes()
    w, h = _png_size(data)
    assert len(data) > 10_000 and w > 500 and h > 300
    assert data.endswith(b"IEND\xaeB`\x82")
    assert not list(path.parent.glob(".*.tmp"))


def test_several_runs_on_one_figure(tmp_path):
    runs = {"pgd-at": _overfitting_history(), "fat": _overfitting_history(peak=8, shift=-0.05),
            "cat": _overfitting_history(peak=10, epochs=10, shift=0.02)}
    one = plot_history(runs, tmp_path / "runs.png", title="Fashion-MNIST, L-inf 0.1")
    assert _png_size(one.read_bytes())[0] > 1000  # two panels side by side
    # a list of histories and the robust panel alone also work
    only = plot_history([runs["fat"], runs["cat"]], tmp_path / "list.png", clean_metrics=())
    w, _ = _png_size(only.read_bytes())
    assert 500 < w < 1000


def test_missing_keys_and_bad_input():
    h = History.of([{"epoch": 1, "test_clean_acc": 0.8}, {"epoch": 2, "test_clean_acc": 0.85}])
    with pytest.raises(ValueError, match="available keys"):
        plot_history(h, "unused.png")
    with pytest.raises(ValueError, match="no epochs"):
        plot_history(History(), "unused.png")
    with pytest.raises(TypeError, match="History"):
        plot_history(42, "unused.png")


def test_partial_metrics_and_overwrite(tmp_path):
    # only test metrics recorded (n_train = 0): still a plot; a second call replaces the file
    h = History.of([{"epoch": t, "test_robust_acc": 0.1 * t, "test_clean_acc": 0.5}
                 for t in range(1, 4)])
    p = plot_history(h, tmp_path / "c.png")
    first = p.read_bytes()
    p2 = plot_history(_overfitting_history(), tmp_path / "c.png")
    assert p2 == p and p.read_bytes() != first and p.read_bytes()[:8] == PNG_MAGIC


def test_panel_titles_name_only_the_splits_drawn():
    from bastion.bench.plots import _panel_title

    assert _panel_title("robust", ["train_robust_acc", "test_robust_acc"]) == "robust train vs test"
    assert _panel_title("robust", ["test_robust_acc"]) == "robust test"
    assert _panel_title("clean", ["test_clean_acc"]) == "clean test"
    assert _panel_title("", ["train_loss"]) == "accuracy: train"


def _fake_rows(seed: int, scale: float) -> list[CertificationRow]:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(50, generator=g) * scale
    return [CertificationRow(index=i, label=0, prediction=0,
                             radius=float(r[i]) if r[i] >= 0.05 else 0.0,
                             abstained=bool(r[i] < 0.05)) for i in range(50)]


def test_certified_accuracy_plot_writes_a_png(tmp_path):
    curves = {"sigma=0.25": rows_to_certificate(_fake_rows(0, 1.0)),
              "sigma=0.5": rows_to_certificate(_fake_rows(1, 2.0))}
    out = plot_certified_accuracy(curves, tmp_path / "plots" / "curve.png", title="test")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert not list((tmp_path / "plots").glob(".*tmp"))  # atomic write left nothing behind
    with pytest.raises(ValueError, match="several norms"):
        plot_certified_accuracy({"a": curves["sigma=0.25"],
                                 "b": rows_to_certificate(_fake_rows(2, 1.0), norm="l1")},
                                tmp_path / "mixed.png")
