"""Training the base classifier of sub-sampling certification (MMCert, randomized ablation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import InputError
from bastion.models.ablation import ModalityLayout, layout_of, random_subsamples
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


@dataclass(frozen=True, kw_only=True)
class SubSampledTraining:
    """Cross-entropy on random sub-samples: ``k_i`` positions of each modality kept.

    Levine and Feizi 2020, "Robustness Certificates for Sparse Adversarial Attacks by
    Randomized Ablation", arXiv 1911.09272, and Wang et al. 2024, "MMCert", arXiv
    2403.19080, train the base classifier on the inputs it will be certified with: each
    example is replaced by one independent sub-sample (``models.ablation``): the kept
    values and the keep masks, ``[B, C + T, H, W]``. The model must read that convention
    (``mm-small-cnn``; its ``modality_layout`` splits the channels into modalities).

    Args:
        keep: ``k_i``, positions kept per modality (one int per modality, each in
            [1, H * W]; one int alone is used for every modality). Default 50 (Levine and
            Feizi keep 45 of MNIST's 784 pixels). The certifier should use the same counts.
    """

    keep: tuple[int, ...] = (50,)

    def __post_init__(self) -> None:
        keep = tuple(self.keep) if isinstance(self.keep, list | tuple) else (self.keep,)
        if not keep or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                               for k in keep):
            raise InputError(f"keep must be one int >= 1 per modality, got {self.keep!r}")
        object.__setattr__(self, "keep", keep)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        layout = layout_of(model)
        gen = ctx.generator if ctx is not None else None
        logits = model(self.subsample(x, layout, gen))
        return StepOutput(F.cross_entropy(logits, y), {"acc": batch_accuracy(logits, y)})

    def subsample(self, x: torch.Tensor, layout: ModalityLayout,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """One independent sub-sample of each input: ``[B, C, H, W] -> [B, C + T, H, W]``."""
        return random_subsamples(x, x.shape[0], layout, layout.per_modality(self.keep),
                                 generator)


@dataclass(frozen=True)
class FixedSubsamples:
    """The first ``n`` examples of a dataset, each replaced by one fixed sub-sample: the
    per-epoch evaluation of a sub-sampling run (the base classifier on the inputs it votes
    on; on complete inputs it never saw, its accuracy says little). ``TensorData`` for
    ``train.evaluation.per_epoch_evaluation``."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, data: object, method: SubSampledTraining, layout: ModalityLayout, n: int,
           seed: int = 0) -> FixedSubsamples:
        images = data.images[:n]  # type: ignore[attr-defined]
        labels = data.labels[:n]  # type: ignore[attr-defined]
        gen = torch.Generator().manual_seed(seed)
        return cls(method.subsample(images, layout, gen), labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])
