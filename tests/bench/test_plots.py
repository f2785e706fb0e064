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


# ------------------------------------------------ robust accuracy curve, adversarial grid


def test_robust_accuracy_curve_returns_a_figure_and_writes_a_png(tmp_path):
    from matplotlib.figure import Figure

    from bastion.bench.plots import plot_robust_accuracy_curve

    curves = {"pgd-at": {0.0: 0.9, 0.05: 0.6, 0.1: 0.3, 0.2: 0.05},
              "standard": {0.1: 0.0, 0.0: 0.97, 0.05: 0.2}}  # any order of eps
    fig = plot_robust_accuracy_curve(curves, norm="linf", path=tmp_path / "p" / "curve.png")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "pixel units" in ax.get_xlabel() and "%" in ax.get_ylabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"pgd-at", "standard"}
    assert list(lines["standard"].get_xdata()) == [0.0, 0.05, 0.1]  # sorted by eps
    assert list(lines["standard"].get_ydata()) == pytest.approx([97.0, 20.0, 0.0])  # percent
    assert all(line.get_marker() not in (None, "None", "") for line in lines.values())
    data = (tmp_path / "p" / "curve.png").read_bytes()
    assert _png_size(data)[0] > 500 and not list((tmp_path / "p").glob(".*tmp"))
    assert plot_robust_accuracy_curve({"a": {0.0: 1.0}}, norm="l2").axes  # no path: no file


def test_robust_accuracy_curve_rejects_bad_input():
    from bastion.bench.plots import plot_robust_accuracy_curve

    with pytest.raises(ValueError, match="empty"):
        plot_robust_accuracy_curve({}, norm="linf")
    with pytest.raises(ValueError, match="non-empty"):
        plot_robust_accuracy_curve({"a": {}}, norm="linf")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_robust_accuracy_curve({"a": {0.1: 30.0}}, norm="linf")  # percent, not fraction
    with pytest.raises(ValueError, match="finite"):
        plot_robust_accuracy_curve({"a": {float("inf"): 0.1}}, norm="linf")


def _grid_examples(k: int = 5, channels: int = 1):
    from bastion.bench.examples import Examples

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(k, channels, 8, 8, generator=g) * 0.8 + 0.1
    adv = clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * 0.04
    labels = torch.arange(k) % 3
    clean_pred = labels.clone()
    clean_pred[0] = 2  # wrong when clean
    adv_pred = (labels + 1) % 3
    adv_pred[1] = labels[1]  # survives the attack
    return Examples(clean=clean, adversarial=adv, labels=labels, clean_pred=clean_pred,
                    adv_pred=adv_pred, attack="pgd", norm="linf", eps=0.04,
                    class_names=["cat", "dog", "bird"])


def test_adversarial_grid(tmp_path):
    from matplotlib.colors import to_hex

    from bastion.bench.plots import _WRONG, plot_adversarial_grid

    ex = _grid_examples()
    fig = plot_adversarial_grid(ex, tmp_path / "grid.png")
    assert len(fig.axes) == 3 * len(ex)
    # row titles: clean, adversarial, perturbation with its amplification factor
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert ylabels[0] == "clean" and ylabels[1].startswith("adversarial")
    amp = 0.5 / float((ex.adversarial - ex.clean).abs().max())
    assert f"\u00d7{amp:.3g}" in ylabels[2]
    # column titles of the first two columns: true / clean / adv, red where wrong
    heads = [ax for ax in fig.axes if ax.texts]
    assert len(heads) == len(ex)

    def texts(ax):
        return [(t.get_text(), to_hex(t.get_color())) for t in ax.texts]

    red = to_hex(_WRONG)
    first, second = texts(heads[0]), texts(heads[1])
    assert first[0][0] == "true: cat" and first[0][1] != red
    assert first[1] == ("clean: bird", red) and first[2] == ("adv: dog", red)
    assert second[1][1] != red and second[2] == ("adv: dog", to_hex(second[1][1]))
    assert _png_size((tmp_path / "grid.png").read_bytes())[0] > 600
    # colour images and a grid without a file work too
    assert len(plot_adversarial_grid(_grid_examples(3, channels=3)).axes) == 9
    with pytest.raises(TypeError, match="Examples"):
        plot_adversarial_grid({"clean": 1})  # type: ignore[arg-type]


def test_png_helpers(tmp_path):
    from bastion.bench.plots import history_figure, png_bytes, save_png

    fig = history_figure(_overfitting_history())
    data = png_bytes(fig)
    assert data[:8] == PNG_MAGIC
    assert save_png(fig, tmp_path / "h.png").read_bytes()[:8] == PNG_MAGIC
