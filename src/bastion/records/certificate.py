"""The one record every certifier returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.records.io import record_from_dict, record_to_dict
from bastion.types import CERT_NORMS, CertNorm


@dataclass(frozen=True)
class Certificate:
    """Per-example certified predictions.

    The guarantee a certifier states with it: for every example i with
    ``abstained[i] == False``, the (smoothed, Lipschitz, ...) classifier predicts
    ``prediction[i]`` at every point within ``radius[i]`` of the input in ``norm``
    (for probabilistic certifiers, with probability at least 1 - alpha over the
    certification's randomness). An abstaining example has radius 0 and certifies nothing.

    Args:
        prediction: int64 [N], the certified class (meaningless where abstained).
        radius: float64 [N] >= 0, in [0, 1] pixel units of ``norm`` (for ``"l0"``: a number
            of modified elements); 0 where abstained.
        abstained: bool [N].
        norm: the norm of the radius, ``"l2"``, ``"linf"``, ``"l1"`` or ``"l0"``.
        method: the certifier's name (e.g. ``"smoothing-gaussian"``).
        params: the certifier's parameters (sigma, n, alpha, ...), JSON-safe.
        extra: per-example auxiliary tensors for auditing (e.g. raw counts).
        labels: int64 [N], the true labels when the certificate is about a labelled set
            (``bastion.metrics`` uses them when no labels are passed), else None.
        index: int64 [N], dataset positions of the examples, or None.
        modality_radius: float64 [N, T] >= 0, a radius per input modality (MMCert certifies
            ``r_t`` modified elements of modality t at once), 0 where abstained; ``radius``
            is then the budget along the certified direction. None for one modality.
        modalities: the T modality names of ``modality_radius``.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    abstained: torch.Tensor
    norm: CertNorm
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    modality_radius: torch.Tensor | None = None
    modalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.prediction.shape[0]
        if self.prediction.dtype != torch.int64 or self.prediction.dim() != 1:
            raise TypeError("Certificate.prediction must be int64 of shape [N]")
        if self.radius.shape != (n,) or self.abstained.shape != (n,):
            raise ValueError("Certificate fields must all have shape [N]")
        if self.abstained.dtype != torch.bool:
            raise TypeError("Certificate.abstained must be a bool tensor")
        if self.norm not in CERT_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(CERT_NORMS)}")
        if torch.isnan(self.radius).any() or (self.radius < 0).any():
            raise ValueError("Certificate.radius must be >= 0 and not NaN")
        if (self.radius[self.abstained] != 0).any():
            raise ValueError("an abstaining example must have radius 0")
        for name in ("labels", "index"):
            t = getattr(self, name)
            if t is not None and (t.dtype != torch.int64 or t.shape != (n,)):
                raise ValueError(f"Certificate.{name} must be int64 of shape [{n}] or None")
        object.__setattr__(self, "modalities", tuple(self.modalities))
        m = self.modality_radius
        if m is None:
            if self.modalities:
                raise ValueError("modalities given without modality_radius")
            return
        if m.dim() != 2 or m.shape[0] != n or m.shape[1] != len(self.modalities):
            raise ValueError(
                f"modality_radius must have shape [{n}, {len(self.modalities)}] (one column "
                f"per name in modalities), got {tuple(m.shape)}"
            )
        if torch.isnan(m).any() or (m < 0).any() or (m[self.abstained] != 0).any():
            raise ValueError("modality_radius must be >= 0, not NaN, and 0 where abstained")

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``Certificate.from_dict`` inverts it exactly."""
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        return record_from_dict(cls, data)

    @staticmethod
    def concat(certs: list[Certificate]) -> Certificate:
        """Join certificates of consecutive chunks made with the same certifier."""
        if not certs:
            raise ValueError("nothing to concatenate")
        first = certs[0]
        for c in certs[1:]:
            if (c.norm, c.method, c.params, c.modalities) != (
                first.norm, first.method, first.params, first.modalities
            ):
                raise ValueError("can only concatenate certificates of the same certifier")
            for name in ("labels", "index", "modality_radius"):
                if (getattr(c, name) is None) != (getattr(first, name) is None):
                    raise ValueError(f"some certificates have {name} and others do not")

        def cat(name: str) -> torch.Tensor | None:
            if getattr(first, name) is None:
                return None
            return torch.cat([getattr(c, name) for c in certs])

        return Certificate(
            prediction=torch.cat([c.prediction for c in certs]),
            radius=torch.cat([c.radius for c in certs]),
            abstained=torch.cat([c.abstained for c in certs]),
            norm=first.norm,
            method=first.method,
            params=first.params,
            extra={k: torch.cat([c.extra[k] for c in certs]) for k in first.extra},
            labels=cat("labels"),
            index=cat("index"),
            modality_radius=cat("modality_radius"),
            modalities=first.modalities,
        )
