"""A few clean inputs next to their adversarial counterparts, for the report's image grid.

``adversarial_examples`` attacks the first ``k`` points of a batch with an ``AttackSpec``
and returns an ``Examples`` record; ``save_examples`` / ``load_examples`` keep it as one
safetensors file (the tensors, plus the attack, norm, eps and class names as JSON in the
safetensors metadata), written atomically.

The convention of ``bastion.records.EvalResult`` holds here too: a point the model
already misclassifies when clean is not attacked (its adversarial image is the clean one),
so the grid agrees with the robust accuracy the records count.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion._torch import model_mode
from bastion.attacks.core import perturbation_norm
from bastion.attacks.spec import AttackSpec
from bastion.errors import CheckpointError, InputError, InputTypeError, MissingFileError
from bastion.records.io import atomic_write_bytes
from bastion.types import NORMS

__all__ = ["Examples", "adversarial_examples", "load_examples", "save_examples"]

_FORMAT = "bastion.examples/1"
_TENSORS = ("clean", "adversarial", "labels", "clean_pred", "adv_pred")
# slack on ``||adv - clean|| <= eps`` for the float32 rounding of the projection
_TOL_REL = 1e-5
_TOL_ABS = 1e-5


def _images(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"Examples.{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise InputTypeError(f"Examples.{name} must be a floating tensor, got {t.dtype}")
    if t.dim() != 4 or t.shape[0] < 1:
        raise InputError(f"Examples.{name} must have shape [k, C, H, W] with k >= 1, got "
                         f"{list(t.shape)}")
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all() or t.min() < 0.0 or t.max() > 1.0:
        raise InputError(f"Examples.{name} must be finite and in [0, 1] (pixel units), got "
                         f"values in [{float(t.min()):.4g}, {float(t.max()):.4g}]")
    return t.contiguous()


def _classes(t: Any, name: str, k: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"Examples.{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise InputTypeError(f"Examples.{name} must have dtype torch.int64, got {t.dtype}")
    if tuple(t.shape) != (k,):
        raise InputError(f"Examples.{name} must have shape [{k}] (one per image), got "
                         f"{list(t.shape)}")
    if (t < 0).any():
        raise InputError(f"Examples.{name} must be class indices >= 0")
    return t.detach().cpu().contiguous()


@dataclass(frozen=True, eq=False)
class Examples:
    """Clean inputs, their adversarial versions and the model's predictions on both.

    Args:
        clean: float [k, C, H, W] in [0, 1] pixel units (stored as float32 on the CPU).
        adversarial: float [k, C, H, W] in [0, 1], within ``eps`` of ``clean`` in ``norm``
            (up to a relative 1e-5 and absolute 1e-5 for float32 rounding).
        labels: int64 [k], true classes.
        clean_pred: int64 [k], predictions on ``clean``.
        adv_pred: int64 [k], predictions on ``adversarial``.
        attack: the attack's name (``"pgd"``, ``"autoattack"``, ...).
        norm: the threat model's norm, one of ``bastion.types.NORMS``.
        eps: the radius in [0, 1] pixel units (``math.inf`` for a minimal attack).
        class_names: one name per class (more than every index used), or None.

    Raises:
        InputError / InputTypeError: shapes that disagree, values outside [0, 1], wrong
            dtypes, an unknown norm, a negative eps, a perturbation larger than eps.
    """

    clean: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    attack: str
    norm: str
    eps: float
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        clean = _images(self.clean, "clean")
        adv = _images(self.adversarial, "adversarial")
        if adv.shape != clean.shape:
            raise InputError(f"Examples.adversarial has shape {list(adv.shape)}, clean has "
                             f"{list(clean.shape)}; they must agree")
        k = clean.shape[0]
        set_(self, "clean", clean)
        set_(self, "adversarial", adv)
        for name in ("labels", "clean_pred", "adv_pred"):
            set_(self, name, _classes(getattr(self, name), name, k))
        if not isinstance(self.attack, str) or not self.attack:
            raise InputError("Examples.attack must be a non-empty name")
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or math.isnan(eps) \
                or eps < 0:
            raise InputError(f"Examples.eps must be a number >= 0 (pixel units), got {eps!r}")
        set_(self, "eps", float(eps))
        if math.isfinite(self.eps):
            size = perturbation_norm((adv - clean).double(), self.norm)  # type: ignore[arg-type]
            worst = float(size.max())
            if worst > self.eps * (1 + _TOL_REL) + _TOL_ABS:
                raise InputError(f"an adversarial image lies {worst:.6g} from its clean image "
                                 f"in {self.norm}, beyond eps {self.eps:g}")
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not isinstance(names, Sequence) \
                    or not all(isinstance(n, str) for n in names):
                raise InputTypeError("Examples.class_names must be a list of strings or None")
            top = int(torch.cat([self.labels, self.clean_pred, self.adv_pred]).max())
            if len(names) <= top:
                raise InputError(f"Examples.class_names has {len(names)} names but class "
                                 f"index {top} is used")
            set_(self, "class_names", list(names))

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def name_of(self, cls: int) -> str:
        """The name of class index ``cls`` (its number when there are no class names)."""
        return self.class_names[cls] if self.class_names is not None else str(cls)

    @property
    def perturbation(self) -> torch.Tensor:
        """float32 [k, C, H, W]: ``adversarial - clean`` (pixel units)."""
        return self.adversarial - self.clean

    def metadata(self) -> dict[str, Any]:
        """The non-tensor fields as JSON-safe data (``eps`` inf as the string "inf")."""
        return {"attack": self.attack, "norm": self.norm,
                "eps": self.eps if math.isfinite(self.eps) else "inf",
                "class_names": self.class_names}


def save_examples(path: str | os.PathLike[str], ex: Examples) -> Path:
    """Write ``ex`` to one safetensors file, atomically; returns the path.

    The five tensors are stored under their field names; the attack, norm, eps and class
    names go in the safetensors metadata under ``"bastion"`` as JSON.
    """
    from safetensors.torch import save

    if not isinstance(ex, Examples):
        raise InputTypeError(f"save_examples takes an Examples record, got {type(ex).__name__}")
    tensors = {name: getattr(ex, name).contiguous() for name in _TENSORS}
    meta = {"format": _FORMAT, "bastion": json.dumps(ex.metadata())}
    out = Path(path)
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out


def load_examples(path: str | os.PathLike[str]) -> Examples:
    """Read an ``Examples`` record written by ``save_examples``.

    Raises:
        MissingFileError: no file at ``path``.
        CheckpointError: a file that is not bastion's examples file or is corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"no examples file {str(p)!r}")
    data = p.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(p)!r} is not a readable safetensors file: {err}") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != _FORMAT or "bastion" not in meta:
        raise CheckpointError(f"{str(p)!r} is not a bastion examples file (format "
                              f"{meta.get('format')!r}, expected {_FORMAT!r})")
    missing = [n for n in _TENSORS if n not in tensors]
    if missing:
        raise CheckpointError(f"{str(p)!r} lacks the tensors {missing}")
    try:
        info = json.loads(meta["bastion"])
        eps = math.inf if info["eps"] == "inf" else info["eps"]
        return Examples(**{n: tensors[n] for n in _TENSORS}, attack=info["attack"],
                        norm=info["norm"], eps=eps, class_names=info.get("class_names"))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(p)!r} holds invalid examples: {err}") from None


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


