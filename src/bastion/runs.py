"""Run folders: train from a config, load a trained model, evaluate and record.

These are the library functions behind ``bastion train`` and ``bastion eval``; the CLI
only parses arguments and shows progress.

A run folder is a transaction log (layout in ``bastion.train.checkpoint``). What
``train_from_config`` promises:

- **Nothing is written before everything is validated.** The whole config is checked and
  the method, datasets, model, optimizer, schedule and per-epoch evaluation are built
  first; a config that fails leaves the folder untouched (no ``config.yaml``, no
  ``model.json``).
- **One writer at a time.** The whole of training holds the folder's OS lock
  (``bastion.train.run_lock.run_lock``, released by the kernel if the process dies,
  ``kill -9`` included); a second writer gets ``RunLockedError`` naming the holder's pid
  and writes nothing.
- **The config is bound to the weights.** Every checkpoint holds the resolved config it
  was trained with (``run_config.json``) and its history. A rerun resumes the last
  checkpoint only if its config equals the checkpoint's (compared as parsed
  ``TrainConfig``, so a key added to bastion later, at its default, does not block an
  older run); otherwise it refuses with ``RunFolderError`` naming the differing keys.
  ``config.yaml`` is rewritten on every start and so always describes the saved weights.
  (Checkpoints written before configs were saved with them are compared with
  ``config.yaml``; without one they are refused.)
- **Starting over is explicit.** A start that does not resume (``resume=False``,
  ``bastion train --no-resume``) into a folder that holds results (checkpoints,
  ``history.jsonl``, ``eval/``, ``certify/``) is refused unless ``overwrite=True``
  (``bastion train --overwrite``). With ``overwrite`` the old run -- its checkpoints,
  history, eval and certify records, config.yaml and model.json -- is moved aside to
  ``run_dir/.replaced-<time>/`` (itself a loadable run folder) before the new
  ``config.yaml`` is written, and training starts from scratch. ``--no-resume`` alone is
  therefore only useful on a folder without results; ``--overwrite`` implies it.
- **Interruptions repair themselves.** On every start, under the lock, the leftovers of an
  interrupted write (``.*.tmp`` files and folders, a checkpoint folder never committed by
  ``last.json``) are removed, and ``history.jsonl`` is rewritten from the checkpoint's
  history. So after a kill at any moment, rerunning the same command resumes exactly (or
  starts afresh if no epoch had finished), and a rerun of a finished run repairs
  ``history.jsonl`` and trains nothing.
- **What is loaded is checked.** ``load_model``, ``evaluate_run`` and resume refuse
  checkpoint pointers that lead outside ``run_dir/checkpoints`` and report truncated or
  corrupt files (safetensors, JSON, ``model.json``) as ``CheckpointError`` naming the file
  and the way to recover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion._validate import check_device
from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.certify.config import CertifyConfig
from bastion.certify.lipschitz import LipschitzCertifier
from bastion.certify.mmcert import MMCertCertifier, direction_certificates
from bastion.certify.pipeline import certify_dataset, dist_info
from bastion.certify.registry import smoothing_certifier
from bastion.certify.summary import summarize
from bastion.config import TrainConfig, dump_config, from_dict, read_config_file, to_dict
from bastion.config import validate as validate_config
from bastion.data import load_dataset
from bastion.errors import (
    BastionError,
    CheckpointError,
    ConfigError,
    InputError,
    InputTypeError,
    MissingFileError,
    RunFolderError,
)
from bastion.metrics import certified_accuracy
from bastion.models import architecture_signature, build
from bastion.models.ablation import layout_of
from bastion.noise import from_std
from bastion.preprocess import Defended
from bastion.preprocess.registry import build_preprocessor, resolved_options
from bastion.records import CertificationRow, EvalResult, History
from bastion.records.io import atomic_write_bytes, atomic_write_json, save_record
from bastion.train.checkpoint import (
    Which,
    checkpoint_dir,
    clean_stale,
    load_model_state,
    load_run_config,
)
from bastion.train.evaluation import EvalPlan, per_epoch_evaluation
from bastion.train.loop import fit
from bastion.train.registry import build_method
from bastion.train.run_lock import run_lock
from bastion.train.schedules import build_scheduler
from bastion.train.subsampling import FixedSubsamples, SubSampledTraining

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
    try:
        check_device(name, "device")
    except InputError as err:
        raise ConfigError(str(err)) from None
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
    """What ``load_model`` needs to rebuild the architecture of a run.

    A run with a ``preprocess`` section also records the defense (``"preprocess"``: name,
    resolved options, ``freeze_model``), so ``load_model`` rebuilds ``Defended(defense,
    classifier)``.
    """
    meta = _classifier_metadata(cfg, num_classes, shape)
    if cfg.preprocess is not None:
        p = cfg.preprocess
        meta["preprocess"] = {
            "name": p.name,
            "options": resolved_options(p.name, p.options, in_channels=shape[0]),
            "freeze_model": p.freeze_model,
        }
    return meta


def _classifier_metadata(cfg: TrainConfig, num_classes: int,
                         shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "architecture": cfg.model,
        "build": {
            "num_classes": num_classes,
            "in_channels": shape[0],
            # (H, W) for a non-square input (e.g. two views side by side), else the side
            "input_size": shape[1] if shape[1] == shape[-1] else [shape[1], shape[-1]],
            "dataset": cfg.dataset,
            **cfg.model_options,
        },
        "dataset": cfg.dataset,
        "input_range": [0.0, 1.0],
        "input_shape": list(shape),
    }


def build_model_from_metadata(meta: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from ``model.json`` metadata (``Defended`` when the
    metadata names a pre-processing defense)."""
    model = build(meta["architecture"], **meta["build"])
    pre = meta.get("preprocess")
    if pre is None:
        return model
    defense = build_preprocessor(pre["name"], pre.get("options", {}))
    return Defended(defense, model, frozen_model=bool(pre.get("freeze_model", False)))


