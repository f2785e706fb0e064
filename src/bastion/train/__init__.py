"""Training: one loop (``fit``) and methods as small objects."""

from bastion.train.cat import CAT, CATState
from bastion.train.consistency import Consistency
from bastion.train.cure import CURE
from bastion.train.evaluation import EvalPlan, per_epoch_evaluation
from bastion.train.fat import FAT
from bastion.train.gaussian_noise import GaussianNoise, NoiseAugmentation
from bastion.train.gloro import GloRo, GloroState
from bastion.train.hkr import HingeKR
from bastion.train.loop import fit
from bastion.train.macer import MACER
from bastion.train.pgd_at import PGDAT
from bastion.train.regenerate import RegeneratedAT, RegeneratedSet
from bastion.train.registry import METHODS, build_method
from bastion.train.standard import Standard
from bastion.train.subsampling import SubSampledTraining
from bastion.train.tla import TLA
from bastion.train.trades import TRADES

__all__ = ["METHODS", "EvalPlan", "GaussianNoise", "per_epoch_evaluation", "PGDAT", "Standard",
           "build_method", "fit", "TRADES", "CURE", "TLA", "Consistency",
           "FAT", "CAT", "CATState", "RegeneratedAT", "RegeneratedSet", "MACER",
           "NoiseAugmentation", "GloRo", "GloroState", "HingeKR",
           "SubSampledTraining"]
