"""Run configuration: keyword-only frozen dataclasses <-> plain dicts <-> YAML.

YAML is read with ``yaml.safe_load``. Unknown or mistyped keys are errors that name the
valid keys; ``--set a.b=value`` overrides are parsed as YAML scalars and checked the same
way. ``dataclasses.replace`` is how to sweep.

Attack settings are one nested threat model (``attacks.threat.ThreatModel``) in both
places a run attacks: ``method_options: {threat: {eps: 0.1, steps: 7}}`` and
``eval: {attack: pgd, threat: {eps: 0.1, steps: 10}}`` (``--set eval.threat.steps=5``).
Configs written before, with flat ``eps`` / ``norm`` / ``steps`` / ``step_size`` keys in
either place, still load: the keys are folded into ``threat`` with a
``DeprecationWarning``.

Validation happens in two places, both before anything is written:

- ``TrainConfig.__post_init__`` checks every value that is wrong anywhere (ranges, names,
  the method and its options, the model and its option names), so a bad config cannot be
  built at all, also not by ``dataclasses.replace`` or from a run folder's ``config.yaml``.
- ``validate(cfg)`` adds the checks that depend on this machine and the dataset: the
  device exists here and the model builds for the dataset's image shape (on the meta
  device, no memory). ``load_config`` runs it;
  ``runs.train_from_config`` runs it before writing anything. (Loading a finished run's
  config for ``eval`` does not: a run trained on a GPU stays readable on a laptop.)

Every error names the key (``config.batch_size: must be an integer >= 1, got 0``); from
``load_config`` it also names the file and the ``--set`` overrides that touched the key.
A file that cannot be read as YAML, holds a ``!!python/...`` tag (``yaml.safe_load``
constructs no objects), is empty or is not a mapping raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import torch
import yaml

from bastion._validate import check_device
from bastion.attacks.spec import ATTACKS, AttackName, AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data.registry import DATASET_INFO, DATASETS, DatasetName
from bastion.errors import BastionError, ConfigError, InputError, InputTypeError, MissingFileError
from bastion.models.registry import MODELS, build, check_architecture
from bastion.preprocess.registry import PREPROCESSORS, TRAINED, resolved_options
from bastion.train.loop import PRECISIONS, check_precision
from bastion.train.registry import METHODS, build_method, canonical_method_options
from bastion.train.schedules import ScheduleConfig

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer: SGD (with momentum, Nesterov optional) or Adam; weight decay is L2."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The per-epoch (and final) evaluation: an attack on fixed test points.

    Args:
        attack: the attack's name (``attacks.spec.ATTACKS``); None: clean accuracy only.
        threat: its threat model (default ``ThreatModel()``: L-inf eps 0.1, 10 steps,
            step None = the evaluation rule of ``AttackSpec``, random start). From YAML a
            mapping, e.g. ``{eps: 0.1, norm: linf, steps: 10}``.
        n_test: number of fixed test points.
        n_train: number of fixed training points also measured (0: none).
        batch_size: evaluation batch size.
    """

    attack: AttackName | None = "pgd"
    threat: ThreatModel = ThreatModel()
    n_test: int = 1000
    n_train: int = 0
    batch_size: int = 500

    # The flat keys of configs written before ``threat`` (folded into it by ``from_dict``).
    LEGACY_THREAT_KEYS: typing.ClassVar[tuple[str, ...]] = ("eps", "norm", "steps", "step_size")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """A pre-processing defense in front of the run's classifier (``bastion.preprocess``).

    Args:
        name: the defense (``preprocess.registry.PREPROCESSORS``: ``tv``, ``resize-pad``,
            ``bit-depth``, ``jpeg``, ``hgd``).
        options: its keywords (e.g. ``{keep_prob: 0.5, lam: 0.03}`` for ``tv``).
        freeze_model: keep the classifier fixed (eval mode, no gradients) and train only
            the defense's own weights: the guided denoiser's recipe (``method: hgd``, the
            classifier from ``init_from``).

    The run's model is then ``Defended(defense, classifier)``, and ``load_model`` of the
    run returns that composition.
    """

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    freeze_model: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a ``bastion train`` run needs; ``repr`` is the log line.

    ``init_from`` names a finished run folder whose last checkpoint initialises the model
    (fine-tuning, e.g. MACER from a Gaussian-trained base classifier); the architecture
    must match.

    ``precision`` is the arithmetic of the training steps: ``"fp32"``, or ``"bf16"`` (each
    step's attack and training forward under bf16 autocast, parameters and optimizer in
    fp32; ``train.loop``). It is part of the run: a resume with another precision is
    refused. ``validate`` checks that torch can run bf16 autocast on the device.
    """

    dataset: DatasetName = "fashion-mnist"
    data_dir: str | None = None
    train_subset: int | None = None
    model: str = "small-cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    method: str = "standard"
    method_options: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    channels_last: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    patience: int | None = None
    device: str = "auto"
    eval: EvalConfig = field(default_factory=EvalConfig)
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        _check_method(self)
        # One stored form of the method's options: legacy flat attack keys folded into a
        # complete ``threat`` dict, so old and new spellings of a run compare equal.
        with _keyed("method_options"):
            opts = canonical_method_options(self.method, self.method_options)
        object.__setattr__(self, "method_options", opts)
        with _keyed("method_options"):
            build_method(self.method, **opts)  # every option checked by the method itself
        _check_values(self)


# ------------------------------------------------------------------------------ validation

_ROOT = "config"


def _fail(key: str, message: str) -> NoReturn:
    raise ConfigError(f"{_ROOT}.{key}: {message}")


class _keyed:
    """Re-raise a ``BastionError`` from the block with ``config.<key>: `` in front."""

    def __init__(self, key: str) -> None:
        self.prefix = f"{_ROOT}.{key}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, err: BaseException | None, tb: Any) -> bool:
        if isinstance(err, BastionError) and not str(err).startswith(self.prefix):
            raise _rewrap(err, f"{self.prefix}: {err}") from err
        return False


def _rewrap(err: BastionError, message: str) -> BastionError:
    """``err`` with another message; a value error of a config becomes a ``ConfigError``."""
    if isinstance(err, InputError):
        return ConfigError(message)
    return type(err)(message)


def _int(key: str, value: Any, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    also = " or null" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{_ROOT}.{key}: must be an integer >= {low}{also}, got {value!r}")
    if value < low:
        _fail(key, f"must be an integer >= {low}{also}, got {value!r}")


def _number(key: str, value: Any, *, low: float, low_open: bool = False,
            high: float | None = None, high_open: bool = True) -> None:
    """A finite number in the interval ``[low, high)`` (open or closed ends as given)."""
    lo = f"{'(' if low_open else '['}{low:g}"
    hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
    rng = f"a finite number in {lo}, {hi}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputTypeError(f"{_ROOT}.{key}: must be {rng}, got {value!r}")
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        _fail(key, f"must be {rng}, got {value!r}")


def _choice(key: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        _fail(key, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")


def _flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputTypeError(f"{_ROOT}.{key}: expected true or false, got {value!r}")


def _name(key: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise InputTypeError(f"{_ROOT}.{key}: expected a non-empty string"
                             f"{' or null' if optional else ''}, got {value!r}")


def _check_method(cfg: TrainConfig) -> None:
    if not isinstance(cfg.method, str) or cfg.method not in METHODS:
        _fail("method", f"unknown method {cfg.method!r}; valid choices: "
              f"{', '.join(sorted(METHODS))}")
    if not isinstance(cfg.method_options, Mapping):
        raise InputTypeError(f"{_ROOT}.method_options: expected a mapping, got "
                             f"{cfg.method_options!r}")


def _check_values(cfg: TrainConfig) -> None:
    """Every check of a ``TrainConfig`` that holds on any machine (see the module docstring)."""
    _choice("dataset", cfg.dataset, DATASETS)
    _name("data_dir", cfg.data_dir, optional=True)
    _int("train_subset", cfg.train_subset, 1, optional=True)
    if not isinstance(cfg.model, str) or cfg.model not in MODELS:
        _fail("model", f"unknown model {cfg.model!r}; valid names: {', '.join(sorted(MODELS))}")
    if not isinstance(cfg.model_options, Mapping):
        raise InputTypeError(f"{_ROOT}.model_options: expected a mapping, got "
                             f"{cfg.model_options!r}")
    with _keyed("model_options"):
        check_architecture(cfg.model, cfg.model_options)
    _name("init_from", cfg.init_from, optional=True)

    o = cfg.optim
    if not isinstance(o, OptimConfig):
        raise InputTypeError(f"{_ROOT}.optim: expected an OptimConfig, got {o!r}")
    _choice("optim.name", o.name, typing.get_args(typing.get_type_hints(OptimConfig)["name"]))
    _number("optim.lr", o.lr, low=0.0)  # 0 is allowed: frozen weights (init_from checks)
    _number("optim.momentum", o.momentum, low=0.0)
    _number("optim.weight_decay", o.weight_decay, low=0.0)
    _flag("optim.nesterov", o.nesterov)
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        _fail("optim.nesterov", f"Nesterov momentum needs optim.name 'sgd' and optim.momentum "
              f"> 0, got name {o.name!r}, momentum {o.momentum!r}")

    sc = cfg.schedule
    if not isinstance(sc, ScheduleConfig):
        raise InputTypeError(f"{_ROOT}.schedule: expected a ScheduleConfig, got {sc!r}")
    _choice("schedule.name", sc.name,
            typing.get_args(typing.get_type_hints(ScheduleConfig)["name"]))
    if not isinstance(sc.milestones, tuple | list):
        raise InputTypeError(f"{_ROOT}.schedule.milestones: expected a list of fractions of "
                             f"training in (0, 1), got {sc.milestones!r}")
    for i, m in enumerate(sc.milestones):
        _number(f"schedule.milestones[{i}]", m, low=0.0, low_open=True, high=1.0)
    _number("schedule.gamma", sc.gamma, low=0.0, low_open=True)
    _number("schedule.warmup", sc.warmup, low=0.0, high=1.0)

    _int("epochs", cfg.epochs, 1)
    _int("batch_size", cfg.batch_size, 1)
    _int("seed", cfg.seed, 0)
    if cfg.seed >= 2**63:
        _fail("seed", f"must be below 2^63, got {cfg.seed}")
    _flag("channels_last", cfg.channels_last)
    _choice("precision", cfg.precision, PRECISIONS)
    _int("patience", cfg.patience, 1, optional=True)
    _name("device", cfg.device)
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError, TypeError):
            _check_device_here(cfg.device)  # raises, naming the valid choices here

    _check_preprocess(cfg)

    e = cfg.eval
    if not isinstance(e, EvalConfig):
        raise InputTypeError(f"{_ROOT}.eval: expected an EvalConfig, got {e!r}")
    if e.attack is not None:
        _choice("eval.attack", e.attack, ATTACKS)
    if not isinstance(e.threat, ThreatModel):
        raise InputTypeError(f"{_ROOT}.eval.threat: expected a ThreatModel, got {e.threat!r}")
    _int("eval.n_test", e.n_test, 1)
    _int("eval.n_train", e.n_train, 0)
    _int("eval.batch_size", e.batch_size, 1)
    if e.attack is not None:
        with _keyed("eval"):
            AttackSpec(name=e.attack, threat=e.threat)


def _check_preprocess(cfg: TrainConfig) -> None:
    p = cfg.preprocess
    if cfg.method == "hgd" and (p is None or p.name not in TRAINED or not p.freeze_model):
        _fail("preprocess", "method 'hgd' trains a denoiser in front of a fixed classifier: "
              "it needs preprocess: {name: hgd, freeze_model: true} and init_from naming the "
              f"classifier's run, got preprocess {p!r}")
    if p is None:
        return
    if not isinstance(p, PreprocessConfig):
        raise InputTypeError(f"{_ROOT}.preprocess: expected a PreprocessConfig, got {p!r}")
    if p.name not in PREPROCESSORS:
        _fail("preprocess.name", f"unknown defense {p.name!r}; valid choices: "
              f"{', '.join(sorted(PREPROCESSORS))}")
    _flag("preprocess.freeze_model", p.freeze_model)
    with _keyed("preprocess.options"):
        resolved_options(p.name, p.options)
    if p.freeze_model and p.name not in TRAINED:
        _fail("preprocess.freeze_model", f"defense {p.name!r} has no weights to train; "
              f"freeze_model is for {', '.join(sorted(TRAINED))}")


def _check_device_here(device: str) -> None:
    try:
        check_device(device, f"{_ROOT}.device")
    except InputError as err:
        raise ConfigError(str(err)) from None


def _check_precision_here(cfg: TrainConfig) -> None:
    """``precision: bf16`` only where torch runs bf16 autocast on the device ``cfg`` trains
    on (``"auto"``: the current accelerator if any, else the CPU, as ``runs`` resolves it)."""
    if cfg.precision == "fp32":
        return
    if cfg.device == "auto":
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        device = acc if acc is not None else torch.device("cpu")
    else:
        device = torch.device(cfg.device)
    try:
        check_precision(cfg.precision, device)
    except InputError as err:
        raise ConfigError(f"{_ROOT}.precision: {err}") from None


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ``cfg`` against this machine and its dataset; return it unchanged.

    On top of what building a ``TrainConfig`` checks: ``device`` exists here (``"auto"``,
    ``"cpu"`` or an accelerator present, e.g. ``cuda`` only with a GPU; the error lists
    the valid choices), ``precision: bf16`` runs on it (torch has bf16 autocast there) and
    the model builds with ``model_options`` for the dataset's image shape (on the meta
    device: no memory, no initialisation). ``load_config`` calls it; so does
    ``runs.train_from_config`` before writing anything. Files the config names
    (``init_from``, ``data_dir``) are checked where they are read, also before anything is
    written, so a recipe that names another machine's folders still parses.

    Raises:
        ConfigError: (an ``InputError``) naming the key, e.g. ``config.device: ...: this
            machine has no cuda device; valid choices on this machine: 'auto', 'cpu'``.
        InputTypeError: ``cfg`` is not a ``TrainConfig``.
    """
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(f"expected a TrainConfig, got {type(cfg).__name__}")
    _check_device_here(cfg.device)
    _check_precision_here(cfg)
    info = DATASET_INFO[cfg.dataset]
    c, h, w = info.shape
    try:
        with torch.device("meta"):
            build(cfg.model, num_classes=info.num_classes, in_channels=c, input_size=(h, w),
                  dataset=cfg.dataset, **cfg.model_options)
    except (BastionError, TypeError, ValueError, RuntimeError) as err:
        key = "model_options" if cfg.model_options else "model"
        opts = f" with model_options {dict(cfg.model_options)}" if cfg.model_options else ""
        raise ConfigError(f"{_ROOT}.{key}: model {cfg.model!r}{opts} cannot be built for "
                          f"{cfg.dataset} ({c}x{h}x{w} images): {err}") from err
    if cfg.preprocess is not None:
        from bastion.preprocess.registry import build_preprocessor

        try:
            with torch.device("meta"):
                build_preprocessor(cfg.preprocess.name, cfg.preprocess.options, in_channels=c)
        except (BastionError, TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"{_ROOT}.preprocess: defense {cfg.preprocess.name!r} with "
                              f"options {dict(cfg.preprocess.options)} cannot be built for "
                              f"{cfg.dataset} ({c}x{h}x{w} images): {err}") from err
    return cfg


