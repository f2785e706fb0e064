"""One attack engine (PGD) and its special cases; see ``pgd.py``.

``ThreatModel`` (``threat.py``) is the one description of an eps-ball and its PGD settings,
shared by training methods and evaluation; ``AttackSpec`` (``spec.py``) names an evaluation
attack in a threat model; ``evaluate.py`` runs attacks over a dataset into an
``EvalResult``. ``model_mode`` and ``unwrap`` live in ``bastion._torch`` and are re-exported
here for convenience.
"""

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult, perturbation_norm
from bastion.attacks.minimal import MinimalResult, fmn, minimal_eps_by_bisection
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import ATTACK_NORMS, fgsm, pgd
from bastion.attacks.threat import ThreatModel

__all__ = [
    "ATTACK_NORMS",
    "OBJECTIVES",
    "AttackResult",
    "MinimalResult",
    "Objective",
    "ThreatModel",
    "fgsm",
    "fmn",
    "minimal_eps_by_bisection",
    "model_mode",
    "perturbation_norm",
    "pgd",
    "unwrap",
]
