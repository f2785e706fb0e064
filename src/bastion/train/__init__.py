"""Training: one loop (``fit``) and methods as small objects."""

from bastion.train.gaussian_noise import GaussianNoise
from bastion.train.loop import EvalPlan, History, fit
from bastion.train.pgd_at import PGDAT
from bastion.train.registry import METHODS, build_method
from bastion.train.standard import Standard

__all__ = ["METHODS", "EvalPlan", "GaussianNoise", "History", "PGDAT", "Standard",
           "build_method", "fit"]
