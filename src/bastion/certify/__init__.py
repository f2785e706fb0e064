"""Certifiers; every one returns a ``Certificate``."""

from bastion.certify.run import (
    certify_dataset,
    read_rows,
    summarize,
)
from bastion.certify.sequential import certify_radius
from bastion.certify.smoothing import SmoothedClassifier, tune
from bastion.certify.stats import binomial_pvalue, cp_lower, cp_upper, two_class_bounds
from bastion.noise import NOISES, Gaussian, Laplace, Uniform, from_std
from bastion.records import Certificate

__all__ = [
    "NOISES",
    "Certificate",
    "Gaussian",
    "Laplace",
    "SmoothedClassifier",
    "Uniform",
    "binomial_pvalue",
    "certify_dataset",
    "certify_radius",
    "cp_lower",
    "cp_upper",
    "from_std",
    "read_rows",
    "summarize",
    "two_class_bounds",
    "tune",
]
