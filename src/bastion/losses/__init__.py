"""Reusable training losses and regularisers (one algorithm per file).

The training methods in ``bastion.train`` compose these with the attack engine.
"""

from bastion.losses.consistency import js_divergence
from bastion.losses.cure import (
    DIRECTIONS,
    Direction,
    curvature_direction,
    curvature_penalty,
    input_gradient,
    per_example_ce,
)
from bastion.losses.gloro import (
    bottom_logit,
    gloro_logits,
    gloro_predict,
    topk_certified,
    topk_margins,
    topk_vra,
)
from bastion.losses.hinge_kr import hinge_kr_loss, hinge_term, kr_term, multiclass_hinge
from bastion.losses.macer import (
    MacerTerms,
    macer_loss,
    normal_icdf,
    soft_radius,
    soft_smoothed_probs,
)
from bastion.losses.tla import (
    HardNegatives,
    angular_distance,
    embedding_norm_penalty,
    hardest_negatives,
    pairwise_angular_distance,
    triplet_loss,
)
from bastion.losses.trades import trades_kl, trades_loss

__all__ = [
    "DIRECTIONS",
    "Direction",
    "HardNegatives",
    "MacerTerms",
    "angular_distance",
    "bottom_logit",
    "gloro_logits",
    "gloro_predict",
    "hinge_kr_loss",
    "hinge_term",
    "kr_term",
    "multiclass_hinge",
    "topk_certified",
    "topk_margins",
    "topk_vra",
    "curvature_direction",
    "curvature_penalty",
    "embedding_norm_penalty",
    "hardest_negatives",
    "input_gradient",
    "js_divergence",
    "macer_loss",
    "normal_icdf",
    "pairwise_angular_distance",
    "per_example_ce",
    "soft_radius",
    "soft_smoothed_probs",
    "trades_kl",
    "trades_loss",
    "triplet_loss",
]