def defend(model: nn.Module, name: str, options: dict[str, Any] | None = None, *,
           in_channels: int | None = None) -> Defended:
    """``model`` behind the pre-processing defense ``name`` (untrained defenses only; a
    trained one, the guided denoiser, comes from its run: ``defense_from``)."""
    from bastion.preprocess.registry import TRAINED

    if name in TRAINED:
        raise InputError(f"defense {name!r} has trained weights: train it with a recipe "
                         f"(configs/{name}.yaml) and take it from that run folder "
                         "(bastion eval RUN_DIR --defense-from DEFENSE_RUN)")
    return Defended(build_preprocessor(name, options, in_channels=in_channels), model)


def defense_from(run_dir: str | os.PathLike, model: nn.Module,
                 device: str | torch.device = "cpu") -> Defended:
    """``model`` behind the (trained) defense of the defended run ``run_dir``."""
    trained = load_model(run_dir, "last", device)
    if not isinstance(trained, Defended):
        raise InputError(f"{run_dir} is not a defended run (its config has no preprocess "
                         "section), so it has no defense to take")
    return Defended(trained.preprocessor, model).to(device).eval()


def _init_from(model: nn.Module, init_from: str) -> None:
    """Load the last checkpoint of ``init_from`` into ``model``: the whole model, or only
    the classifier of a ``Defended`` model when ``init_from`` is an undefended run."""
    ckpt = checkpoint_dir(init_from, "last")
    if ckpt is None:
        raise MissingFileError(f"init_from: {init_from!r} has no finished checkpoint")
    meta_path = Path(init_from) / "model.json"
    source_defended = meta_path.is_file() and "preprocess" in _read_model_json(meta_path)
    target = model.model if isinstance(model, Defended) and not source_defended else model
    load_model_state(target, ckpt)
    log.info("initialised the %s from %s", "classifier" if target is not model else "model",
             ckpt)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    try:
        if o.name == "sgd":
            return torch.optim.SGD(
                model.parameters(),
                lr=o.lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                nesterov=o.nesterov,
            )
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    except ValueError as err:  # torch's own argument checks (e.g. Nesterov without momentum)
        raise ConfigError(f"optim: {err}") from None


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
    overwrite: bool = False,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train the model described by ``cfg`` into ``run_dir``, resuming its last checkpoint.

    Writes ``config.yaml`` (resolved), ``model.json``, checkpoints (each holding the
    config and history) and ``history.jsonl``. The module docstring has the rules; in
    short: everything is validated before anything is written; the folder's lock is held
    throughout (``RunLockedError`` if another process holds it); a checkpoint trained with
    another config is refused (``RunFolderError``); a start that does not resume into a
    folder holding results needs ``overwrite=True``, which moves the old run aside to
    ``run_dir/.replaced-<time>/`` first.

    Args:
        cfg: the run's config.
        run_dir: the run folder (created if missing).
        resume: continue from the last checkpoint when there is one (with the same
            config). False: start over, which a folder holding results allows only with
            ``overwrite``.
        overwrite: start over even if the folder holds a run, moving that run aside.
        on_batch: ``on_batch(epoch, step, steps_per_epoch)`` after each step.
        on_epoch: called with each epoch's record.
    """
    run_dir = Path(run_dir)
    # 1. validate and build everything; nothing is written before the lock is taken below.
    # (A TrainConfig checks its values when built; validate adds this machine's checks.)
    validate_config(cfg)
    device = resolve_device(cfg.device)
    method = build_method(cfg.method, **cfg.method_options)
    train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if cfg.train_subset is not None:
        train = train.subset(cfg.train_subset)
    torch.manual_seed(cfg.seed)
    init_distributed(device)
    model = build_model_from_metadata(model_metadata(cfg, train.num_classes, train.shape))
    model = model.to(device)
    if cfg.init_from is not None:
        _init_from(model, cfg.init_from)
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
    if isinstance(method, SubSampledTraining):
        # the base classifier is judged on fixed sub-samples of the test points (the inputs
        # it votes on), not on complete images it never saw
        if plan.attack is not None or plan.n_train:
            raise ConfigError("eval: a sub-sampling run evaluates clean accuracy on "
                              "sub-samples only; set eval.attack: null and eval.n_train: 0")
        evaluate = per_epoch_evaluation(plan, FixedSubsamples.of(
            test, method, layout_of(model), plan.n_test, seed=cfg.seed))
    else:
        evaluate = per_epoch_evaluation(plan, test, train)
    run_config = to_dict(cfg)
    try:
        json.dumps(run_config, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: a value cannot be saved with the checkpoints ({err})") from None
    cfg_text = dump_config(cfg)
    meta = {
        **model_metadata(cfg, train.num_classes, train.shape),
        "signature": architecture_signature(model),
    }
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {str(run_dir)!r} is a file, not a folder")
    # 2. everything is built and valid: from here on the folder is written, under its lock
    rank = int(os.environ.get("RANK", "0"))
    with run_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            _prepare_run_folder(run_dir, cfg, resume=resume, overwrite=overwrite)
            atomic_write_bytes(run_dir / "config.yaml", cfg_text.encode())
            atomic_write_json(run_dir / "model.json", meta)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks read the folder once rank 0 has prepared it
        return fit(
            model,
            method,
            train,
            optimizer,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            scheduler=scheduler,
            evaluate=evaluate,
            run_dir=run_dir,
            # after _prepare_run_folder the folder holds a checkpoint exactly when this
            # run resumes it (a start over moved the old one aside)
            resume=True,
            seed=cfg.seed,
            patience=cfg.patience,
            channels_last=cfg.channels_last,
            precision=cfg.precision,
            on_batch=on_batch,
            on_epoch=on_epoch,
            run_config=run_config,
            same_config=lambda saved, _new: _checkpoint_config(saved, run_dir) == cfg,
        )


_RESULTS = ("history.jsonl", "eval", "certify", "checkpoints")
"""What a run folder holds that belongs to its weights (moved aside together, weights last)."""


def _results(run_dir: Path) -> list[str]:
    """The entries of ``run_dir`` that record a run (an empty history or folder does not)."""
    held = []
    for name in _RESULTS:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            if any(p.iterdir()):
                held.append(name)
        elif p.is_symlink() or (p.exists() and p.stat().st_size > 0):
            held.append(name)
    return held


def _move_aside(run_dir: Path, names: list[str]) -> Path:
    """Move ``names`` (and the old config.yaml / model.json) to ``run_dir/.replaced-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir / f".replaced-{stamp}"
    k = 1
    while dest.exists():
        k += 1
        dest = run_dir / f".replaced-{stamp}-{k}"
    dest.mkdir()
    for name in [*names, "config.yaml", "model.json"]:
        src = run_dir / name
        if src.exists() or src.is_symlink():
            os.replace(src, dest / name)
    log.warning("moved the previous run of %s aside to %s", run_dir, dest)
    return dest


