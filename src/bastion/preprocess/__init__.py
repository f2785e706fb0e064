"""Pre-processing defenses: ``nn.Module`` s from [0, 1] images to [0, 1] images.

Each declares ``randomized``, ``differentiable`` and ``costly`` and names a BPDA stand-in
(``base.py``); ``Defended(preprocessor, model)`` is the defended classifier.
"""

from bastion.preprocess.base import Defended, Preprocessor, preprocessor_of

__all__ = ["Defended", "Preprocessor", "preprocessor_of"]
