"""Certifiers; every one returns a ``Certificate``."""

from bastion.certify.noise import NOISES, Gaussian, Laplace, Uniform, from_std
from bastion.certify.records import Certificate
from bastion.certify.run import (
    certify_dataset,
    certify_run,
    plot_certified_accuracy,
    read_rows,
    summarize,
)
from bastion.certify.sequential import certify_radius
from bastion.certify.smoothing import SmoothedClassifier, tune
from bastion.certify.stats import binomial_pvalue, cp_lower, cp_upper, two_class_bounds

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
    "certify_run",
    "cp_lower",
    "cp_upper",
    "from_std",
    "plot_certified_accuracy",
    "read_rows",
    "summarize",
    "two_class_bounds",
    "tune",
]
