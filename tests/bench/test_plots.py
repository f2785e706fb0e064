"""Training-curve plots: a valid PNG, written atomically, for one run or several."""

from __future__ import annotations

import struct

import pytest

from bastion.bench.plots import plot_history
from bastion.records import History

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