def _checkpoint_config(saved: Any, where: Path) -> TrainConfig:
    """The ``TrainConfig`` a checkpoint's ``run_config.json`` holds."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"the config saved with the last checkpoint of {where} is not a "
                              "mapping; start the run over with --overwrite")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return from_dict(TrainConfig, saved)
    except BastionError as err:
        raise RunFolderError(
            f"the config saved with the last checkpoint of {where} does not load in this "
            f"version of bastion ({err}); start the run over with --overwrite, or use "
            "another --out"
        ) from None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_diff(old: TrainConfig, new: TrainConfig) -> str:
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))
    parts = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys[:6]]
    if not parts:
        return "their values differ"
    return "; ".join(parts) + ("; ..." if len(keys) > 6 else "")


def _prepare_run_folder(run_dir: Path, cfg: TrainConfig, *, resume: bool,
                        overwrite: bool) -> None:
    """Under the lock: clean leftovers, then check that ``cfg`` may resume or start here."""
    clean_stale(run_dir)
    held = _results(run_dir)
    if overwrite:
        if held:
            _move_aside(run_dir, held)
        return
    if not resume:
        if held:
            raise RunFolderError(
                f"{run_dir} already holds a run ({', '.join(held)}); --no-resume starts over "
                "only together with --overwrite (overwrite=True), which moves the old run "
                f"aside to {run_dir}/.replaced-<time>/; or use another --out"
            )
        return
    last = checkpoint_dir(run_dir, "last")
    if last is None:
        if held:
            raise RunFolderError(
                f"{run_dir} holds results ({', '.join(held)}) but no checkpoint to resume; "
                "pass --overwrite (overwrite=True) to move them aside and start over, or use "
                "another --out"
            )
        return
    saved = load_run_config(last)
    if saved is not None:
        old = _checkpoint_config(saved, run_dir)
    elif (run_dir / "config.yaml").is_file():  # a checkpoint written before configs were
        old = load_config_of(run_dir)           # saved with checkpoints: config.yaml decides
    else:
        raise RunFolderError(
            f"{run_dir} holds a checkpoint ({last.name}) without its config (written by an "
            "older bastion) and no config.yaml, so what it was trained with is unknown; pass "
            "--overwrite (overwrite=True) to move it aside and start over, or use another --out"
        )
    if old != cfg:
        # compared as parsed configs: a key added to TrainConfig later (at its default)
        # does not block resuming an older run
        raise RunFolderError(
            f"{run_dir} holds a run with a different config ({_config_diff(old, cfg)}); "
            "resume it with the same config, pass --overwrite (overwrite=True) to move it "
            "aside and start over, or use another --out"
        )


def load_config_of(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config saved in a run folder (``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} is not a bastion run folder (no config.yaml)")
    data = read_config_file(path)  # ConfigError naming the file if it is not a YAML mapping
    try:
        return from_dict(TrainConfig, data)
    except BastionError as err:
        raise type(err)(f"{path}: {err}") from None


def read_history(run_dir: str | os.PathLike) -> History | None:
    """The run's ``history.jsonl`` as a ``History``, or None when the folder has none."""
    path = Path(run_dir) / "history.jsonl"
    return History.from_jsonl(path.read_text()) if path.is_file() else None


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
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{str(run_dir)!r} is a file; load_model takes a run folder "
                             "written by 'bastion train' (with model.json and checkpoints/)")
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {str(run_dir)!r} does not exist")
    meta_path = run_dir / "model.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{run_dir} has no model.json; is it a bastion run folder?")
    ckpt = checkpoint_dir(run_dir, which)
    if ckpt is None:
        raise MissingFileError(f"{run_dir} has no {which!r} checkpoint yet (no finished epoch)")
    model = build_model_from_metadata(_read_model_json(meta_path))
    load_model_state(model, ckpt)
    return model.to(device).eval()


