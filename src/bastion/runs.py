"""Run folders: train from a config, load a trained model, evaluate and record.

These are the library functions behind ``bastion train`` and ``bastion eval``; the CLI
only parses arguments and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.certify.config import CertifyConfig
from bastion.certify.pipeline import certify_dataset, dist_info
from bastion.certify.registry import smoothing_certifier
from bastion.certify.summary import summarize
from bastion.config import TrainConfig, dump_config, from_dict, to_dict
from bastion.data import load_dataset
from bastion.errors import InputError, InputTypeError, MissingFileError
from bastion.models import architecture_signature, build
from bastion.noise import from_std
from bastion.records import CertificationRow, EvalResult, History
from bastion.records.io import atomic_write_bytes, atomic_write_json, save_record
from bastion.train.checkpoint import Which, checkpoint_dir, load_model_state
from bastion.train.evaluation import EvalPlan, per_epoch_evaluation
from bastion.train.loop import fit
from bastion.train.registry import build_method
from bastion.train.schedules import build_scheduler

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the current accelerator if there is one, else the CPU; or an explicit name.

    Under ``torchrun`` the accelerator index is the process's ``LOCAL_RANK``.
    """
    if name == "auto":
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if acc is None:
            return torch.device("cpu")
        return torch.device(acc.type, int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1).

    The backend is the default for the device (gloo on CPU, nccl on NVIDIA GPUs). Returns
    whether a process group is active. Does nothing when one is already initialised.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if device.type != "cpu":
            torch.accelerator.set_device_index(device.index or 0)
        dist.init_process_group(dist.get_default_backend_for_device(device))
    return True


def model_metadata(cfg: TrainConfig, num_classes: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild the architecture of a run."""
    return {
        "architecture": cfg.model,
        "build": {
            "num_classes": num_classes,
            "in_channels": shape[0],
            "input_size": shape[1],
            "dataset": cfg.dataset,
            **cfg.model_options,
        },
        "dataset": cfg.dataset,
        "input_range": [0.0, 1.0],
        "input_shape": list(shape),
    }


def build_model_from_metadata(meta: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from ``model.json`` metadata."""
    return build(meta["architecture"], **meta["build"])


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def eval_attack(cfg: TrainConfig) -> AttackSpec | None:
    """The per-epoch attack of a config (None: clean accuracy only), in ``cfg.eval.threat``."""
    e = cfg.eval
    if e.attack is None:
        return None
    return AttackSpec(name=e.attack, threat=e.threat)


def train_from_config(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train the model described by ``cfg`` into ``run_dir`` (resuming if it has a checkpoint).

    Writes ``config.yaml`` (resolved), ``model.json``, checkpoints and ``history.jsonl``.
    Refuses to resume a folder whose saved config differs from ``cfg``.
    """
    run_dir = Path(run_dir)
    method = build_method(cfg.method, **cfg.method_options)
    train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if cfg.train_subset is not None:
        train = train.subset(cfg.train_subset)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    init_distributed(device)
    model = build(
        cfg.model,
        num_classes=train.num_classes,
        in_channels=train.shape[0],
        input_size=train.shape[1],
        dataset=cfg.dataset,
        **cfg.model_options,
    ).to(device)
    if cfg.init_from is not None:
        ckpt = checkpoint_dir(cfg.init_from, "last")
        if ckpt is None:
            raise MissingFileError(f"init_from: {cfg.init_from!r} has no finished checkpoint")
        load_model_state(model, ckpt)
        log.info("initialised the model from %s", ckpt)
    cfg_text = dump_config(cfg)
    saved = run_dir / "config.yaml"
    resuming = resume and saved.exists() and checkpoint_dir(run_dir, "last") is not None
    if resuming and load_config_of(run_dir) != cfg:
        # compared as parsed configs: a key added to TrainConfig later (at its default)
        # does not block resuming an older run
        raise InputError(
            f"{run_dir} holds a run with a different config; resume it with the same "
            "config, or pass another --out (or --no-resume to start over)"
        )
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        atomic_write_bytes(saved, cfg_text.encode())
        atomic_write_json(
            run_dir / "model.json",
            {
                **model_metadata(cfg, train.num_classes, train.shape),
                "signature": architecture_signature(model),
            },
        )
    optimizer = _optimizer(model, cfg)
    steps = max(1, len(train) // cfg.batch_size) * cfg.epochs
    scheduler = build_scheduler(optimizer, cfg.schedule, steps)
    plan = EvalPlan(
        attack=eval_attack(cfg),
        n_test=cfg.eval.n_test,
        n_train=cfg.eval.n_train,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
    )
    return fit(
        model,
        method,
        train,
        optimizer,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        scheduler=scheduler,
        evaluate=per_epoch_evaluation(plan, test, train),
        run_dir=run_dir,
        resume=resume,
        seed=cfg.seed,
        patience=cfg.patience,
        channels_last=cfg.channels_last,
        on_batch=on_batch,
        on_epoch=on_epoch,
    )


def load_config_of(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config saved in a run folder."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} is not a bastion run folder (no config.yaml)")
    return from_dict(TrainConfig, yaml.safe_load(path.read_text()))


def load_model(
    run_dir: str | os.PathLike, which: Which = "last", device: str | torch.device = "cpu"
) -> nn.Module:
    """The trained model of a run: Normalize first, eval mode, inputs NCHW in [0, 1].

    Args:
        run_dir: a folder written by ``bastion train``.
        which: ``"last"`` (end of training) or ``"best"`` (best robust test accuracy).
        device: where to put the model.

    Example (attack it with torchattacks)::

        model = bastion.load_model("runs/pgd-at")
        atk = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=20)
        x_adv = atk(x, y)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {str(run_dir)!r} does not exist")
    meta_path = run_dir / "model.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{run_dir} has no model.json; is it a bastion run folder?")
    ckpt = checkpoint_dir(run_dir, which)
    if ckpt is None:
        raise MissingFileError(f"{run_dir} has no {which!r} checkpoint yet (no finished epoch)")
    model = build_model_from_metadata(json.loads(meta_path.read_text()))
    load_model_state(model, ckpt)
    return model.to(device).eval()