def _fold_legacy_eval(data: dict[str, Any], path: str) -> dict[str, Any]:
    """``eval`` written with flat ``eps`` / ``norm`` / ``steps`` / ``step_size``: nest them."""
    flat = {k: data[k] for k in EvalConfig.LEGACY_THREAT_KEYS if k in data}
    if not flat:
        return data
    warnings.warn(
        f"{path}: the keys {sorted(flat)} are deprecated; write them under {path}.threat "
        f"(e.g. {path.rsplit('.', 1)[-1]}: {{attack: pgd, threat: {{eps: 0.1, steps: 10}}}})",
        DeprecationWarning, stacklevel=4,
    )
    threat = data.get("threat", {})
    if not isinstance(threat, dict):
        raise InputTypeError(f"{path}.threat: expected a mapping, got {threat!r}")
    both = sorted(set(flat) & set(threat))
    if both:
        raise ConfigError(f"{path}: {both} given both flat and under {path}.threat; keep only "
                         "the threat entries")
    rest = {k: v for k, v in data.items() if k not in flat}
    return {**rest, "threat": {**threat, **flat}}


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_value(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # ``X | None``: the message of X
            return _check_value(value, args[0], path)
        errors = []
        for arg in args:
            try:
                return _check_value(value, arg, path)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not fit {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputTypeError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputTypeError(f"{path}: expected a list, got {value!r}")
        (arg, _) = typing.get_args(tp)
        return tuple(_check_value(v, arg, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputTypeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads ``1e-3`` as a string: it wants ``1.0e-3``
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputTypeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputTypeError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputTypeError(f"{path}: expected a string, got {value!r}")
        return value
    raise InputTypeError(f"{path}: unsupported type {tp}")


def from_dict(cls: type[T], data: dict[str, Any], path: str = "config") -> T:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types."""
    if cls is EvalConfig and isinstance(data, dict):
        data = _fold_legacy_eval(data, path)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    # a key that is a Python keyword (``from``) is the field with a trailing underscore
    data = {(f"{k}_" if keyword.iskeyword(k) and f"{k}_" in names else k): v
            for k, v in data.items()}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    kwargs = {k: _check_value(v, hints[k], f"{path}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except BastionError as err:
        if str(err).startswith((f"{path}.", f"{path}:")):
            raise
        raise _rewrap(err, f"{path}: {err}") from err


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(dataclasses.asdict(obj))
    if isinstance(obj, TrainConfig) and obj.preprocess is None:
        del out["preprocess"]  # an undefended run's config (and hash) as before the key
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a config dict.

    Raises:
        ConfigError: an item without ``=``, an empty key part, a value that is not valid
            YAML (or holds a ``!!python/...`` tag), or a key below a value that is not a
            section; the message quotes the item.
    """
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: the key has an empty part; write e.g. "
                              "--set optim.lr=0.05")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key.strip()}: cannot read {raw!r} as a YAML value: "
                              f"{_yaml_problem(err)}") from None
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p.strip(), {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1].strip()] = value
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line, column) and what, tags spelt ``!!python/...``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = str(getattr(err, "problem", None) or err).strip()
    context = getattr(err, "context", None)
    tag = re.search(r"the tag '([^']*)'", problem)
    if isinstance(err, yaml.constructor.ConstructorError) and tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{where}the tag {name!r} is not allowed: bastion reads configs with "
                "yaml.safe_load, plain values only (mappings, lists, strings, numbers, "
                "true/false, null); nothing is constructed or run")
    if context and str(context) not in problem:
        problem = f"{problem} ({context})"
    return where + problem.replace("\n", " ")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML config file (not yet checked against ``TrainConfig``).

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: naming the file: it is a folder, cannot be read, is not valid YAML
            (line and column given), holds a ``!!python/...`` or other tag that
            ``yaml.safe_load`` refuses, is empty (an empty file would silently train the
            default run; ``{}`` asks for the defaults explicitly) or is not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a YAML config file, e.g. "
                          "configs/pgd-at.yaml")
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not a text (UTF-8) file; a config is YAML") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not a valid YAML config: {_yaml_problem(err)}") from None
    if data is None:
        raise ConfigError(
            f"{path}: the config file is empty; write the keys that differ from the "
            "defaults (e.g. 'method: pgd-at'), start from a recipe in configs/, or write {} "
            "to train with every default"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values (e.g. "
                          f"'epochs: 5'), got a {type(data).__name__}: {_short(data)}")
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _source(path: Path, overrides: list[str], message: str) -> str:
    """``(config file X, with --set k=v)``: where the value behind ``message`` came from."""
    m = re.match(rf"{_ROOT}\.([A-Za-z0-9_.]+)", message)
    lead = m.group(1) if m else None
    related = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if lead is not None:
            if key == lead or key.startswith(lead + ".") or lead.startswith(key + "."):
                related.append(item)
        elif repr(key.split(".")[0]) in message:  # e.g. "unknown key(s) ['optm']"
            related.append(item)
    sets = f", with --set {', '.join(related)}" if related else ""
    return f"(config file {path}{sets})"


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe, apply ``--set`` overrides and validate it (``validate``).

    Raises:
        MissingFileError: the file does not exist (or ``init_from`` / ``data_dir`` do not).
        ConfigError: the file cannot be read as a config (see ``read_config_file``), an
            override is malformed, or a value is out of range or not a valid choice; the
            message names the key, and the file and overrides it came from.
        InputTypeError: a value of the wrong type (also naming key and file).
    """
    path = Path(path)
    overrides = list(overrides or [])
    data = apply_overrides(read_config_file(path), overrides)
    try:
        return validate(from_dict(TrainConfig, data))
    except BastionError as err:
        raise _rewrap(err, f"{err} {_source(path, overrides, str(err))}") from err


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "EvalConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "from_dict",
    "load_config",
    "read_config_file",
    "to_dict",
    "validate",
]