def _read_model_json(path: Path) -> dict[str, Any]:
    """``model.json`` parsed and checked to hold what ``build_model_from_metadata`` needs."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); it is rewritten by rerunning "
                              "the run's 'bastion train' command") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("architecture"), str)
            and isinstance(meta.get("build"), dict)):
        raise CheckpointError(f'{path} does not describe a model (needs "architecture" and '
                              '"build"); it is rewritten by rerunning the run\'s '
                              "'bastion train' command")
    return meta


@dataclass(frozen=True)
class DefenseChoice:
    """A pre-processing defense put in front of a run's model at evaluation time.

    Either ``name`` (an untrained defense of ``preprocess.registry``, with ``options``) or
    ``from_run`` (the trained defense of a defended run, e.g. a guided denoiser).
    """

    name: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    from_run: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.from_run is None):
            raise InputError("a defense is either a name (--defense) or a defended run "
                             "(--defense-from), exactly one of the two")
        if self.name is not None:
            resolved_options(self.name, self.options)

    def tag(self) -> str:
        """A folder name for its records: the name and a hash of the options, or the run."""
        if self.from_run is not None:
            return f"from-{Path(self.from_run).resolve().name}"
        digest = json.dumps(self.options, sort_keys=True)
        import hashlib

        return f"{self.name}-{hashlib.sha256(digest.encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "from_run": self.from_run}

    def apply(self, model: nn.Module, in_channels: int,
              device: str | torch.device = "cpu") -> Defended:
        """``model`` behind this defense, on ``device``, in eval mode."""
        if self.from_run is not None:
            return defense_from(self.from_run, model, device)
        assert self.name is not None
        return defend(model, self.name, self.options, in_channels=in_channels).to(device).eval()


def eval_record_path(
    run_dir: str | os.PathLike, attack: AttackSpec, n: int, which: Which = "last",
    defense: DefenseChoice | None = None,
) -> Path:
    """Where ``evaluate_run`` saves the record of ``attack`` on the first ``n`` test points
    (``eval/<defense tag>/`` for a defense added at evaluation time)."""
    name = f"{attack.name}-{attack.norm}-eps{attack.eps:g}-steps{attack.steps}-n{n}-{which}.json"
    return _eval_folder(run_dir, defense) / name


def _eval_folder(run_dir: str | os.PathLike, defense: DefenseChoice | None) -> Path:
    folder = Path(run_dir) / "eval"
    return folder / defense.tag() if defense is not None else folder


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
    defense: DefenseChoice | None = None,
) -> EvalResult:
    """Attack a run's model on its first ``n`` test points; save the record in ``run_dir/eval``.

    ``defense`` puts a pre-processing defense in front of the run's model first (a run
    trained with a ``preprocess`` section already has its own: ``load_model`` returns it).
    Returns the ``EvalResult``; it is saved (atomically) at ``eval_record_path(run_dir,
    attack, n, which, defense)``.
    """
    model, test = _eval_model(run_dir, which, device, defense, n)
    result = evaluate_attack(
        model,
        test.images[:n],
        test.labels[:n],
        attack,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    result = _with_run_params(result, model, which, n, defense)
    if int(os.environ.get("RANK", "0")) == 0:
        save_record(eval_record_path(run_dir, attack, n, which, defense), result)
    return result


def _eval_model(run_dir: str | os.PathLike, which: Which, device: str,
                defense: DefenseChoice | None, n: int) -> tuple[nn.Module, Any]:
    """The model to evaluate (behind ``defense`` if given) and the run's test set."""
    cfg = load_config_of(run_dir)
    dev = resolve_device(device)
    init_distributed(dev)  # under torchrun the ranks share the points, one record
    model = load_model(run_dir, which, dev)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if defense is not None:
        if isinstance(model, Defended):
            raise InputError(f"{run_dir} is already a defended run "
                             f"({type(model.preprocessor).__name__}); evaluate it without "
                             "--defense, or evaluate its classifier's run with one")
        model = defense.apply(model, test.shape[0], dev)
    if not 1 <= n <= len(test):
        raise InputError(f"n must be in [1, {len(test)}], got {n}")
    return model, test