def eval_record_path(
    run_dir: str | os.PathLike, attack: AttackSpec, n: int, which: Which = "last"
) -> Path:
    """Where ``evaluate_run`` saves the record of ``attack`` on the first ``n`` test points."""
    name = f"{attack.name}-{attack.norm}-eps{attack.eps:g}-steps{attack.steps}-n{n}-{which}.json"
    return Path(run_dir) / "eval" / name


def evaluate_run(
    run_dir: str | os.PathLike,
    attack: AttackSpec,
    *,
    n: int = 1000,
    which: Which = "last",
    batch_size: int = 250,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Attack a run's model on its first ``n`` test points; save the record in ``run_dir/eval``.

    Returns the ``EvalResult``; it is saved (atomically) at ``eval_record_path(run_dir,
    attack, n, which)``.
    """
    cfg = load_config_of(run_dir)
    model = load_model(run_dir, which, resolve_device(device))
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if not 1 <= n <= len(test):
        raise InputError(f"n must be in [1, {len(test)}], got {n}")
    result = evaluate_attack(
        model,
        test.images[:n],
        test.labels[:n],
        attack,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    result = dataclasses.replace(result, params={**result.params, "checkpoint": which, "n": n})
    save_record(eval_record_path(run_dir, attack, n, which), result)
    return result


@dataclass(frozen=True)
class CertifyRunResult:
    """What ``certify_run`` produced: rows (rank 0: all), summary and the rows file.

    ``summary`` is None on ranks other than 0.
    """

    rows: list[CertificationRow]
    summary: dict[str, Any] | None
    out_path: Path


def certify_record_path(run_dir: str | os.PathLike, config: CertifyConfig) -> Path:
    """Where ``certify_run`` writes its rows by default:
    ``run_dir/certify/<config.file_tag()>.jsonl``, a name that spells out every setting
    that changes the rows (noise, sigma, n0, n, alpha, seed, skip, n_inputs, radius,
    two_class, precision, checkpoint)."""
    return Path(run_dir) / "certify" / f"{config.file_tag()}.jsonl"


def certify_run(
    run_dir: str | os.PathLike,
    config: CertifyConfig,
    *,
    out: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CertifyRunResult:
    """Certify a trained run's test set with randomized smoothing (behind ``bastion certify``).

    Loads the run's model (``config.checkpoint``) and test set, builds the noise with
    per-coordinate standard deviation ``config.sigma`` (``noise.from_std``) and certifies
    every ``skip``-th test image (at most ``n_inputs``) with CERTIFY, or the sequential test
    at ``config.radius``, into ``out`` (default ``certify_record_path(run_dir, config)``;
    resumed if it exists). On rank 0 it then summarises the rows
    (``bench.plots.plot_certified_accuracy`` draws them). ``config`` is validated when it
    is built, and everything else (the run folder, the certifier's settings) before any
    file is written.
    """
    if not isinstance(config, CertifyConfig):
        raise InputTypeError(f"config must be a CertifyConfig, got {type(config).__name__}")
    run_dir = Path(run_dir)
    cfg = load_config_of(run_dir)
    out_path = Path(out) if out is not None else certify_record_path(run_dir, config)
    if out_path.is_dir():
        raise InputError(f"out must be a file path, got the folder {str(out_path)!r}")
    model = load_model(run_dir, config.checkpoint, resolve_device(config.device))
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    noise = from_std(config.noise, config.sigma)
    certifier = smoothing_certifier(
        model, noise, num_classes=test.num_classes, n0=config.n0, n=config.n,
        alpha=config.alpha, radius=config.radius, two_class=config.two_class,
        batch_size=config.batch_size, precision=config.precision,
    )
    rows = certify_dataset(
        certifier, test.images, test.labels, out_path=out_path, skip=config.skip,
        max_inputs=config.n_inputs, seed=config.seed, progress=progress,
    )
    if dist_info().rank != 0:
        return CertifyRunResult(rows, None, out_path)
    return CertifyRunResult(rows, summarize(rows, norm=noise.norm), out_path)


__all__ = [
    "CertifyRunResult",
    "certify_record_path",
    "certify_run",
    "eval_record_path",
    "evaluate_run",
    "load_config_of",
    "load_model",
    "resolve_device",
    "train_from_config",
    "to_dict",
]
