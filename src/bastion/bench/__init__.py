"""Benchmarks of defences: plots of training histories and certified accuracy."""

from bastion.bench.plots import plot_certified_accuracy, plot_history

__all__ = ["plot_certified_accuracy", "plot_history"]
