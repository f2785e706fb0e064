"""Split an evaluation's batches across ``torchrun`` ranks and gather the pieces back.

An evaluation over N points in batches of ``batch_size`` has ``ceil(N / batch_size)``
global batches; batch ``b`` covers points ``[b * batch_size, (b + 1) * batch_size)``. Each
batch draws its randomness from ``batch_seed(seed, b)`` alone, so its outcome does not
depend on which process evaluates it or on what that process evaluated before. Under an
initialised ``torch.distributed`` process group of ``world`` ranks, rank ``r`` evaluates
the batches ``b`` with ``b % world == r`` (``owned_batches``); ``map_batches`` then
exchanges the per-batch pieces with ``all_gather_object`` (gloo and NCCL alike) and every
rank gets all of them, in batch order: the same pieces one process would have produced.

A rank whose share fails still takes part in the exchange, sending its exception instead
of its pieces, so the other ranks raise too rather than wait forever.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from bastion.errors import InputError, InputTypeError

log = logging.getLogger(__name__)

T = TypeVar("T")

_SEED_BITS = 63


def batch_seed(seed: int, batch: int) -> int:
    """The seed of global batch ``batch`` of an evaluation seeded with ``seed``.

    Batch 0 uses ``seed`` itself (an evaluation in one batch draws exactly what a single
    call of the attack with ``seed`` draws); batch ``b > 0`` a 63-bit hash of
    ``(seed, b)``, so different batches (and different seeds) draw independent streams.
    Every attack of an evaluation gets its own generator seeded with this value: the
    seed depends on the batch, never on the attack's position in the list.
    """
    if batch == 0:
        return seed
    digest = hashlib.blake2b(f"bastion.eval:{seed}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def process_share(distributed: bool | None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process for a sharded evaluation.

    Args:
        distributed: None: the initialised default process group if there is one, else
            ``(0, 1)``; False: ``(0, 1)`` whatever the process group; True: the process
            group, which must be initialised.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise InputTypeError(f"distributed must be True, False or None, got {distributed!r}")
    if distributed is False:
        return 0, 1
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized()
    if not active:
        if distributed:
            raise InputError("distributed=True needs an initialised torch.distributed process "
                             "group (launch with torchrun and call init_process_group)")
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def owned_batches(n_batches: int, rank: int, world: int) -> range:
    """The global batches rank ``rank`` of ``world`` evaluates: ``b % world == rank``."""
    return range(rank, n_batches, world)


def _sendable(err: Exception) -> Exception:
    """``err`` if it survives pickling, else a ``RuntimeError`` carrying its text."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any pickling failure means: send the text instead
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def map_batches(
    work: Callable[[int], T], n_batches: int, *, rank: int, world: int,
    signature: Hashable | None = None,
) -> list[T]:
    """``[work(b) for b in range(n_batches)]``, the batches shared among ``world`` ranks.

    With ``world == 1`` this process runs every batch. Otherwise this rank runs its
    ``owned_batches`` and all ranks exchange their pieces (``all_gather_object`` on the
    default process group); every rank returns the full list in batch order. Every rank
    must call it with the same ``n_batches`` and ``signature`` (a small summary of the
    evaluation's arguments, compared across ranks); a mismatch raises ``InputError`` on
    every rank. If ``work`` raises on some rank, every rank raises: that rank its own
    exception, the others the first failing rank's exception.
    """
    if world == 1:
        return [work(b) for b in range(n_batches)]
    import torch.distributed as dist

    payload: tuple[str, Any]
    try:
        payload = ("ok", [(b, work(b)) for b in owned_batches(n_batches, rank, world)])
    except Exception as err:
        local: Exception | None = err
        payload = ("error", _sendable(err))
    else:
        local = None
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, ((n_batches, signature), payload))
    if local is not None:
        raise local
    for r, (sig, (status, value)) in enumerate(gathered):
        if status == "error":
            value.add_note(f"(raised on rank {r} of {world} of a sharded evaluation)")
            raise value
        if sig != (n_batches, signature):
            raise InputError(f"rank {r} evaluates {sig!r} but rank {rank} evaluates "
                             f"{(n_batches, signature)!r}; every rank must pass the same "
                             "points and settings")
    pieces = dict(piece for _, (_, value) in gathered for piece in value)
    missing = sorted(set(range(n_batches)) - set(pieces))
    if missing:  # pragma: no cover - owned_batches covers every batch
        raise RuntimeError(f"batches {missing} were evaluated by no rank")
    log.debug("rank %d of %d: gathered %d batches", rank, world, n_batches)
    return [pieces[b] for b in range(n_batches)]

