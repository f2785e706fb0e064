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
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bastion.attacks.spec import AttackName
from bastion.attacks.threat import ThreatModel
from bastion.errors import InputError, InputTypeError, MissingFileError
from bastion.train.registry import canonical_method_options
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
class TrainConfig:
    """Everything a ``bastion train`` run needs; ``repr`` is the log line.

    ``init_from`` names a finished run folder whose last checkpoint initialises the model
    (fine-tuning, e.g. MACER from a Gaussian-trained base classifier); the architecture
    must match.
    """

    dataset: Literal["fashion-mnist", "mnist", "cifar10", "digits"] = "fashion-mnist"
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
    patience: int | None = None
    device: str = "auto"
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # One stored form of the method's options: legacy flat attack keys folded into a
        # complete ``threat`` dict, so old and new spellings of a run compare equal.
        object.__setattr__(
            self, "method_options", canonical_method_options(self.method, self.method_options)
        )


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
        raise InputError(f"{path}: {both} given both flat and under {path}.threat; keep only "
                         "the threat entries")
    rest = {k: v for k, v in data.items() if k not in flat}
    return {**rest, "threat": {**threat, **flat}}


def _check_value(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise InputError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, path)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise InputError(f"{path}: {value!r} does not fit {tp}: {'; '.join(errors)}")
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
    unknown = [k for k in data if k not in names]
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    kwargs = {k: _check_value(v, hints[k], f"{path}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a config dict."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe, apply ``--set`` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values")
    return from_dict(TrainConfig, apply_overrides(data, overrides or []))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