def _with_run_params(result: EvalResult, model: nn.Module, which: Which, n: int,
                     defense: DefenseChoice | None) -> EvalResult:
    params = {**result.params, "checkpoint": which, "n": n}
    if defense is not None:
        params["defense"] = defense.to_dict()
    if isinstance(model, Defended):
        params["preprocessor"] = {"class": type(model.preprocessor).__name__,
                                  **model.preprocessor.declaration()}
    return dataclasses.replace(result, params=params)


def minimal_record_path(run_dir: str | os.PathLike, attack: str, norm: str, steps: int, n: int,
                        which: Which = "last", defense: DefenseChoice | None = None) -> Path:
    """Where ``evaluate_minimal_run`` saves its record."""
    return _eval_folder(run_dir, defense) / f"{attack}-{norm}-steps{steps}-n{n}-{which}.json"


def evaluate_minimal_run(
    run_dir: str | os.PathLike,
    attack: str,
    *,
    norm: str = "l2",
    steps: int = 100,
    n: int = 1000,
    which: Which = "last",
    batch_size: int = 250,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    defense: DefenseChoice | None = None,
) -> EvalResult:
    """A minimal-perturbation attack (``fmn``, ``ddn``) on a run's first ``n`` test points
    (through BPDA when its defense is non-differentiable); saved at
    ``minimal_record_path``. The record's per-point norms give eq. (3)."""
    from bastion.attacks.eot import through_bpda_if_needed
    from bastion.attacks.evaluate import evaluate_minimal

    model, test = _eval_model(run_dir, which, device, defense, n)
    result = evaluate_minimal(through_bpda_if_needed(model), test.images[:n], test.labels[:n],
                              attack=attack, norm=norm, steps=steps, batch_size=batch_size,
                              seed=seed, progress=progress)  # type: ignore[arg-type]
    result = _with_run_params(result, model, which, n, defense)
    if int(os.environ.get("RANK", "0")) == 0:
        save_record(minimal_record_path(run_dir, attack, norm, steps, n, which, defense), result)
    return result