def adversarial_examples(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack_spec: AttackSpec,
    k: int = 8,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> Examples:
    """Attack the first ``k`` points of ``(images, labels)`` and record them.

    The model runs in eval mode (every sub-module's mode is restored afterwards), with
    ``torch.no_grad`` for the predictions; the attack is ``attack_spec.run(model, x, y,
    generator=torch.Generator(device).manual_seed(seed))`` on the model's device. A point
    misclassified when clean keeps its clean image as the adversarial one (the convention
    of ``EvalResult``).

    Args:
        model: a classifier returning logits [n, K].
        images: float [N, C, H, W] in [0, 1] pixel units.
        labels: int64 [N].
        attack_spec: the evaluation attack (its name, norm and eps go in the record).
        k: how many points (the first ``min(k, N)``), >= 1.
        seed: the attack's random seed.
        class_names: one name per class, or None.

    Returns:
        An ``Examples`` record on the CPU.
    """
    if not isinstance(attack_spec, AttackSpec):
        raise InputTypeError(f"attack_spec must be an AttackSpec, got {type(attack_spec).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a tensor of shape [N, C, H, W], got {got}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 \
            or labels.shape[0] != images.shape[0]:
        raise InputError(f"labels must be a tensor of shape [{images.shape[0]}] (one per "
                         "image)")
    if images.shape[0] < 1:
        raise InputError("images is empty")
    device = _device_of(model, images.device)
    x = images[:k].detach().to(device, torch.float32)
    y = labels[:k].detach().to(device, torch.int64)
    with model_mode(model, False):
        with torch.no_grad():
            clean_pred = model(x).argmax(dim=1)
        gen = torch.Generator(device).manual_seed(seed)
        x_adv = attack_spec.run(model, x, y, generator=gen).x_adv.detach()
        wrong = clean_pred != y
        x_adv = torch.where(wrong.view(-1, 1, 1, 1), x, x_adv)
        with torch.no_grad():
            adv_pred = model(x_adv).argmax(dim=1)
    adv_pred = torch.where(wrong, clean_pred, adv_pred)
    return Examples(
        clean=x.cpu(), adversarial=x_adv.cpu().clamp(0.0, 1.0), labels=y.cpu(),
        clean_pred=clean_pred.cpu(), adv_pred=adv_pred.cpu(), attack=attack_spec.name,
        norm=attack_spec.norm, eps=attack_spec.eps,
        class_names=None if class_names is None else list(class_names),
    )
