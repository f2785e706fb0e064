"""The seed's general adversarial-training algorithm, literally: D^(t) = D_adv ∪ D.

Step 1 (every ``regenerate_every`` epochs): attack a random subset D' of the training set
with the current model and store the adversarial examples. Step 2: train on the union of
the stored adversarial examples and the clean training set until the next regeneration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import unwrap
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


@dataclass(eq=False)
class RegeneratedSet:
    """RegeneratedAT's stored D_adv, made by ``RegeneratedAT.init_state`` and owned by the loop.

    ``fit`` passes it to every step as ``ctx.state`` and to ``on_epoch_start``, saves
    ``state_dict()`` in each checkpoint and restores it exactly with ``load_state_dict``.

    Args:
        size: |D|, the number of training points.
        index: int64 [M] (CPU), the dataset positions of the stored examples (D'),
            increasing.
        examples: [M, C, H, W] in [0, 1], the adversarial version of each point of
            ``index`` (row i for ``index[i]``); None before the first regeneration.
        generated_at: 0-based epoch of the last regeneration; None before the first.
    """

    size: int
    index: torch.Tensor
    examples: torch.Tensor | None = None
    generated_at: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"size must be an int >= 1, got {self.size!r}")
        self.store(self.index, self.examples, self.generated_at)

    @classmethod
    def empty(cls, size: int) -> RegeneratedSet:
        """No stored examples yet (the state before the first regeneration)."""
        return cls(size=size, index=torch.zeros(0, dtype=torch.int64))

    def store(self, index: torch.Tensor, examples: torch.Tensor | None,
              generated_at: int | None) -> None:
        """Replace D_adv by ``examples`` of the points ``index``, made at ``generated_at``."""
        index = torch.as_tensor(index, dtype=torch.int64).cpu()
        if index.dim() != 1:
            raise InputError(f"index must be a vector, got shape {tuple(index.shape)}")
        if (0 if examples is None else examples.shape[0]) != index.numel():
            raise InputError("the stored set has a different number of indices and examples")
        lookup = torch.full((self.size,), -1, dtype=torch.int64)
        if index.numel():
            if int(index.min()) < 0 or int(index.max()) >= self.size:
                raise InputError(f"stored indices must lie in [0, {self.size}), got "
                                 f"[{int(index.min())}, {int(index.max())}]")
            lookup[index] = torch.arange(index.numel())
        self.index, self.examples, self.generated_at = index, examples, generated_at
        self._lookup = lookup  # position in ``index`` of each dataset point, -1: not stored

    def _find(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For dataset positions ``points`` [B]: bool [B] "has a stored example" and the
        rows [S] of ``examples`` of those that have one, in batch order."""
        pos = self._lookup[points.cpu()]
        have = pos >= 0
        return have, pos[have]

    def state_dict(self) -> dict[str, Any]:
        """``{"size", "epoch" (None before the first regeneration), "index", "x_adv"}``."""
        state: dict[str, Any] = {"size": self.size, "epoch": self.generated_at,
                                 "index": self.index.clone()}
        if self.examples is not None:
            state["x_adv"] = self.examples.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved set (checkpoints that wrote epoch -1 for "none yet" load too)."""
        size = int(state["size"])
        if size != self.size:
            raise InputError(f"saved state is for {size} training points, the dataset has "
                             f"{self.size}")
        x_adv = state.get("x_adv")
        epoch = state.get("epoch")
        epoch = None if epoch is None or int(epoch) < 0 else int(epoch)
        examples = None if x_adv is None else torch.as_tensor(x_adv).clone()
        self.store(torch.as_tensor(state["index"], dtype=torch.int64), examples, epoch)


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

    State: a ``RegeneratedSet`` (the stored examples and their dataset positions) made by
    ``init_state``, held by the training loop and handed to each step as ``ctx.state`` and
    to ``on_epoch_start``; it is saved with each checkpoint, so a resumed run trains on the
    same D_adv until the next regeneration. The method object itself never changes, so
    ``dataclasses.replace(method, ...)`` is safe mid-run. The examples are kept on the
    CPU unless the training images live elsewhere. Under DDP every rank draws its own D'
    and attacks all of it.

    Logs: ``adv_frac`` (share of the batch that is adversarial), ``nat_acc`` (accuracy on
    the batch's clean part),
    ``adv_acc`` (on the appended examples; 0 in a batch without any).

    Args:
        threat: the regeneration attack (``ThreatModel``; a mapping overrides the
            default's keys): radius ``eps`` > 0 in [0, 1] pixel units (default 0.1),
            ``norm``, ``steps`` K (10), ``step_size`` (None: ``2.5 * eps / steps``),
            ``random_init`` (True) and ``train_mode`` (False: eval mode, restored).
        subset_fraction: |D'| / |D| in (0, 1].
        regenerate_every: N >= 1, epochs between regenerations.
        keep_clean: train on the clean copy of points of D' too (the seed's D_adv ∪ D).
        attack_batch_size: batch size of the regeneration attack.
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    subset_fraction: float = 0.5
    regenerate_every: int = 1
    keep_clean: bool = True
    attack_batch_size: int = 256

    def __post_init__(self) -> None:
        init_threat(self)
        if not self.threat.eps > 0:
            raise InputError(f"eps must be > 0, got {self.threat.eps}")
        if not (math.isfinite(self.subset_fraction) and 0 < self.subset_fraction <= 1):
            raise InputError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
        if not isinstance(self.regenerate_every, int) or self.regenerate_every < 1:
            raise InputError(f"regenerate_every must be an int >= 1, got "
                             f"{self.regenerate_every!r}")
        if not isinstance(self.attack_batch_size, int) or self.attack_batch_size < 1:
            raise InputError(f"attack_batch_size must be an int >= 1, got "
                             f"{self.attack_batch_size!r}")

    # --- state -------------------------------------------------------------------------
    def init_state(
        self, dataset_size: int, device: torch.device | str | None = None
    ) -> RegeneratedSet:
        """An empty D_adv for a training set of ``dataset_size`` points.

        ``device`` is unused: the examples go where the training images live.
        """
        if not isinstance(dataset_size, int) or dataset_size < 1:
            raise InputError(f"dataset_size must be an int >= 1, got {dataset_size!r}")
        return RegeneratedSet.empty(dataset_size)

    @staticmethod
    def _state_of(state: Any) -> RegeneratedSet:
        if not isinstance(state, RegeneratedSet):
            raise InputError(
                "RegeneratedAT needs its stored set: state = method.init_state(dataset_size) "
                f"(fit does this), passed as ctx.state; got {type(state).__name__}"
            )
        return state

    # --- step 1: regenerate D_adv ------------------------------------------------------
    def on_epoch_start(
        self, epoch: int, model: nn.Module, train_data: Any, generator: torch.Generator | None,
        state: RegeneratedSet,
    ) -> None:
        """Regenerate D_adv in ``state`` when ``epoch % regenerate_every == 0`` (or if empty)."""
        stored = self._state_of(state)
        if epoch % self.regenerate_every != 0 and stored.generated_at is not None:
            return
        n = stored.size
        if len(train_data) != n:
            raise InputError(f"train_data has {len(train_data)} points, the state has {n}")
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
            r = self.threat.attack(net, x, y, generator=generator)
            out[start : start + part.numel()] = r.x_adv.to(out.device, out.dtype)
        stored.store(chosen, out, epoch)

    # --- steps 2-3: train on D_adv ∪ D ----------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        state = self._state_of(ctx.state if ctx is not None else None)
        stored = state.examples
        n_clean = x.shape[0]
        if stored is None:
            pos = torch.zeros(0, dtype=torch.int64)
            have = torch.zeros(n_clean, dtype=torch.bool, device=x.device)
        else:
            if ctx is None or ctx.index is None:
                raise InputError("RegeneratedAT needs ctx.index to find the stored adversarial "
                                 "examples of a batch (use fit)")
            have_cpu, pos = state._find(ctx.index)
            have = have_cpu.to(x.device)
        x_extra = (stored[pos.to(stored.device)].to(x.device, x.dtype)
                   if stored is not None and pos.numel() else x.new_zeros((0, *x.shape[1:])))
        y_extra = y[have]
        keep = torch.ones_like(have) if self.keep_clean else ~have
        xs = torch.cat([x[keep], x_extra])
        ys = torch.cat([y[keep], y_extra])
        logits = model(xs)
        n_kept = int(keep.sum())
        logs: dict[str, torch.Tensor | float] = {
            "adv_frac": float(x_extra.shape[0]) / max(1, xs.shape[0]),
            "nat_acc": batch_accuracy(logits[:n_kept], ys[:n_kept]) if n_kept else 0.0,
            "adv_acc": batch_accuracy(logits[n_kept:], y_extra) if y_extra.numel() else 0.0,
        }
        return StepOutput(F.cross_entropy(logits, ys), logs)