def run_is_randomized(run_dir: str | os.PathLike, defense: DefenseChoice | None) -> bool:
    """Whether the model ``evaluate_run`` attacks draws randomness (its defense declares
    ``randomized``), read from the defense's class without loading any weights."""
    from bastion.preprocess.registry import PREPROCESSORS

    if defense is not None and defense.name is not None:
        return PREPROCESSORS[defense.name].randomized
    src = Path(defense.from_run) if defense is not None and defense.from_run else Path(run_dir)
    meta_path = src / "model.json"
    if not meta_path.is_file():
        return False
    pre = _read_model_json(meta_path).get("preprocess")
    return bool(pre) and PREPROCESSORS[pre["name"]].randomized


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


LIPSCHITZ_METHODS: tuple[str, ...] = ("gram", "svd")
"""Sound bound methods ``certify_lipschitz_run`` accepts (``svd`` only for small layers)."""


def lipschitz_record_path(run_dir: str | os.PathLike, *, method: str = "gram",
                          per_logit: bool = False, checkpoint: str = "last",
                          n_inputs: int | None = None, skip: int = 1) -> Path:
    """Where ``certify_lipschitz_run`` writes its rows by default:
    ``run_dir/certify/lipschitz-<method>[-per-logit]-<checkpoint>-skip<k>[-n<N>].jsonl``."""
    tag = f"lipschitz-{method}{'-per-logit' if per_logit else ''}-{checkpoint}-skip{skip}"
    if n_inputs is not None:
        tag += f"-n{n_inputs}"
    return Path(run_dir) / "certify" / f"{tag}.jsonl"


