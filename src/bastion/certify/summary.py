"""Summaries of a certification's rows: certified accuracy at radii, ACR, abstentions.

Certified accuracy at radius r (seed eq. 4, Cohen et al. 2019, arXiv 1902.02918, Section 4)
is the fraction of all certified inputs that are certified correctly with radius >= r; the
average certified radius (ACR, eq. 6, Zhai et al. 2020, arXiv 2001.02378) is the mean of the
radius over correctly certified inputs, 0 elsewhere. Both come from ``bastion.metrics`` on
the ``Certificate`` that ``rows_to_certificate`` builds, the same for every certifier;
``bench.plots.plot_certified_accuracy`` draws certified accuracy against radius.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from bastion.errors import InputError
from bastion.metrics import average_certified_radius, certified_accuracy
from bastion.records import Certificate, CertificationRow
from bastion.types import CertNorm


def rows_to_certificate(
    rows: Sequence[CertificationRow], norm: CertNorm = "l2", method: str = "smoothing"
) -> Certificate:
    """The rows as a ``Certificate`` carrying their ``labels`` and dataset ``index``.

    Args:
        rows: rows of a certification file (``rowstore.read_rows``), in any order.
        norm: the norm of their radii (the file header's ``"norm"``).
        method: the certifier's name to record.
    """
    if not rows:
        raise InputError("no rows to summarise")
    return Certificate(
        prediction=torch.tensor([r.prediction for r in rows], dtype=torch.int64),
        radius=torch.tensor([r.radius for r in rows], dtype=torch.float64),
        abstained=torch.tensor([r.abstained for r in rows], dtype=torch.bool),
        norm=norm,
        method=method,
        labels=torch.tensor([r.label for r in rows], dtype=torch.int64),
        index=torch.tensor([r.index for r in rows], dtype=torch.int64),
    )


def default_radii(rows: Sequence[CertificationRow], step: float = 0.25) -> list[float]:
    """0, step, 2 step, ... up to the largest radius in ``rows`` (at least up to 1.0)."""
    top = max([1.0] + [float(r.radius) for r in rows])
    return [round(i * step, 10) for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def summarize(
    rows: Sequence[CertificationRow], radii: Sequence[float] | None = None,
    norm: CertNorm = "l2",
) -> dict[str, Any]:
    """Certified accuracy at ``radii`` and the ACR of a certification's rows.

    Args:
        rows: the rows (at least one).
        radii: radii in ``norm`` ([0, 1] pixel units); default ``default_radii(rows)``.
        norm: the norm of the radii.

    Returns:
        ``{"n", "radii", "certified_accuracy" (list, one per radius), "acr",
        "abstain_rate", "seconds" (total wall time), "seconds_per_input"}``.
    """
    radii = default_radii(rows) if radii is None else [float(r) for r in radii]
    cert = rows_to_certificate(rows, norm)
    labels = cert.labels
    acc = certified_accuracy(cert, labels, radii)
    seconds = float(sum(float(r.seconds) for r in rows))
    return {
        "n": len(rows),
        "radii": radii,
        "certified_accuracy": [float(a) for a in acc],
        "acr": average_certified_radius(cert, labels),
        "abstain_rate": float(cert.abstained.double().mean()),
        "seconds": seconds,
        "seconds_per_input": seconds / len(rows),
    }


__all__ = ["default_radii", "rows_to_certificate", "summarize"]
