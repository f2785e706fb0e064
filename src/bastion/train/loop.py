"""The one training loop of bastion.

``fit`` is the only code that calls ``zero_grad``, ``backward`` and ``step``. A method is a
callable ``method(model, x, y, ctx=...) -> StepOutput`` that builds the batch loss (PGD-AT,
TRADES, MACER, ...). The loop owns batching, the learning-rate schedule, the call to the
per-epoch evaluation it is given (a callable; the loop knows no attack or harness), atomic
checkpoints, exact resume, early stopping and DDP.

With a ``run_dir``, every finished epoch is one checkpoint (``train.checkpoint``) holding the
weights, the whole training state, the history so far and, when given, the caller's
``run_config``; ``history.jsonl`` is a copy of the checkpoint's history, rewritten after each
checkpoint and again on every (re)start, so a kill between the two writes is repaired by
the next run. A resume compares ``run_config`` with the one saved in the checkpoint (by the
caller's ``same_config`` rule) and refuses a different one.

Optional method hooks (duck-typed, no base class):
    ``init_state(dataset_size: int, device) -> state`` once before training: the method's
    explicit state object (CAT's per-example radii, the regenerated set), which the loop
    passes as ``ctx.state`` and saves and restores with the checkpoint through the state's
    ``state_dict()`` / ``load_state_dict(d)``. The method dataclass itself stays frozen, so
    ``dataclasses.replace`` never drops state.
    ``on_epoch_start(epoch, model, train_data, generator, state)`` before each epoch.

Precision: with ``precision="bf16"`` each call of the method -- its inner attack's forward
and input-gradient passes and the training forward -- runs under
``torch.autocast(device_type=<the model's device type>, dtype=torch.bfloat16)``. The
parameters, their gradients and the optimizer state stay fp32 (``backward`` and ``step``
run outside autocast), autocast computes cross-entropy (and the other losses on its fp32
list) in fp32, and an attack's perturbation stays an fp32 tensor in its ball (the input
gradient of an fp32 input is fp32). ``on_epoch_start`` and the per-epoch evaluation run in
fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import nn

from bastion._torch import model_mode
from bastion.errors import CheckpointError, InputError, RunFolderError
from bastion.records import EpochRecord, History, StepContext, StepOutput
from bastion.records.io import atomic_write_bytes
from bastion.train.checkpoint import (
    checkpoint_dir,
    load_model_state,
    load_run_config,
    load_train_state,
    repair_best_pointer,
    save_checkpoint,
)

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
"""The arithmetic of a training step: ``"fp32"``, or ``"bf16"`` autocast."""

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""The valid values of ``fit(precision=...)`` (and of ``TrainConfig.precision``)."""


class Method(Protocol):
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput: ...


class TensorData(Protocol):
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int: ...


Evaluate = Callable[[nn.Module], Mapping[str, float]]
"""``evaluate(model) -> {"test_clean_acc": ..., ...}``: accuracies measured after an epoch
(keys among ``records.MEASURED_KEYS``), called on rank 0 with the model in eval mode."""


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "method": generator.get_state()}
    if device.type != "cpu":
        state["accelerator"] = list(torch.get_device_module(device.type).get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["method"])
    if "accelerator" in state and device.type != "cpu":
        torch.get_device_module(device.type).set_rng_state_all(state["accelerator"])


def _bf16_unsupported(device: torch.device) -> str | None:
    """Why torch cannot run bf16 autocast on ``device`` (None: it can).

    Asks torch itself: autocast must exist for the device type and accept bf16 there
    (CUDA raises on a GPU without bf16; other backends warn and switch autocast off), so
    inside the context it must be on and in bf16.
    """
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for {device.type!r} devices"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                on = torch.is_autocast_enabled(device.type)
                dtype = torch.get_autocast_dtype(device.type)
        except (RuntimeError, ValueError) as err:
            return str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    if not on or dtype != torch.bfloat16:
        said = "; ".join(str(w.message).strip() for w in caught)
        return f"torch turns bf16 autocast off on {device.type}" + (f" ({said})" if said else "")
    return None