def certify_lipschitz_run(
    run_dir: str | os.PathLike,
    *,
    method: str = "gram",
    per_logit: bool = False,
    checkpoint: str = "last",
    n_inputs: int | None = None,
    skip: int = 1,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    radii: list[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CertifyRunResult:
    """Deterministic L2 certification of a run's test set by its Lipschitz margin (behind
    ``bastion certify-lipschitz``; ``certify.lipschitz.LipschitzCertifier``).

    The bound is computed once from the checkpoint's weights (sound Gram-iteration
    constants of every layer, float64), then every ``skip``-th test image (at most
    ``n_inputs``) costs one float64 forward pass. Rows go to ``out`` (default
    ``lipschitz_record_path``), resumed if it exists, in the same format as smoothing's,
    so ``summarize``, the plots and the report read both.

    Raises:
        InputError: for a bad setting, or a model that is not a chain of layers of known
            constant (residual networks, a pre-processing defense in front).
    """
    if method not in LIPSCHITZ_METHODS:
        raise InputError(f"unknown bound method {method!r}; valid: {', '.join(LIPSCHITZ_METHODS)}")
    if checkpoint not in ("last", "best"):
        raise InputError(f"checkpoint must be 'last' or 'best', got {checkpoint!r}")
    run_dir = Path(run_dir)
    cfg = load_config_of(run_dir)
    out_path = Path(out) if out is not None else lipschitz_record_path(
        run_dir, method=method, per_logit=per_logit, checkpoint=checkpoint,
        n_inputs=n_inputs, skip=skip)
    if out_path.is_dir():
        raise InputError(f"out must be a file path, got the folder {str(out_path)!r}")
    model = load_model(run_dir, checkpoint, resolve_device(device or cfg.device))
    if isinstance(model, Defended):
        raise InputError("a pre-processing defense has no Lipschitz certificate (its "
                         "transformation has no known constant); certify the classifier's run")
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    certifier = LipschitzCertifier(model=model, num_classes=test.num_classes, method=method,
                                   per_logit=per_logit)
    rows = certify_dataset(certifier, test.images, test.labels, out_path=out_path, skip=skip,
                           max_inputs=n_inputs, progress=progress)
    if dist_info().rank != 0:
        return CertifyRunResult(rows, None, out_path)
    return CertifyRunResult(rows, summarize(rows, radii, norm="l2"), out_path)


def mmcert_record_path(run_dir: str | os.PathLike, *, keep: tuple[int, ...], n: int,
                       operations: str = "modify", bound: str = "top2",
                       checkpoint: str = "last", n_inputs: int | None = None,
                       skip: int = 1) -> Path:
    """Where ``certify_mmcert_run`` writes its rows by default: ``run_dir/certify/
    <mmcert|ablation>-k<k1>x<k2>-n<N>-<operations>-<checkpoint>-skip<s>[-n<M>].jsonl``."""
    name = "mmcert" if bound == "top2" else "ablation"
    tag = (f"{name}-k{'x'.join(str(k) for k in keep)}-n{n}-{operations}-{checkpoint}"
           f"-skip{skip}")
    if n_inputs is not None:
        tag += f"-n{n_inputs}"
    return Path(run_dir) / "certify" / f"{tag}.jsonl"


def certify_mmcert_run(
    run_dir: str | os.PathLike,
    *,
    keep: tuple[int, ...] | None = None,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    operations: str = "modify",
    bound: str = "top2",
    checkpoint: str = "last",
    n_inputs: int | None = None,
    skip: int = 1,
    batch_size: int = 1000,
    directions: dict[str, tuple[int, ...]] | None = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    budgets: list[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CertifyRunResult:
    """Certify a sub-sampling run's test set with MMCert (behind ``bastion certify-mmcert``;
    ``certify.mmcert.MMCertCertifier``, arXiv 2403.19080).

    ``keep`` defaults to the counts the run was trained with (its ``subsample`` method's
    ``keep``). Rows go to ``out`` (default ``mmcert_record_path``), resumed if it exists.
    The summary holds, per direction (``joint`` and each modality alone), the certified
    accuracy at each of ``budgets`` (elements per modality; default 0, 1, 2, 4, ... up to the
    largest radius). ``directions`` (name -> weights per modality, e.g. ``{"ratio": (1,
    2)}`` for ``r_2 = 2 r_1``) replaces the default ones; the first is the rows' ``radius``.

    Raises:
        InputError: for a bad setting, or a model that does not read sub-sampled inputs.
    """
    if checkpoint not in ("last", "best"):
        raise InputError(f"checkpoint must be 'last' or 'best', got {checkpoint!r}")
    run_dir = Path(run_dir)
    cfg = load_config_of(run_dir)
    if keep is None:
        if cfg.method != "subsample":
            raise InputError("pass keep: this run was not trained with the 'subsample' method")
        keep = build_method(cfg.method, **cfg.method_options).keep
    model = load_model(run_dir, checkpoint, resolve_device(device or cfg.device))
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    keep = layout_of(model).per_modality(keep)
    certifier = MMCertCertifier(model=model, num_classes=test.num_classes, keep=keep, n0=n0,
                                n=n, alpha=alpha, operations=operations, bound=bound,
                                batch_size=batch_size, directions=directions,
                                direction=next(iter(directions)) if directions else "joint")
    out_path = Path(out) if out is not None else mmcert_record_path(
        run_dir, keep=keep, n=n, operations=operations, bound=bound, checkpoint=checkpoint,
        n_inputs=n_inputs, skip=skip)
    if out_path.is_dir():
        raise InputError(f"out must be a file path, got the folder {str(out_path)!r}")
    rows = certify_dataset(certifier, test.images, test.labels, out_path=out_path, skip=skip,
                           max_inputs=n_inputs, progress=progress)
    if dist_info().rank != 0:
        return CertifyRunResult(rows, None, out_path)
    return CertifyRunResult(rows, mmcert_summary(rows, budgets), out_path)


def mmcert_summary(rows: list[CertificationRow], budgets: list[int] | None = None
                   ) -> dict[str, Any]:
    """Per direction: certified accuracy at each budget (default 0, 1, 2, 4, ...), the
    mean certified budget of correct points, and the wall time."""
    certs = direction_certificates(rows)
    if budgets is None:
        top = max(int(c.radius.max()) for c in certs.values())
        budgets = [0] + [2 ** i for i in range(max(1, top.bit_length() + 1))]
    out: dict[str, Any] = {"n": len(rows), "budgets": [int(b) for b in budgets],
                           "seconds": float(sum(float(r.seconds) for r in rows))}
    out["seconds_per_input"] = out["seconds"] / len(rows)
    for name, cert in certs.items():
        labels = cert.labels
        assert labels is not None
        acc = certified_accuracy(cert, labels, [float(b) for b in budgets])
        correct = (cert.prediction == labels) & ~cert.abstained
        out[name] = {"certified_accuracy": [float(a) for a in acc],
                     "mean_budget": float(torch.where(correct, cert.radius, 0.0).mean())}
    return out


__all__ = [
    "CertifyRunResult",
    "LIPSCHITZ_METHODS",
    "certify_lipschitz_run",
    "certify_mmcert_run",
    "mmcert_record_path",
    "mmcert_summary",
    "lipschitz_record_path",
    "certify_record_path",
    "certify_run",
    "eval_record_path",
    "evaluate_run",
    "load_config_of",
    "load_model",
    "read_history",
    "resolve_device",
    "train_from_config",
    "to_dict",
]
