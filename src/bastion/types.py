"""Literal aliases shared across bastion (a leaf module: it imports nothing of bastion)."""

from __future__ import annotations

from typing import Literal

Norm = Literal["linf", "l2", "l1"]
"""A perturbation norm. Attacks support ``"linf"`` and ``"l2"``; certificates may carry ``"l1"``."""

NORMS: tuple[str, ...] = ("linf", "l2", "l1")

CertNorm = Literal["linf", "l2", "l1", "l0"]
"""The norm of a certified radius; ``"l0"`` counts modified elements (MMCert, ablation)."""

CERT_NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")
