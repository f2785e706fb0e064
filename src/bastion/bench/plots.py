"""Plots: training curves of one or several runs, and certified accuracy against radius.

Robust overfitting (Rice et al. 2020, "Overfitting in adversarially robust deep learning",
arXiv 2002.11569; the seed's "AT + Fake Data") shows as a robust *test* accuracy that peaks
and then falls while the robust *train* accuracy keeps rising. ``fit`` records both when
``EvalPlan.n_train > 0``; ``fit(..., patience=N)`` stops on it and keeps the best checkpoint.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
