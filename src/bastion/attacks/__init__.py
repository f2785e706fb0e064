"""One attack engine (PGD) and its special cases; see ``pgd.py``."""

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult, perturbation_norm
from bastion.attacks.minimal import MinimalResult, fmn, minimal_eps_by_bisection
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import ATTACK_NORMS, fgsm, pgd

__all__ = [
    "ATTACK_NORMS",
    "OBJECTIVES",
    "AttackResult",
    "MinimalResult",
    "Objective",
    "fgsm",
    "fmn",
    "minimal_eps_by_bisection",
    "model_mode",
    "perturbation_norm",
    "pgd",
    "unwrap",
]
