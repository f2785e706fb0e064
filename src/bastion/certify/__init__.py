"""Certifiers and the dataset pipeline; every certifier returns a ``Certificate``.

- ``smoothing``: randomized smoothing's PREDICT and CERTIFY (``SmoothedClassifier``) and
  their dataset certifiers; ``sequential``: the fixed-radius sequential test;
- ``votes``: Monte Carlo vote counting over a ``Randomization``; ``forward``: fast forward
  passes (layout, chunk size, bf16); ``stats``: binomial bounds and tests;
- ``pipeline``: ``certify_dataset`` over any ``Certifier`` (resumable, sharded);
  ``rowstore``: its JSONL file; ``summary``: certified accuracy and ACR of rows;
- ``registry``: ``CERTIFIERS`` by name, ``certify_smoothing``; ``config``: ``CertifyConfig``.
"""

from bastion.certify.config import CertifyConfig
from bastion.certify.forward import ForwardPlan, tune
from bastion.certify.pipeline import Certifier, certify_dataset, input_seed, selected_indices
from bastion.certify.registry import CERTIFIERS, certify_smoothing, smoothing_certifier
from bastion.certify.rowstore import RowStore, merge_shards, read_header, read_rows, shard_path
from bastion.certify.sequential import certify_radius
from bastion.certify.smoothing import SmoothedClassifier
from bastion.certify.smoothing_certifiers import (
    CohenCertifier,
    PredictCertifier,
    SequentialCertifier,
)
from bastion.certify.stats import (
    TwoClassBounds,
    binomial_pvalue,
    cp_lower,
    cp_upper,
    two_class_bounds,
)
from bastion.certify.summary import default_radii, rows_to_certificate, summarize
from bastion.certify.votes import AdditiveNoise, Randomization, VoteCounter
from bastion.noise import NOISES, Gaussian, Laplace, Uniform, from_std
from bastion.records import Certificate, CertificationRow

__all__ = [
    "CERTIFIERS",
    "NOISES",
    "AdditiveNoise",
    "Certificate",
    "CertificationRow",
    "Certifier",
    "CertifyConfig",
    "CohenCertifier",
    "ForwardPlan",
    "Gaussian",
    "Laplace",
    "PredictCertifier",
    "Randomization",
    "RowStore",
    "SequentialCertifier",
    "SmoothedClassifier",
    "TwoClassBounds",
    "Uniform",
    "VoteCounter",
    "binomial_pvalue",
    "certify_dataset",
    "certify_radius",
    "certify_smoothing",
    "cp_lower",
    "cp_upper",
    "default_radii",
    "from_std",
    "input_seed",
    "merge_shards",
    "read_header",
    "read_rows",
    "rows_to_certificate",
    "selected_indices",
    "shard_path",
    "smoothing_certifier",
    "summarize",
    "tune",
    "two_class_bounds",
]
