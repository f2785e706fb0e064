"""The seed's general adversarial-training algorithm, literally: D^(t) = D_adv ∪ D.

Step 1 (every ``regenerate_every`` epochs): attack a random subset D' of the training set
with the current model and store the adversarial examples. Step 2: train on the union of
the stored adversarial examples and the clean training set until the next regeneration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import unwrap
from bastion.attacks.pgd import check_attack_options, pgd
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy
from bastion.types import Norm


@dataclass(frozen=True, kw_only=True)
class RegeneratedAT:
    """Adversarial training on D^(t) = D_adv ∪ D with D_adv regenerated every N epochs.

    The seed's "AT General Algorithm" (after Madry et al. 2018, "Towards Deep Learning
    Models Resistant to Adversarial Attacks", arXiv 1706.06083, which solves
    ``min_theta E[max_{||d|| <= eps} CE(f(x + d), y)]``):

    1. at epoch t with ``t % regenerate_every == 0`` draw D' ⊆ D, ``round(subset_fraction *
       |D|)`` points chosen with the run's generator, and compute PGD examples
       ``x_i + d_i^(t)`` for them with the current parameters (``on_epoch_start``, in batches
       of ``attack_batch_size``, model in eval mode);
    2. D_adv = {(x_i + d_i^(t), y_i) : x_i in D'}, D^(t) = D_adv ∪ D;
    3. train on D^(t) for N = ``regenerate_every`` epochs, then repeat.

    Step 3 is realised batch by batch: the loop draws batches of clean points; for each
    point of the batch that has a stored adversarial version that version is appended, and
    the loss is the mean cross-entropy over the concatenated batch. So over an epoch every
    clean example and every stored adversarial example is seen exactly once, and a batch
    holds about ``(1 + subset_fraction) * batch_size`` examples. With ``keep_clean=False``
    the clean copy of a point is dropped when its adversarial version is used (D_adv ∪
    (D \\ D')); ``subset_fraction=1, regenerate_every=1, keep_clean=False`` is then PGD-AT
    except that each epoch's examples are computed with the parameters of the epoch's
    start rather than of the current batch.

    Gradient budget: PGD-K on a fraction f every N epochs costs ``f * K / N`` attack
    forward-backward passes per training example per epoch (per-batch PGD-AT: K), plus
    ``1 + f`` training forward-backward passes (``f`` with ``keep_clean=False``: 1). An
    equal-budget comparison with PGD-K AT therefore gives it ``K * N / f`` attack steps, or
    compares at equal wall time; ``train_seconds`` and the ``adv_frac`` log record it.

    State: the stored examples and their dataset positions, saved by ``state_dict`` (so a
    resumed run trains on the same D_adv until the next regeneration). The examples are
    kept on the CPU unless the training images live elsewhere. Under DDP every rank draws
    its own D' and attacks all of it.

    Logs: ``adv_frac`` (share of the batch that is adversarial), ``clean_acc``,
    ``adv_acc`` (on the appended examples; 0 in a batch without any).

    Args:
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps K.
        step_size: PGD step; None means ``2.5 * eps / steps``.
        random_init: PGD random start.
        subset_fraction: |D'| / |D| in (0, 1].
        regenerate_every: N >= 1, epochs between regenerations.
        keep_clean: train on the clean copy of points of D' too (the seed's D_adv ∪ D).
        attack_batch_size: batch size of the regeneration attack.
    """

    eps: float = 0.1
    norm: Norm = "linf"
    steps: int = 10
    step_size: float | None = None
    random_init: bool = True
    subset_fraction: float = 0.5
    regenerate_every: int = 1
    keep_clean: bool = True
    attack_batch_size: int = 256
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_attack_options(eps=self.eps, norm=self.norm, steps=self.steps,
                             step_size=self.step_size)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not (math.isfinite(self.subset_fraction) and 0 < self.subset_fraction <= 1):
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
        if not isinstance(self.regenerate_every, int) or self.regenerate_every < 1:
            raise ValueError(f"regenerate_every must be an int >= 1, got "
                             f"{self.regenerate_every!r}")
        if not isinstance(self.attack_batch_size, int) or self.attack_batch_size < 1:
            raise ValueError(f"attack_batch_size must be an int >= 1, got "
                             f"{self.attack_batch_size!r}")

    # --- state -------------------------------------------------------------------------
    def setup(self, dataset_size: int, device: torch.device | str | None = None) -> None:
        """Start with an empty D_adv for a training set of ``dataset_size`` points."""
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        self._state.clear()
        self._state["size"] = int(dataset_size)
        self._set(torch.zeros(0, dtype=torch.int64), None, -1)

    def _set(self, index: torch.Tensor, x_adv: torch.Tensor | None, epoch: int) -> None:
        size = self._state["size"]
        lookup = torch.full((size,), -1, dtype=torch.int64)
        if index.numel():
            if int(index.min()) < 0 or int(index.max()) >= size:
                raise ValueError(f"stored indices must lie in [0, {size}), got "
                                 f"[{int(index.min())}, {int(index.max())}]")
            lookup[index.cpu()] = torch.arange(index.numel())
        self._state.update(index=index.cpu(), x_adv=x_adv, lookup=lookup, epoch=epoch)

    @property
    def stored_index(self) -> torch.Tensor:
        """int64 [M]: dataset positions of the stored adversarial examples (D')."""
        self._need_setup()
        return self._state["index"]

    @property
    def stored_examples(self) -> torch.Tensor | None:
        """[M, C, H, W]: the stored adversarial examples, row i for ``stored_index[i]``."""
        self._need_setup()
        return self._state["x_adv"]

    @property
    def generated_at(self) -> int:
        """0-based epoch of the last regeneration (-1: none yet)."""
        self._need_setup()
        return self._state["epoch"]

    def _need_setup(self) -> None:
        if "size" not in self._state:
            raise RuntimeError("call setup(dataset_size, device) first (fit does)")

    def state_dict(self) -> dict[str, Any]:
        self._need_setup()
        state: dict[str, Any] = {"size": self._state["size"], "epoch": self._state["epoch"],
                                 "index": self._state["index"].clone()}
        if self._state["x_adv"] is not None:
            state["x_adv"] = self._state["x_adv"].detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if "size" in self._state and self._state["size"] != size:
            raise ValueError(f"saved state is for {size} training points, the dataset has "
                             f"{self._state['size']}")
        self._state["size"] = size
        x_adv = state.get("x_adv")
        index = torch.as_tensor(state["index"], dtype=torch.int64)
        if (0 if x_adv is None else x_adv.shape[0]) != index.numel():
            raise ValueError("saved state has a different number of indices and examples")
        self._set(index, None if x_adv is None else x_adv.clone(), int(state["epoch"]))

    # --- step 1: regenerate D_adv ------------------------------------------------------
    def on_epoch_start(
        self, epoch: int, model: nn.Module, train_data: Any, generator: torch.Generator | None
    ) -> None:
        """Regenerate D_adv when ``epoch % regenerate_every == 0`` (or if there is none)."""
        if "size" not in self._state:
            self.setup(len(train_data))
        if epoch % self.regenerate_every != 0 and self._state["epoch"] >= 0:
            return
        n = self._state["size"]
        if len(train_data) != n:
            raise ValueError(f"train_data has {len(train_data)} points, setup saw {n}")
        net = unwrap(model)
        device = next(net.parameters()).device
        m = max(1, round(self.subset_fraction * n))
        gdev = generator.device if generator is not None else torch.device("cpu")
        chosen = torch.randperm(n, generator=generator, device=gdev)[:m].sort().values.cpu()
        images, labels = train_data.images, train_data.labels
        out = torch.empty((m, *images.shape[1:]), dtype=images.dtype, device=images.device)
        for start in range(0, m, self.attack_batch_size):
            part = chosen[start : start + self.attack_batch_size]
            x = images[part].to(device)
            y = labels[part].to(device)
            r = pgd(net, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                    step_size=self.step_size, random_init=self.random_init,
                    train_mode=False, generator=generator)
            out[start : start + part.numel()] = r.x_adv.to(out.device, out.dtype)
        self._set(chosen, out, epoch)

    # --- steps 2-3: train on D_adv ∪ D ----------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        stored = self._state.get("x_adv")
        if stored is not None and (ctx is None or ctx.index is None):
            raise ValueError("RegeneratedAT needs ctx.index to find the stored adversarial "
                             "examples of a batch (use fit)")
        n_clean = x.shape[0]
        if stored is None:
            pos = torch.zeros(0, dtype=torch.int64)
            have = torch.zeros(n_clean, dtype=torch.bool, device=x.device)
        else:
            pos_all = self._state["lookup"][ctx.index.cpu()]
            have = (pos_all >= 0).to(x.device)
            pos = pos_all[pos_all >= 0]
        x_extra = (stored[pos.to(stored.device)].to(x.device, x.dtype) if pos.numel()
                   else x.new_zeros((0, *x.shape[1:])))
        y_extra = y[have]
        keep = torch.ones_like(have) if self.keep_clean else ~have
        xs = torch.cat([x[keep], x_extra])
        ys = torch.cat([y[keep], y_extra])
        logits = model(xs)
        n_kept = int(keep.sum())
        logs: dict[str, torch.Tensor | float] = {
            "adv_frac": float(x_extra.shape[0]) / max(1, xs.shape[0]),
            "clean_acc": batch_accuracy(logits[:n_kept], ys[:n_kept]) if n_kept else 0.0,
            "adv_acc": batch_accuracy(logits[n_kept:], y_extra) if y_extra.numel() else 0.0,
        }
        return StepOutput(F.cross_entropy(logits, ys), logs)
