"""bastion: defences for image classifiers against adversarial examples.

Inputs are always NCHW float tensors in [0, 1]; normalisation is the model's first layer,
so every epsilon and certified radius is in pixel units.
"""

__version__ = "0.1.0"

from bastion.runs import evaluate_run, load_model, train_from_config  # noqa: E402

__all__ = ["__version__", "evaluate_run", "load_model", "train_from_config"]
