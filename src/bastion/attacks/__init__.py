"""One attack engine (PGD) and its special cases; see ``pgd.py``.

``ThreatModel`` (``threat.py``) is the one description of an eps-ball and its PGD settings,
shared by training methods and evaluation; ``AttackSpec`` (``spec.py``) names an evaluation
attack in a threat model; ``evaluate.py`` runs attacks over a dataset into an
``EvalResult``. ``eot.py`` sees through pre-processing defenses: ``BPDA`` (a model wrapper),
EOT (the engine's ``eot_samples``), the judgement over draws, and ``adaptive_attack_for`` /
``default_draws``, which pick them from a defense's declarations. ``model_mode`` and
``unwrap`` live in ``bastion._torch`` and are re-exported here for convenience.
"""

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult, perturbation_norm
from bastion.attacks.eot import BPDA, adaptive_attack_for, default_draws, expected_objective
from bastion.attacks.minimal import MinimalResult, fmn, minimal_eps_by_bisection
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import ATTACK_NORMS, fgsm, pgd
from bastion.attacks.threat import ThreatModel

__all__ = [
    "ATTACK_NORMS",
    "BPDA",
    "OBJECTIVES",
    "AttackResult",
    "MinimalResult",
    "Objective",
    "ThreatModel",
    "adaptive_attack_for",
    "default_draws",
    "expected_objective",
    "fgsm",
    "fmn",
    "minimal_eps_by_bisection",
    "model_mode",
    "perturbation_norm",
    "pgd",
    "unwrap",
]
