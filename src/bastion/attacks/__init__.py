"""One attack engine (PGD) and its special cases; see ``pgd.py``."""

from bastion.attacks.core import AttackResult, perturbation_norm
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import ATTACK_NORMS, fgsm, model_mode, pgd, unwrap

__all__ = [
    "ATTACK_NORMS",
    "OBJECTIVES",
    "AttackResult",
    "Objective",
    "fgsm",
    "model_mode",
    "perturbation_norm",
    "pgd",
    "unwrap",
]
