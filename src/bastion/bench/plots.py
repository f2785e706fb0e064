"""Plots: training curves, certified and robust accuracy against radius, adversarial images.

Every plot is a ``matplotlib.figure.Figure`` drawn with the Agg backend (never pyplot's
global state). ``plot_history`` and ``plot_certified_accuracy`` write a PNG and return its
path (``history_figure`` / ``certified_accuracy_figure`` give the figure itself);
``plot_robust_accuracy_curve`` and ``plot_adversarial_grid`` return the figure and also
write it when given a ``path``. ``png_bytes`` renders any of them; PNG files are written
atomically (``bastion.records.io.atomic_write_bytes``).

Robust overfitting (Rice et al. 2020, "Overfitting in adversarially robust deep learning",
arXiv 2002.11569; the seed's "AT + Fake Data") shows as a robust *test* accuracy that peaks
and then falls while the robust *train* accuracy keeps rising. ``fit`` records both when
``EvalPlan.n_train > 0``; ``fit(..., patience=N)`` stops on it and keeps the best checkpoint.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bastion.bench.examples import Examples
from bastion.errors import InputError, InputTypeError
from bastion.metrics import certified_accuracy
from bastion.records import Certificate, History
from bastion.records.io import atomic_write_bytes

log = logging.getLogger(__name__)

_LABELS = {
    "train_robust_acc": "train robust",
    "test_robust_acc": "test robust",
    "train_clean_acc": "train clean",
    "test_clean_acc": "test clean",
}
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_NORM_TITLES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
_WRONG = "#c62828"  # red: a wrong prediction
_RIGHT = "#1b1b1b"


def png_bytes(fig: Figure, *, dpi: float | None = None) -> bytes:
    """``fig`` rendered as PNG bytes (``dpi`` None: the figure's own resolution)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure" if dpi is None else dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, *, dpi: float | None = None) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (folders are created); returns the path."""
    out = Path(path)
    atomic_write_bytes(out, png_bytes(fig, dpi=dpi))
    return out


def _as_runs(histories: Any) -> dict[str, list[dict[str, Any]]]:
    """``{label: epoch records}`` from a History, a mapping of them or a sequence of them."""

    def records(h: Any) -> list[dict[str, Any]]:
        if isinstance(h, History):
            return h.to_dicts()
        epochs = h
        if not isinstance(epochs, Sequence) or not all(isinstance(e, Mapping) for e in epochs):
            raise InputTypeError(
                "expected a History (or a list of per-epoch dicts), got "
                f"{type(h).__name__}"
            )
        return list(epochs)

    if isinstance(histories, Mapping):
        return {str(k): records(v) for k, v in histories.items()}
    if hasattr(histories, "epochs"):
        return {"run": records(histories)}
    if isinstance(histories, Sequence) and not isinstance(histories, str | bytes):
        if histories and all(isinstance(e, Mapping) for e in histories):
            return {"run": records(histories)}
        return {f"run {i}": records(h) for i, h in enumerate(histories)}
    raise InputTypeError(f"cannot plot {type(histories).__name__}; pass a History, a list of "
                    "them or a {label: History} mapping")


def _panel_title(kind: str, keys: list[str]) -> str:
    """"robust train vs test", "clean test", ...: names only the splits actually drawn."""
    splits = [s for s in ("train", "test") if any(k.startswith(f"{s}_") for k in keys)]
    what = " vs ".join(splits) if splits else ", ".join(_LABELS.get(k, k) for k in keys)
    return f"{kind} {what}".strip() if kind else f"accuracy: {what}"


def plot_history(
    history_or_histories: Any,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("train_robust_acc", "test_robust_acc"),
    *,
    clean_metrics: Sequence[str] = ("train_clean_acc", "test_clean_acc"),
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Plot per-epoch accuracies of one or several runs and write a PNG atomically.

    The left panel draws ``metrics`` (default train and test robust accuracy), the right
    panel ``clean_metrics`` when any run has them (pass ``()`` to omit it). One colour per
    run, one line style per metric; a marker shows each run's best test robust accuracy
    (the checkpoint ``fit(..., patience=...)`` keeps). A gap that opens between a rising
    train curve and a falling test curve is robust overfitting.

    Args:
        history_or_histories: a ``History``, a sequence of them (labelled "run 0", ...), or
            a ``{label: History}`` mapping; a plain list of epoch dicts also works.
        path: the PNG file to write (folders are created).
        metrics: keys of the epoch records for the left panel.
        clean_metrics: keys for the right panel.
        title: figure title.
        dpi: resolution.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> from bastion.records import History
        >>> h = History.of([{"epoch": 1, "train_robust_acc": 0.3, "test_robust_acc": 0.3}])
        >>> import tempfile; p = plot_history(h, tempfile.mkdtemp() + "/h.png")
        >>> p.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    fig = history_figure(history_or_histories, metrics, clean_metrics=clean_metrics,
                         title=title)
    return save_png(fig, path, dpi=dpi)


def history_figure(
    history_or_histories: Any,
    metrics: Sequence[str] = ("train_robust_acc", "test_robust_acc"),
    *,
    clean_metrics: Sequence[str] = ("train_clean_acc", "test_clean_acc"),
    title: str | None = None,
) -> Figure:
    """The figure of ``plot_history`` (same arguments, less ``path`` and ``dpi``)."""
    runs = _as_runs(history_or_histories)
    if not runs or not any(runs.values()):
        raise InputError("nothing to plot: the histories have no epochs")
    metrics, clean_metrics = list(metrics), list(clean_metrics)
    if not metrics:
        raise InputError("metrics must name at least one key, e.g. 'test_robust_acc'")

    def present(keys: list[str]) -> list[str]:
        return [k for k in keys if any(e.get(k) is not None for r in runs.values() for e in r)]

    left, right = present(metrics), present(clean_metrics)
    if not left:
        known = sorted({k for r in runs.values() for e in r for k in e})
        raise InputError(f"none of {metrics} is in the histories; available keys: {known}")
    missing = [k for k in metrics if k not in left]
    if missing:
        log.warning("not plotted, absent from every run: %s", missing)

    panels = [("robust accuracy" if "robust" in " ".join(left) else "accuracy", left)]
    if right:
        panels.append(("clean accuracy", right))
    many = len(runs) * max(len(left), len(right)) > 4  # legends go beside the axes
    fig = Figure(figsize=((8.6 if many else 6.4) * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (name, keys) in zip(axes, panels, strict=True):
        for colour, (label, recs) in zip(colours, runs.items(), strict=True):
            epochs = [e.get("epoch", i + 1) for i, e in enumerate(recs)]
            for style, key in zip(_STYLES * (len(keys) // len(_STYLES) + 1), keys,
                                  strict=False):
                pts = [(t, e[key]) for t, e in zip(epochs, recs, strict=True)
                       if e.get(key) is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                tag = _LABELS.get(key, key)
                ax.plot(xs, ys, style, color=colour, marker="o", markersize=3,
                        label=f"{label}: {tag}" if len(runs) > 1 else tag)
                if key == "test_robust_acc":
                    best = max(range(len(ys)), key=lambda i: ys[i])
                    ax.plot(xs[best], ys[best], "*", color=colour, markersize=12,
                            markeredgecolor="black", zorder=5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        last = max((len(r) for r in runs.values()), default=1)
        if last <= 1:  # one epoch: an integer axis around it, not +-0.05 of autoscale
            ax.set_xlim(0.5, 1.5)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if many:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize="small")
    star = " (★ best test)" if "test_robust_acc" in left else ""
    axes[0].set_title(_panel_title("robust" if "robust" in " ".join(left) else "", left) + star)
    if len(panels) > 1:
        axes[1].set_title(_panel_title("clean", right))
    if title:
        fig.suptitle(title)
    return fig


def plot_certified_accuracy(
    runs: Mapping[str, Certificate],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Plot certified accuracy against radius, one curve per certificate, to a PNG.

    Certified accuracy at r (seed eq. 4) is ``bastion.metrics.certified_accuracy``, the
    same for every certifier; the curve is drawn as a step function on a fine grid.

    Args:
        runs: label -> ``Certificate`` with ``labels`` (e.g. ``certify.rows_to_certificate``).
        path: the PNG file (written atomically).
        title: optional title.

    Returns:
        The path written.
    """
    fig = certified_accuracy_figure(runs, title=title)
    return save_png(fig, path)


def certified_accuracy_figure(
    runs: Mapping[str, Certificate], *, title: str | None = None
) -> Figure:
    """The figure of ``plot_certified_accuracy`` (same arguments, less ``path``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not runs:
        raise InputError("nothing to plot: runs is empty")
    norms = {c.norm for c in runs.values()}
    if len(norms) > 1:
        raise InputError(f"certificates of several norms {sorted(norms)} on one plot")
    norm = norms.pop()
    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = max(float(c.radius.max()) if len(c) else 0.0 for c in runs.values())
    top = max(top * 1.05, 0.25)
    grid = torch.linspace(0.0, top, 400, dtype=torch.float64)
    for label, cert in runs.items():
        acc = certified_accuracy(cert, None, grid)
        ax.step(grid.numpy(), acc.numpy(), where="post", label=f"{label}, {len(cert)} inputs")
    unit = "elements" if norm == "l0" else "[0, 1] pixel units"
    ax.set_xlabel(f"radius ({norm}, {unit})")
    ax.set_ylabel("certified accuracy")
    ax.set_xlim(0.0, float(top))
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_robust_accuracy_curve(
    curves: Mapping[str, Mapping[float, float]],
    *,
    norm: str,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Robust accuracy against the radius eps, one line with markers per defense.

    Args:
        curves: defense name -> ``{eps: robust accuracy}``, eps finite and >= 0 in [0, 1]
            pixel units of ``norm``, accuracy in [0, 1] (e.g.
            ``EvalResult.robust_accuracy_curve(norm=...)``); drawn in percent.
        norm: the norm of every curve (``"linf"``, ``"l2"``, ``"l1"``), for the axis label.
        path: when given, the PNG is also written there (atomically).
        title: the axes title; default "robust accuracy vs eps (<norm>)".

    Returns:
        The figure (Agg, not attached to pyplot).

    Raises:
        InputError: no curves, an empty curve, a negative or non-finite eps, an accuracy
            outside [0, 1].
    """
    if not curves:
        raise InputError("nothing to plot: curves is empty")
    clean: dict[str, list[tuple[float, float]]] = {}
    for label, curve in curves.items():
        if not isinstance(curve, Mapping) or not curve:
            raise InputError(f"the curve of {label!r} must be a non-empty {{eps: accuracy}} "
                             "mapping")
        pts = []
        for e, a in curve.items():
            e, a = float(e), float(a)
            if not math.isfinite(e) or e < 0:
                raise InputError(f"{label!r}: eps must be finite and >= 0, got {e}")
            if not 0.0 <= a <= 1.0:
                raise InputError(f"{label!r}: robust accuracy is in [0, 1], got {a} at eps {e:g}")
            pts.append((e, a))
        clean[str(label)] = sorted(pts)
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    many = len(clean) > 6
    for i, (label, pts) in enumerate(clean.items()):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, [100.0 * y for y in ys], _STYLES[(i // 10) % len(_STYLES)],
                color=f"C{i % 10}", marker=_MARKERS[i % len(_MARKERS)],
                markersize=5 if len(xs) <= 15 else 2.5, label=label)  # dense: minimal attack
    top = max(e for pts in clean.values() for e, _ in pts)
    top = top if top > 0 else 1.0
    ax.set_xlim(-0.02 * top, top * 1.05)  # a margin so markers at eps 0 show in full
    ax.set_ylim(-2.0, 102.0)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"eps ({norm}, [0, 1] pixel units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"robust accuracy vs eps ({_NORM_TITLES.get(norm, norm)})")
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small", loc="upper right")
    if path is not None:
        save_png(fig, path)
    return fig


def _amplification(delta: torch.Tensor) -> float:
    """The factor that stretches ``delta`` (pixel units) to fill [-0.5, 0.5] (1 if zero)."""
    m = float(delta.abs().max()) if delta.numel() else 0.0
    return 0.5 / m if m > 0 else 1.0


def _show(ax: Any, img: torch.Tensor) -> None:
    """Draw a [C, H, W] image in [0, 1] (grey for one channel) without ticks."""
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img[:3].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_adversarial_grid(ex: Examples, path: str | os.PathLike | None = None) -> Figure:
    """Clean images, their adversarial versions and the perturbations, one column each.

    Rows: the clean image; the adversarial image; the perturbation ``adv - clean``
    amplified by one factor for the whole row so that its largest entry reaches the edge
    of the visible range (grey 0.5 is no change; the factor is in the row title). Above
    each column: the true label, the clean prediction and the adversarial prediction, the
    predictions in red when wrong.

    Args:
        ex: the examples (``bastion.bench.examples.adversarial_examples``).
        path: when given, the PNG is also written there (atomically).

    Returns:
        The figure (Agg, not attached to pyplot).
    """
    if not isinstance(ex, Examples):
        raise InputTypeError(f"plot_adversarial_grid takes an Examples record, got "
                             f"{type(ex).__name__}")
    k = len(ex)
    delta = ex.perturbation
    amp = _amplification(delta)
    shown = (0.5 + amp * delta).clamp(0.0, 1.0)
    col_w, row_h, left, head, foot = 1.45, 1.45, 1.35, 0.95, 0.35
    width, height = left + col_w * k + 0.1, head + row_h * 3 + foot
    fig = Figure(figsize=(width, height), dpi=110)
    gs = fig.add_gridspec(3, k, left=left / width, right=1 - 0.1 / width,
                          top=1 - head / height, bottom=foot / height,
                          wspace=0.08, hspace=0.08)
    eps = "" if math.isinf(ex.eps) else f", eps = {ex.eps:.4g}"
    norm = _NORM_TITLES.get(ex.norm, ex.norm)
    ball = norm if math.isinf(ex.eps) else f"{norm}\nε = {ex.eps:.4g}"
    rows = ("clean", f"adversarial\n{ex.attack}\n{ball}",
            f"perturbation\n×{amp:.3g}\n(grey = 0)")
    for j in range(k):
        axes = [fig.add_subplot(gs[i, j]) for i in range(3)]
        _show(axes[0], ex.clean[j])
        _show(axes[1], ex.adversarial[j])
        _show(axes[2], shown[j])
        if j == 0:
            for ax, name in zip(axes, rows, strict=True):
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10,
                              labelpad=6)
        y, p, q = int(ex.labels[j]), int(ex.clean_pred[j]), int(ex.adv_pred[j])
        lines = ((f"true: {ex.name_of(y)}", _RIGHT, "bold"),
                 (f"clean: {ex.name_of(p)}", _WRONG if p != y else _RIGHT, "normal"),
                 (f"adv: {ex.name_of(q)}", _WRONG if q != y else _RIGHT, "normal"))
        for i, (text, colour, weight) in enumerate(lines):
            axes[0].text(0.5, 1.04 + 0.17 * (2 - i), text, transform=axes[0].transAxes,
                         ha="center", va="bottom", fontsize=9, color=colour,
                         fontweight=weight, clip_on=False)
    fig.text(0.5, 0.2 / height, f"{ex.attack} ({ex.norm}{eps}); red: wrong prediction",
             ha="center", va="center", fontsize=8, color="#555555")
    if path is not None:
        save_png(fig, path)
    return fig
