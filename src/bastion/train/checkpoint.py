"""Atomic, pickle-free checkpoints of a training run, and loading a trained model.

Layout of a run folder::

    run_dir/
      .lock                  the writer lock (``train.run_lock``; pid of the last holder)
      config.yaml            resolved configuration (written by ``runs.train_from_config``)
      model.json             architecture metadata (name, build kwargs, tensor shapes)
      history.jsonl          one JSON line per finished epoch (a copy of the checkpoint's)
      checkpoints/epoch-0003/ model.safetensors, train_state.safetensors, train_state.json,
                             run_config.json (the resolved config these weights belong to)
      checkpoints/last.json  {"dir": "epoch-0003", "epoch": 3}   (atomically replaced)
      checkpoints/best.json  the checkpoint with the best robust test accuracy

A checkpoint folder is written under a temporary name (``.epoch-0003.tmp``), fsynced and
renamed when complete; the pointer files are replaced atomically last, so ``last.json`` is
the commit point: an interruption at any moment leaves the previous complete checkpoint in
place. The training history and the run's config are part of the checkpoint
(``train_state.json`` and ``run_config.json``), so they can never describe other weights.

Everything read back is checked: a pointer must name a folder ``epoch-NNNN`` directly
inside ``run_dir/checkpoints`` (no absolute path, no ``..``, no symlink leading out), the
files read must be regular files inside it, and a truncated or corrupt file raises
``CheckpointError`` naming it and saying how to recover -- never a raw safetensors or JSON
error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bastion.errors import BastionError, CheckpointError, InputError
from bastion.records.io import atomic_write_json
from bastion.train.state_io import join_state, split_state

log = logging.getLogger(__name__)

Which = Literal["last", "best"]

RUN_CONFIG = "run_config.json"
"""The file of a checkpoint folder that holds the run's resolved config (JSON)."""

_NAME = re.compile(r"epoch-\d{4,}")


def _recovery(run_dir: Path) -> str:
    return (f"to recover, start the run over with 'bastion train CONFIG --out {run_dir} "
            f"--overwrite' (it moves the damaged run aside to {run_dir}/.replaced-<time>/)")


