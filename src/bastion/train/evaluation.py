"""The usual per-epoch evaluation of ``fit``: clean and robust accuracy on fixed points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from bastion.attacks.evaluate import evaluate_attack, predict
from bastion.attacks.spec import AttackSpec
from bastion.errors import InputError


class TensorData(Protocol):
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    """What the per-epoch evaluation measures.

    Args:
        attack: the attack for robust accuracy (None: clean accuracy only).
        n_test: number of fixed test points (the first ``n_test`` of the eval set).
        n_train: number of fixed training points for train clean/robust accuracy (0: off),
            to watch robust overfitting (Rice et al. 2020, arXiv 2002.11569).
        batch_size: evaluation batch size.
        seed: seed of the evaluation attack (the same every epoch).
    """

    attack: AttackSpec | None = None
    n_test: int = 1000
    n_train: int = 0
    batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_test", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"EvalPlan.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.n_train, int) or self.n_train < 0:
            raise InputError(f"EvalPlan.n_train must be an int >= 0, got {self.n_train!r}")


def _measure(model: nn.Module, data: TensorData, n: int, plan: EvalPlan,
             prefix: str) -> dict[str, float]:
    x, y = data.images[:n], data.labels[:n]
    if plan.attack is None:
        pred = predict(model, x.to(next(model.parameters()).device), plan.batch_size).cpu()
        return {f"{prefix}_clean_acc": float((pred == y).double().mean())}
    # fit evaluates on rank 0 only: the evaluation must not wait for the other ranks
    r = evaluate_attack(model, x, y, plan.attack, batch_size=plan.batch_size, seed=plan.seed,
                        distributed=False)
    return {f"{prefix}_clean_acc": float(r.clean_correct.double().mean()),
            f"{prefix}_robust_acc": float(r.adv_correct().double().mean())}


def per_epoch_evaluation(
    plan: EvalPlan, test_data: TensorData, train_data: TensorData | None = None
):  # -> bastion.train.loop.Evaluate
    """The ``evaluate`` callable for ``fit``: ``plan`` on ``test_data`` (and ``train_data``).

    Returns a function ``evaluate(model) -> {"test_clean_acc", "test_robust_acc",
    "train_clean_acc", "train_robust_acc"}`` (robust keys only with an attack, train keys
    only with ``plan.n_train > 0`` and ``train_data``).
    """
    if plan.n_train and train_data is None:
        raise InputError("EvalPlan.n_train > 0 needs train_data")

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = _measure(model, test_data, plan.n_test, plan, "test")
        if plan.n_train and train_data is not None:
            out.update(_measure(model, train_data, plan.n_train, plan, "train"))
        return out

    return evaluate
