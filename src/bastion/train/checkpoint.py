"""Atomic, pickle-free checkpoints of a training run, and loading a trained model.

Layout of a run folder::

    run_dir/
      config.yaml            resolved configuration (written by the CLI)
      model.json             architecture metadata (name, build kwargs, tensor shapes)
      history.jsonl          one JSON line per finished epoch
      checkpoints/epoch-0003/ model.safetensors, train_state.safetensors, train_state.json
      checkpoints/last.json  {"dir": "epoch-0003", "epoch": 3}   (atomically replaced)
      checkpoints/best.json  the checkpoint with the best robust test accuracy

A checkpoint folder is written under a temporary name and renamed when complete; the
pointer files are replaced atomically last. An interruption at any moment leaves the
previous complete checkpoint in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file, save_file
from torch import nn

from bastion.errors import InputError
from bastion.records.io import atomic_write_json
from bastion.train.state_io import join_state, split_state

log = logging.getLogger(__name__)

Which = Literal["last", "best"]


def save_checkpoint(
    run_dir: str | os.PathLike,
    epoch: int,
    model: nn.Module,
    train_state: dict[str, Any],
    *,
    is_best: bool,
) -> Path:
    """Write the checkpoint of a finished epoch (1-based ``epoch``) and update pointers.

    Args:
        run_dir: the run folder.
        epoch: number of finished epochs.
        model: the (unwrapped) model; its state goes to ``model.safetensors``.
        train_state: everything else to resume (optimizer, scheduler, RNG states, method
            state, history, counters): nested dicts of tensors and JSON scalars.
        is_best: also point ``best.json`` at this checkpoint.
    """
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    tmp = ckdir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    split = split_state(train_state)
    save_file(split.tensors, str(tmp / "train_state.safetensors"))
    (tmp / "train_state.json").write_text(json.dumps(split.skeleton))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = {"dir": name, "epoch": epoch}
    atomic_write_json(ckdir / "last.json", pointer)
    if is_best:
        atomic_write_json(ckdir / "best.json", pointer)
    _prune(ckdir)
    return final


def _prune(ckdir: Path) -> None:
    keep = {json.loads((ckdir / p).read_text())["dir"] for p in ("last.json", "best.json")
            if (ckdir / p).exists()}
    for d in ckdir.glob("epoch-*"):
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def checkpoint_dir(run_dir: str | os.PathLike, which: Which = "last") -> Path | None:
    """The folder of the ``last`` or ``best`` checkpoint, or None if there is none."""
    if which not in ("last", "best"):
        raise InputError(f"unknown checkpoint {which!r}; valid: 'last', 'best'")
    pointer = Path(run_dir) / "checkpoints" / f"{which}.json"
    if not pointer.exists():
        return None
    return pointer.parent / json.loads(pointer.read_text())["dir"]


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """The ``train_state`` saved in checkpoint folder ``ckpt``."""
    skeleton = json.loads((ckpt / "train_state.json").read_text())
    return join_state(skeleton, load_file(str(ckpt / "train_state.safetensors")))


def load_model_state(model: nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` from ``ckpt`` into ``model`` after checking it fits."""
    from bastion.models import check_state_dict_matches

    state = load_file(str(ckpt / "model.safetensors"))
    check_state_dict_matches(model, state)
    model.load_state_dict(state)
