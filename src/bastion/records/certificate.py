"""The one record every certifier returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.errors import InputError, InputTypeError
from bastion.records.io import TensorRecord
from bastion.types import CERT_NORMS, CertNorm


def _check(t: Any, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"Certificate.{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise InputTypeError(f"Certificate.{name} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise InputError(f"Certificate.{name} must have shape {list(shape)}, got "
                         f"{list(t.shape)}")
    return t.detach().cpu()


def _check_radii(r: torch.Tensor, name: str, abstained: torch.Tensor, norm: str) -> None:
    if not torch.isfinite(r).all() or (r < 0).any():
        raise InputError(f"Certificate.{name} must be finite and >= 0")
    if (r[abstained] != 0).any():
        raise InputError(f"an abstaining example must have {name} 0")
    if norm == "l0" and (r != r.floor()).any():
        raise InputError(f"an l0 {name} counts modified elements; it must be a whole number")


@dataclass(frozen=True, eq=False)
class Certificate(TensorRecord):
    """Per-example certified predictions (the record behind the seed's eqs. (4)-(6)).

    The guarantee a certifier states with it: for every example i with
    ``abstained[i] == False``, the (smoothed, Lipschitz, ...) classifier predicts
    ``prediction[i]`` at every point within ``radius[i]`` of the input in ``norm``
    (for probabilistic certifiers, with probability at least 1 - alpha over the
    certification's randomness). An abstaining example has radius 0 and certifies nothing.

    Args:
        prediction: int64 [N], the certified class (meaningless where abstained).
        radius: float64 [N], finite and >= 0, in [0, 1] pixel units of ``norm`` (for
            ``"l0"``: a whole number of modified elements); 0 where abstained.
        abstained: bool [N].
        norm: the norm of the radius, ``"l2"``, ``"linf"``, ``"l1"`` or ``"l0"``.
        method: the certifier's name (e.g. ``"smoothing-gaussian"``).
        params: the certifier's parameters (sigma, n, alpha, ...), JSON-safe.
        extra: per-example auxiliary tensors for auditing (e.g. raw counts), each with N
            rows.
        labels: int64 [N], the true labels when the certificate is about a labelled set
            (``bastion.metrics`` uses them when no labels are passed), else None.
        index: int64 [N], dataset positions of the examples, or None.
        modality_radius: float64 [N, T], finite and >= 0, a radius per input modality
            (MMCert certifies ``r_t`` modified elements of modality t at once; whole numbers
            for ``"l0"``), 0 where abstained; ``radius`` is then the budget along the
            certified direction. None for one modality.
        modalities: the T modality names of ``modality_radius`` (distinct).

    Tensors are kept on the CPU.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    abstained: torch.Tensor
    norm: CertNorm
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    modality_radius: torch.Tensor | None = None
    modalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        p = self.prediction
        if not isinstance(p, torch.Tensor) or p.dtype != torch.int64 or p.dim() != 1:
            got = f"{p.dtype} {list(p.shape)}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise InputTypeError(f"Certificate.prediction must be int64 of shape [N], got {got}")
        n = p.shape[0]
        set_ = object.__setattr__
        set_(self, "prediction", p.detach().cpu())
        set_(self, "abstained", _check(self.abstained, "abstained", torch.bool, (n,)))
        set_(self, "radius", _check(self.radius, "radius", torch.float64, (n,)))
        if self.norm not in CERT_NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid: {', '.join(CERT_NORMS)}")
        if not isinstance(self.method, str) or not self.method:
            raise InputError("Certificate.method must be a non-empty name")
        _check_radii(self.radius, "radius", self.abstained, self.norm)
        for name in ("labels", "index"):
            t = getattr(self, name)
            if t is not None:
                set_(self, name, _check(t, name, torch.int64, (n,)))
        if not isinstance(self.params, Mapping) or not isinstance(self.extra, Mapping):
            raise InputTypeError("Certificate.params and Certificate.extra must be dicts")
        set_(self, "params", dict(self.params))
        extra: dict[str, torch.Tensor] = {}
        for k, v in self.extra.items():
            if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] != n:
                got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise InputError(f"Certificate.extra[{k!r}] must be a tensor with {n} rows "
                                 f"(one per example), got {got}")
            extra[str(k)] = v.detach().cpu()
        set_(self, "extra", extra)
        if isinstance(self.modalities, str):
            raise InputTypeError("Certificate.modalities must be a sequence of names, not a str")
        mods = tuple(self.modalities)
        set_(self, "modalities", mods)
        if not all(isinstance(m, str) and m for m in mods) or len(set(mods)) != len(mods):
            raise InputError(f"Certificate.modalities must be distinct names, got {mods}")
        m = self.modality_radius
        if m is None:
            if mods:
                raise InputError("modalities given without modality_radius")
            return
        if not mods:
            raise InputError("modality_radius given without modalities (one name per column)")
        if isinstance(m, torch.Tensor) and m.dim() != 2:
            raise InputError(f"modality_radius must have shape [{n}, {len(mods)}] (one column "
                             f"per name in modalities), got {list(m.shape)}")
        set_(self, "modality_radius", _check(m, "modality_radius", torch.float64,
                                             (n, len(mods))))
        _check_radii(self.modality_radius, "modality_radius", self.abstained, self.norm)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @staticmethod
    def concat(certs: Sequence[Certificate]) -> Certificate:
        """Join certificates of consecutive chunks made with the same certifier.

        The chunks must agree on norm, method, params, modalities, the keys of ``extra``,
        and whether they carry labels, index and modality radii; the result lists their
        examples in order.
        """
        if not certs:
            raise InputError("nothing to concatenate")
        first = certs[0]
        for c in certs[1:]:
            if (c.norm, c.method, c.params, c.modalities) != (
                first.norm, first.method, first.params, first.modalities
            ):
                raise InputError("can only concatenate certificates of the same certifier "
                                 "(norm, method, params and modalities must agree)")
            if set(c.extra) != set(first.extra):
                raise InputError(f"certificates with extra keys {sorted(first.extra)} and "
                                 f"{sorted(c.extra)} cannot be concatenated")
            for name in ("labels", "index", "modality_radius"):
                if (getattr(c, name) is None) != (getattr(first, name) is None):
                    raise InputError(f"some certificates have {name} and others do not")

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
