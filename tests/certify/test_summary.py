"""Summaries of certification rows: certified accuracy, ACR and radii, by hand."""

from __future__ import annotations

import pytest
import torch

from bastion.certify.summary import default_radii, rows_to_certificate, summarize
from bastion.records import CertificationRow


def row(index: int, label: int, prediction: int, radius: float, abstained: bool = False,
        seconds: float = 1.0) -> CertificationRow:
    return CertificationRow(index=index, label=label, prediction=prediction, radius=radius,
                            abstained=abstained, seconds=seconds)


ROWS = [row(0, 1, 1, 0.6), row(1, 2, 2, 0.2), row(2, 0, 3, 0.9), row(3, 0, 0, 0.0, True)]


def test_summarize_by_hand() -> None:
    s = summarize(ROWS, radii=[0.0, 0.25, 0.5, 0.75])
    assert s["certified_accuracy"] == [0.5, 0.25, 0.25, 0.0]
    assert s["acr"] == pytest.approx((0.6 + 0.2) / 4)
    assert s["abstain_rate"] == 0.25 and s["n"] == 4 and s["seconds"] == 4.0
    assert s["seconds_per_input"] == 1.0
    assert summarize(ROWS)["radii"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii(ROWS) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii([row(0, 0, 0, 1.6)]) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_rows_to_certificate_carries_labels_and_index() -> None:
    cert = rows_to_certificate(ROWS[::-1], norm="l1", method="smoothing-laplace")
    assert cert.norm == "l1" and cert.method == "smoothing-laplace" and len(cert) == 4
    assert torch.equal(cert.index, torch.tensor([3, 2, 1, 0]))
    assert torch.equal(cert.labels, torch.tensor([0, 0, 2, 1]))
    assert cert.abstained.tolist() == [True, False, False, False]
    assert cert.radius.dtype == torch.float64
    with pytest.raises(ValueError, match="no rows"):
        rows_to_certificate([])
