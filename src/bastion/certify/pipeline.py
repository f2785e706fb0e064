"""Certify a dataset with any certifier: one JSONL row per input, resumable and shardable.

``certify_dataset(certifier, images, labels, out_path=...)`` certifies every ``skip``-th
image (at most ``max_inputs``) and writes one ``records.CertificationRow`` per input to a
``rowstore.RowStore`` as it goes, in the shape of Cohen et al.'s ``certify.py`` log (arXiv
1902.02918) with the certifier's raw statistics for auditing::

    {"bastion-certify": 1, "params": {...}}                         <- header line
    {"index": 0, "label": 7, "prediction": 7, "radius": 0.81, "correct": true,
     "abstained": false, "counts": {"nA": 99873, "n": 100000}, "p_lower": 0.9995,
     "seconds": 12.3}

A certifier is any object with the ``Certifier`` protocol below (randomized smoothing's
``CohenCertifier``, ``SequentialCertifier`` and ``PredictCertifier``; see
``bastion.certify.registry``).

- Resumable: rows are appended, flushed and fsynced after every group of inputs; on restart
  the file is read back, a half-written last line is discarded, and work continues after the
  last complete row. The header must match the new call's parameters (else ``ValueError``).
- Independent of batching: input ``i`` is certified with its own generator seeded with
  ``input_seed(seed, i)``, so its row does not depend on which inputs are certified
  together (``inputs_per_call``), on forward batch sizes or on the rank running it.
- Sharded: under ``torchrun`` (an initialised process group, or ``RANK``/``WORLD_SIZE`` in the
  environment) rank ``r`` of ``w`` certifies inputs ``selected[r::w]`` into its own shard
  file (``rowstore.shard_path``) and rank 0 merges the shards into ``out_path`` sorted by
  index: the same lines as a single-process run with the same seed, except the ``seconds``
  field (wall time), the only value that is not a function of the inputs and seeds.

``bastion.certify.summary`` turns rows into a ``Certificate``, certified accuracy and ACR.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from bastion._validate import check_images, check_labels
from bastion.certify.rowstore import RowStore, merge_shards, shard_path
from bastion.errors import InputError
from bastion.records import Certificate, CertificationRow

Progress = Callable[[int, int], None]
"""``progress(done, total)``: inputs finished so far (this rank) and inputs to do."""


@runtime_checkable
class Certifier(Protocol):
    """What ``certify_dataset`` needs of a certifier.

    - ``device``: where inputs and generators go (the base model's device).
    - ``inputs_per_call``: a good number of inputs to certify together (results must not
      depend on it).
    - ``header(example, run)``: the JSON-safe header params of a certification, for one
      example input ``example`` [1, C, H, W] on ``device``; it must contain every entry of
      ``run`` (the pipeline's ``seed``, ``skip`` and ``num_images``) unchanged, in any
      position (``{**mine, **run}`` will do).
    - ``certify(x, generators)``: a ``Certificate`` of the B inputs ``x`` [B, C, H, W]
      (on ``device``), input ``j`` drawing its randomness from ``generators[j]`` only.
    - ``details(cert, j)``: the JSON-safe per-row statistics of input ``j`` of ``cert``
      (counts, bounds, margins...); written between ``abstained`` and ``seconds``.
    """

    @property
    def device(self) -> torch.device: ...

    @property
    def inputs_per_call(self) -> int: ...

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]: ...

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate: ...

    def details(self, cert: Certificate, j: int) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- seeds, selection


def input_seed(seed: int, index: int) -> int:
    """A 63-bit seed for dataset position ``index`` under run seed ``seed`` (SplitMix64)."""
    z = ((seed & 0xFFFFFFFF) << 32 | (index & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def selected_indices(num_images: int, skip: int = 1, max_inputs: int | None = None) -> list[int]:
    """Dataset positions certified: every ``skip``-th from 0, at most ``max_inputs`` of them."""
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise InputError(f"skip must be an int >= 1, got {skip!r}")
    if max_inputs is not None and (
        isinstance(max_inputs, bool) or not isinstance(max_inputs, int) or max_inputs < 1
    ):
        raise InputError(f"max_inputs must be an int >= 1 or None, got {max_inputs!r}")
    idx = list(range(0, num_images, skip))
    return idx if max_inputs is None else idx[:max_inputs]


# --------------------------------------------------------------------------- distribution


@dataclass(frozen=True, kw_only=True)
class Shard:
    """This process's part of a sharded certification: rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise InputError(
                f"rank must be in [0, world_size), got rank {self.rank} of {self.world_size}"
            )


def dist_info(rank: int | None = None, world_size: int | None = None) -> Shard:
    """This process's shard: the given rank/world size, else torch.distributed's, else the
    ``RANK``/``WORLD_SIZE`` environment of torchrun, else rank 0 of 1."""
    if rank is not None or world_size is not None:
        r, w = int(rank or 0), int(world_size or 1)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(rank=r, world_size=w)


def _barrier() -> None:
    """Wait for every rank (initialising a gloo group from torchrun's environment if needed)."""
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


# --------------------------------------------------------------------------- certification


def _rows_of(
    certifier: Certifier, cert: Certificate, indices: list[int], labels: torch.Tensor,
    seconds: float,
) -> list[CertificationRow]:
    if len(cert) != len(indices):
        raise InputError(f"the certifier returned {len(cert)} results for {len(indices)} inputs")
    per = round(seconds / max(1, len(indices)), 4)
    return [
        CertificationRow(
            index=i, label=int(labels[j]), prediction=int(cert.prediction[j]),
            radius=float(cert.radius[j]), abstained=bool(cert.abstained[j]), seconds=per,
            details=certifier.details(cert, j),
        )
        for j, i in enumerate(indices)
    ]


def certify_shard(
    certifier: Certifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    out_path: str | os.PathLike,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 1,
    max_inputs: int | None = None,
    seed: int = 0,
    inputs_per_call: int | None = None,
    progress: Progress | None = None,
) -> list[CertificationRow]:
    """Certify this rank's inputs (``selected[rank::world_size]``) into ``out_path``.

    The building block of ``certify_dataset`` (which picks the shard file and merges); the
    arguments are the same. Resumes from the rows already in ``out_path``.

    Returns:
        This shard's rows, in index order.
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    Shard(rank=rank, world_size=world_size)  # validates
    if inputs_per_call is not None and (
        isinstance(inputs_per_call, bool) or not isinstance(inputs_per_call, int)
        or inputs_per_call < 1
    ):
        raise InputError(f"inputs_per_call must be an int >= 1 or None, got {inputs_per_call!r}")
    assigned = selected_indices(images.shape[0], skip, max_inputs)[rank::world_size]
    device = certifier.device
    run = {"seed": seed, "skip": skip, "num_images": int(images.shape[0])}
    params = certifier.header(images[:1].to(device), run)
    wrong = {k: params.get(k) for k, v in run.items() if params.get(k) != v}
    if wrong:
        raise InputError(f"the certifier's header changed the pipeline's entries {wrong}")
    # the store holds the file's writer lock: released here even when certifying fails
    with RowStore.open(out_path, params) as store:
        have = [r.index for r in store.done]
        if have != assigned[: len(have)]:
            raise InputError(
                f"{store.path} holds rows for inputs {have[:5]}... that are not this run's first "
                f"{len(have)} inputs; pass another output path"
            )
        rows = store.done[: len(assigned)]
        todo = assigned[len(rows) :]
        per_call = inputs_per_call or certifier.inputs_per_call
        if progress is not None:
            progress(len(rows), len(assigned))
        for start in range(0, len(todo), per_call):
            group = todo[start : start + per_call]
            idx = torch.tensor(group, dtype=torch.int64)
            x = images[idx].to(device)
            gens = [torch.Generator(device=device).manual_seed(input_seed(seed, i)) for i in group]
            t0 = time.perf_counter()
            cert = certifier.certify(x, gens)
            new = _rows_of(certifier, cert, group, labels[idx], time.perf_counter() - t0)
            store.append(new)
            rows.extend(new)
            if progress is not None:
                progress(len(rows), len(assigned))
    return rows


def certify_dataset(
    certifier: Certifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    out_path: str | os.PathLike,
    skip: int = 1,
    max_inputs: int | None = None,
    seed: int = 0,
    inputs_per_call: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Progress | None = None,
) -> list[CertificationRow]:
    """Certify every ``skip``-th image with ``certifier``, one JSONL row per input.

    Args:
        certifier: a ``Certifier`` (e.g. ``smoothing_certifiers.CohenCertifier``).
        images: float [N, C, H, W] in [0, 1] (moved to ``certifier.device`` in groups).
        labels: int64 [N].
        out_path: the JSONL file (appended to and resumed; see the module docstring).
        skip: certify every ``skip``-th image (Cohen et al. use 20 on CIFAR-10's test set).
        max_inputs: certify at most this many images (None: all selected).
        seed: run seed; input ``i`` uses a generator seeded with ``input_seed(seed, i)``.
        inputs_per_call: inputs certified together (rows are written after each group);
            default ``certifier.inputs_per_call``. Results do not depend on it.
        rank, world_size: this process's shard (None: from torch.distributed or the
            ``RANK``/``WORLD_SIZE`` environment of torchrun).
        progress: ``progress(done, total)`` after each group.

    Returns:
        The rows, sorted by index (on rank 0 of several: the merged rows; on other ranks:
        that rank's rows).
    """
    shard = dist_info(rank, world_size)
    kwargs: dict[str, Any] = dict(skip=skip, max_inputs=max_inputs, seed=seed,
                                  inputs_per_call=inputs_per_call, progress=progress)
    if shard.world_size == 1:
        return certify_shard(certifier, images, labels, out_path=out_path, **kwargs)
    r, w = shard.rank, shard.world_size
    rows = certify_shard(certifier, images, labels, out_path=shard_path(out_path, r, w),
                         rank=r, world_size=w, **kwargs)
    _barrier()
    if r == 0:
        rows = merge_shards(out_path, w)
    _barrier()
    return rows


__all__ = [
    "Certifier",
    "Progress",
    "Shard",
    "certify_dataset",
    "certify_shard",
    "dist_info",
    "input_seed",
    "selected_indices",
]