def _bf16_native(device: torch.device) -> bool:
    """Whether a CPU has bf16 instructions (AVX512-BF16 or AMX); other devices: True.

    Without them CPU autocast emulates bf16: correct, but usually slower than fp32.
    """
    if device.type != "cpu":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def check_precision(precision: object, device: torch.device | str) -> Precision:
    """``precision`` checked for training on ``device``; returns it.

    Args:
        precision: ``"fp32"`` or ``"bf16"``.
        device: where the model lives (its type selects the autocast backend).

    Raises:
        InputError: ``precision`` is not one of ``PRECISIONS`` (the message names them), or
            it is ``"bf16"`` and torch cannot run bf16 autocast on ``device`` (e.g. a GPU
            without bf16); the message says to use ``"fp32"`` there.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    device = torch.device(device)
    if precision == "bf16":
        why = _bf16_unsupported(device)
        if why is not None:
            raise InputError(f"precision 'bf16' is not supported on {device}: {why}; train "
                             "with precision 'fp32' there")
    return "bf16" if precision == "bf16" else "fp32"


def step_autocast(
    precision: Precision, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """The context each method call of ``fit`` runs in: bf16 autocast on ``device``'s type
    for ``"bf16"``, a no-op for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    model: nn.Module,
    method: Method,
    train_data: TensorData,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int = 128,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    evaluate: Evaluate | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = True,
    seed: int = 0,
    patience: int | None = None,
    channels_last: bool = False,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    run_config: Any = None,
    same_config: Callable[[Any, Any], bool] | None = None,
    precision: Precision = "fp32",
) -> History:
    """Train ``model`` with ``method`` for ``epochs`` epochs.

    Args:
        model: classifier on [0, 1] inputs, already on its device. Under ``torchrun`` (a
            process group is initialised) it is wrapped in DistributedDataParallel here.
        method: the per-batch objective, ``method(model, x, y, ctx=...) -> StepOutput``.
        train_data: object with ``images`` [N, C, H, W] in [0, 1] and ``labels`` int64 [N]
            (e.g. ``bastion.data.ImageDataset``); batches are drawn by index, so methods
            get dataset positions in ``ctx.index``.
        optimizer: the optimizer over ``model``'s parameters.
        epochs: total number of epochs (a resumed run continues up to it).
        batch_size: global batch size (split evenly across DDP ranks).
        scheduler: stepped once per optimisation step.
        evaluate: the per-epoch measurement, ``evaluate(model) -> {key: accuracy}``
            (``train.evaluation.per_epoch_evaluation`` builds the usual one); None
            measures nothing.
        run_dir: where to write checkpoints and history; None keeps everything in memory.
        resume: continue from ``run_dir``'s last checkpoint if there is one.
        seed: seeds the per-epoch shuffling and the methods' generator.
        patience: stop when the best robust (else clean) test accuracy has not improved
            for this many epochs; the best checkpoint is kept either way.
        channels_last: use the channels-last memory layout (faster convolutions on CPU).
        transform: batch augmentation ``transform(x, generator) -> x`` (stays in [0, 1]).
        on_batch: called as ``on_batch(epoch, step, steps_per_epoch)`` after each step.
        on_epoch: called with each epoch's record.
        run_config: JSON-safe description of the run (``runs`` passes the resolved config
            as a dict), saved with every checkpoint; the loop does not interpret it.
        same_config: ``same_config(saved, run_config) -> bool``, the rule by which a resume
            accepts the checkpoint's saved config (default ``==``); a checkpoint that
            fails it raises ``RunFolderError`` before anything is loaded. Checkpoints
            written without a config are accepted (the caller checks those).
        precision: ``"fp32"``, or ``"bf16"``: each method call (inner attack and training
            forward) runs under bf16 autocast on the model's device type; parameters,
            gradients, optimizer state and losses stay fp32 (see the module docstring).
            Saved with every checkpoint; resuming one trained in another precision is
            refused.

    Raises:
        InputError: bad ``epochs`` or ``batch_size``, an unknown ``precision``, or
            ``"bf16"`` on a device where torch cannot run bf16 autocast.
        RunFolderError: the checkpoint to resume was trained with another config or
            another precision.

    Returns:
        The run's ``History``.
    """
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    rank, world = _dist()
    if batch_size % world:
        raise InputError(f"batch_size {batch_size} must be divisible by the {world} ranks")
    device = next(model.parameters()).device
    precision = check_precision(precision, device)
    if precision == "bf16" and not _bf16_native(device):
        log.warning("%s has no bf16 instructions (AVX512-BF16 or AMX): bf16 autocast is "
                    "emulated there and likely slower than fp32", device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=None if device.type == "cpu" else [device.index]
        )
    generator = torch.Generator(device=device).manual_seed(seed + 7919 * rank)
    n = len(train_data)
    method_state = method.init_state(n, device) if hasattr(method, "init_state") else None

    history = History()
    start_epoch = 0
    best = float("-inf")
    since_best = 0
    if run_dir is not None and resume and (ck := checkpoint_dir(run_dir, "last")) is not None:
        saved_config = load_run_config(ck)
        if run_config is not None and saved_config is not None:
            same = (same_config or (lambda a, b: a == b))(saved_config, run_config)
            if not same:
                raise RunFolderError(
                    f"{run_dir} holds a checkpoint ({ck.name}) trained with a different "
                    "config; resume it with the same config, or start over elsewhere"
                )
        saved = load_train_state(ck)
        # a checkpoint written before the precision was saved was trained in fp32
        saved_precision = saved.get("precision", "fp32")
        if saved_precision != precision:
            raise RunFolderError(
                f"{run_dir} holds a checkpoint ({ck.name}) trained with precision "
                f"{saved_precision!r}, not {precision!r}; resume it with precision "
                f"{saved_precision!r}, or start over elsewhere"
            )
        load_model_state(model, ck)
        try:
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            if method_state is not None and saved.get("method") is not None:
                method_state.load_state_dict(saved["method"])
            ranks_rng = saved["rng"]
            own = ranks_rng[rank] if rank < len(ranks_rng) else ranks_rng[0]
            _set_rng_state(own, generator, device)
            history = History.of(saved["history"])
            start_epoch = int(saved["epoch"])
            best, since_best = float(saved["best"]), int(saved["since_best"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{ck / 'train_state.json'}: cannot restore the training state ({err!r}); "
                f"start the run in {run_dir} over (bastion train ... --overwrite)"
            ) from None
        log.info("resumed %s at epoch %d", run_dir, start_epoch)
        if rank == 0:
            repair_best_pointer(run_dir, history, best)
    if run_dir is not None and rank == 0:
        # history.jsonl is a copy of the history training continues from: repairs a kill
        # between a checkpoint and its history line (and empties it on a fresh start)
        atomic_write_bytes(Path(run_dir) / "history.jsonl", history.to_jsonl().encode())

    local_bs = batch_size // world
    steps_per_epoch = n // batch_size if n >= batch_size else 1
    for epoch in range(start_epoch, epochs):
        if patience is not None and since_best >= patience:
            break
        t0 = time.perf_counter()
        if hasattr(method, "on_epoch_start"):
            method.on_epoch_start(epoch, model, train_data, generator, method_state)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        sums: dict[str, torch.Tensor] = {}
        net.train()
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size][rank * local_bs :][:local_bs]
            x = train_data.images[idx].to(device, non_blocking=True)
            y = train_data.labels[idx].to(device, non_blocking=True)
            if transform is not None:
                x = transform(x, generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = StepContext(epoch=epoch, step=step, index=idx.to(device), generator=generator,
                              epochs=epochs, state=method_state)
            with step_autocast(precision, device):
                out = method(net, x, y, ctx=ctx)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for k, v in {"loss": out.loss.detach(), **out.logs}.items():
                v = torch.as_tensor(v, device=device, dtype=torch.float64).detach()
                sums[k] = sums.get(k, torch.zeros((), device=device, dtype=torch.float64)) + v
            if on_batch is not None:
                on_batch(epoch, step, steps_per_epoch)
        if world > 1:
            keys = sorted(sums)
            packed = torch.stack([sums[k] for k in keys])
            dist.all_reduce(packed)
            sums = {k: packed[i] / world for i, k in enumerate(keys)}
        train_logs = {f"train_{k}": float(v) / steps_per_epoch for k, v in sums.items()}
        lr = optimizer.param_groups[0]["lr"]
        train_seconds = time.perf_counter() - t0
        measured: dict[str, float] = {}
        if rank == 0 and evaluate is not None:
            with model_mode(model, False):
                measured = dict(evaluate(model))
        if world > 1:
            box = [measured]
            dist.broadcast_object_list(box, src=0)
            measured = box[0]
        score = measured.get("test_robust_acc", measured.get("test_clean_acc", float("nan")))
        is_best = score == score and score > best
        if is_best:
            best, since_best = score, 0
        else:
            since_best += 1
        record = EpochRecord(
            epoch=epoch + 1, lr=lr, train=train_logs, measured=measured,
            train_seconds=train_seconds, seconds=time.perf_counter() - t0, best_so_far=best,
        )
        history = history.append(record)
        if run_dir is not None:
            rngs = [_rng_state(generator, device)]
            if world > 1:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, rngs[0])
                rngs = gathered
            if rank == 0:
                train_state = {
                    "epoch": epoch + 1,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "method": None if method_state is None else method_state.state_dict(),
                    "rng": rngs,
                    "history": history.to_dicts(),
                    "best": best,
                    "since_best": since_best,
                    "precision": precision,
                }
                save_checkpoint(run_dir, epoch + 1, model, train_state, is_best=is_best,
                                run_config=run_config)
                atomic_write_bytes(Path(run_dir) / "history.jsonl", history.to_jsonl().encode())
            if world > 1:
                dist.barrier()
        log.info("epoch %d: %s", epoch + 1, record.to_dict())
        if on_epoch is not None:
            on_epoch(record.to_dict())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
