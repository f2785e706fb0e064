"""Evaluation harness and its records."""

from bastion.bench.harness import evaluate_attack, predict
from bastion.bench.results import EvalResult

__all__ = ["EvalResult", "evaluate_attack", "predict"]