def save_checkpoint(
    run_dir: str | os.PathLike,
    epoch: int,
    model: nn.Module,
    train_state: dict[str, Any],
    *,
    is_best: bool,
    run_config: Any = None,
) -> Path:
    """Write the checkpoint of a finished epoch (1-based ``epoch``) and update pointers.

    Args:
        run_dir: the run folder.
        epoch: number of finished epochs.
        model: the (unwrapped) model; its state goes to ``model.safetensors``.
        train_state: everything else to resume (optimizer, scheduler, RNG states, method
            state, history, counters): nested dicts of tensors and JSON scalars.
        is_best: also point ``best.json`` at this checkpoint.
        run_config: JSON-safe description of the run (the resolved config), saved as
            ``run_config.json`` in the same folder; None writes no such file.
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
    if run_config is not None:
        (tmp / RUN_CONFIG).write_text(json.dumps(run_config))
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


def repair_best_pointer(run_dir: str | os.PathLike, history: Any, best: float) -> None:
    """Point ``best.json`` at the epoch the last checkpoint's history says is best.

    ``save_checkpoint`` commits ``last.json`` first and ``best.json`` after it, so a kill
    between the two leaves ``best.json`` on an older checkpoint; when that epoch was the
    last one, no later epoch would ever fix it. On resume (under the run's lock) the loop
    calls this with the restored history and best score: the best epoch is the first one
    whose ``best_so_far`` reached ``best`` (scores only replace the best when strictly
    higher). Nothing happens when no epoch has a finite score or the pointer is right.

    Args:
        run_dir: the run folder.
        history: the restored ``records.History``.
        best: the restored best score (``-inf`` before any finite score).
    """
    if not best > float("-inf"):
        return
    epoch = next((e.epoch for e in history.epochs if e.best_so_far == best), None)
    if epoch is None:
        return
    ckdir = Path(run_dir) / "checkpoints"
    name = f"epoch-{epoch:04d}"
    if not (ckdir / name).is_dir():
        log.warning("%s: the best epoch %d has no checkpoint folder; best.json left as is",
                    run_dir, epoch)
        return
    current = checkpoint_dir(run_dir, "best")
    if current is not None and current.name == name:
        return
    log.warning("%s: best.json pointed at %s, not the best epoch %s; repaired", run_dir,
                None if current is None else current.name, name)
    atomic_write_json(ckdir / "best.json", {"dir": name, "epoch": epoch})
    _prune(ckdir)


def _pointed(ckdir: Path) -> set[str]:
    """The folder names ``last.json`` and ``best.json`` point at (CheckpointError if unreadable)."""
    run_dir = ckdir.parent
    return {d.name for w in ("last", "best") if (d := checkpoint_dir(run_dir, w)) is not None}


def _prune(ckdir: Path) -> None:
    keep = _pointed(ckdir)
    for d in ckdir.glob("epoch-*"):
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def clean_stale(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted write left behind; returns the removed paths.

    That is every ``.*.tmp`` file or folder (an atomic write or a checkpoint folder never
    renamed) in ``run_dir`` and ``run_dir/checkpoints``, and every ``epoch-*`` folder that
    no pointer names (renamed, but killed before ``last.json`` committed it). Call it only
    while holding the run's lock. Pointers that cannot be read leave the epoch folders
    alone (loading then reports them).
    """
    run_dir = Path(run_dir)
    ckdir = run_dir / "checkpoints"
    removed = []
    for folder in (run_dir, ckdir):
        if not folder.is_dir():
            continue
        for p in folder.glob(".*.tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if ckdir.is_dir():
        try:
            keep = _pointed(ckdir)
        except CheckpointError:
            keep = None
        if keep is not None:
            for d in ckdir.glob("epoch-*"):
                if d.name not in keep:
                    if d.is_dir() and not d.is_symlink():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink(missing_ok=True)
                    removed.append(d)
    for p in removed:
        log.info("removed %s, left by an interrupted write", p)
    return removed


def _read_json(path: Path, run_dir: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {_recovery(run_dir)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); {_recovery(run_dir)}") from None


def checkpoint_dir(run_dir: str | os.PathLike, which: Which = "last") -> Path | None:
    """The folder of the ``last`` or ``best`` checkpoint, or None if there is none.

    Raises ``CheckpointError`` naming the pointer file when it is unreadable, or when its
    ``"dir"`` is not an ``epoch-NNNN`` folder directly inside ``run_dir/checkpoints``
    (absolute paths, ``..`` and symlinks that lead elsewhere are refused) or is missing.
    """
    if which not in ("last", "best"):
        raise InputError(f"unknown checkpoint {which!r}; valid: 'last', 'best'")
    run_dir = Path(run_dir)
    pointer = run_dir / "checkpoints" / f"{which}.json"
    if not pointer.exists():
        return None
    data = _read_json(pointer, run_dir)
    name = data.get("dir") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f'{pointer} has no "dir" naming a checkpoint folder; '
                              f"{_recovery(run_dir)}")
    target = pointer.parent / name
    root = run_dir.resolve() / "checkpoints"
    if not _NAME.fullmatch(name) or target.resolve().parent != root:
        raise CheckpointError(
            f'{pointer} points outside {run_dir / "checkpoints"} ("dir": {name!r}), refused: '
            "a checkpoint pointer must name a folder epoch-NNNN inside it; write the right "
            f"name back, or {_recovery(run_dir)[len('to recover, '):]}"
        )
    if not target.is_dir():
        raise CheckpointError(f'{pointer} names {name!r}, which is not a folder in '
                              f'{run_dir / "checkpoints"}; {_recovery(run_dir)}')
    return target


def _member(ckpt: Path, name: str) -> Path:
    """``ckpt/name``, checked to be a regular file inside ``ckpt`` (no symlink out)."""
    path = ckpt / name
    run_dir = ckpt.parent.parent
    if path.is_symlink() or (path.exists() and path.resolve().parent != ckpt.resolve()):
        raise CheckpointError(f"{path} is a link; checkpoint files must be regular files "
                              f"inside {ckpt}; {_recovery(run_dir)}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {_recovery(run_dir)}")
    return path


def _load_tensors(path: Path) -> dict[str, Any]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); "
                              f"{_recovery(path.parent.parent.parent)}") from None


def load_run_config(ckpt: Path) -> Any:
    """The run config saved with checkpoint folder ``ckpt`` (None: written before configs
    were saved with checkpoints)."""
    if not (ckpt / RUN_CONFIG).exists() and not (ckpt / RUN_CONFIG).is_symlink():
        return None
    return _read_json(_member(ckpt, RUN_CONFIG), ckpt.parent.parent)


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """The ``train_state`` saved in checkpoint folder ``ckpt``."""
    skeleton = _read_json(_member(ckpt, "train_state.json"), ckpt.parent.parent)
    tensors = _load_tensors(_member(ckpt, "train_state.safetensors"))
    try:
        state = join_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{ckpt / 'train_state.json'} does not match {ckpt / 'train_state.safetensors'} "
            f"({err!r}); {_recovery(ckpt.parent.parent)}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt / 'train_state.json'} is not a training state; "
                              f"{_recovery(ckpt.parent.parent)}")
    return state


def load_model_state(model: nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` from ``ckpt`` into ``model`` after checking it fits."""
    from bastion.models import check_state_dict_matches

    state = _load_tensors(_member(ckpt, "model.safetensors"))
    check_state_dict_matches(model, state)
    try:
        model.load_state_dict(state)
    except BastionError:
        raise
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ckpt / 'model.safetensors'} does not load ({err}); "
                              f"{_recovery(ckpt.parent.parent)}") from None
