"""A benchmark suite: the defenses to compare and the one protocol that evaluates them all.

A suite is a YAML file (``benchmarks/suites/quick.yaml`` is the demo)::

    name: quick
    protocol:
      n_test: 500               # the first 500 test images, the same for every defense
      empirical:                # one entry per threat model
        - norm: linf
          eps: 0.1              # the leaderboard's radius ([0, 1] pixel units)
          curve: [0.05, 0.15]   # more radii for robust accuracy vs eps (first attack)
          attacks: [{name: pgd, steps: 20}, {name: pgd, steps: 50, restarts: 3}]
          large_eps: 0.4        # robust accuracy there should be ~0 (a check)
          minimal: {attack: fmn, steps: 100}   # the seed's eq. (3)
      certified: {n0: 100, n: 1000, alpha: 0.001, n_inputs: 100, radii: [0.25, 0.5]}
    defenses:
      - {name: standard, recipe: ../../configs/standard.yaml, overrides: {epochs: 1}}
      - {name: mine, run: ../../runs/pgd-at}      # an existing run folder

Paths (``recipe``, ``run``) are relative to the suite file's folder. Every defense is
evaluated with the whole empirical protocol; defenses whose model is the base classifier
of randomized smoothing (trained with noise, ``smoothing_noise``) are also certified
with ``certified``. ``load_suite`` checks everything -- the suite's keys and values, every
recipe with its overrides, every run folder -- before anything is trained or written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion.attacks.spec import AttackName, AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.config import (
    TrainConfig,
    apply_overrides,
    from_dict,
    read_config_file,
    to_dict,
    validate,
)
from bastion.errors import BastionError, ConfigError, MissingFileError
from bastion.runs import load_config_of

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SMOOTHING_METHODS = ("gaussian-noise", "noise-augment", "macer")
"""Training methods whose model is the base classifier of a smoothed classifier."""


@dataclass(frozen=True, kw_only=True)
class AttackEntry:
    """One evaluation attack of a threat model (its radius comes from the threat model).

    ``name``: ``pgd``, ``fgsm``, ``apgd-ce``, ``apgd-t`` or ``autoattack`` (the standard
    ensemble, ``attacks.autoattack``); ``steps`` and ``restarts`` for PGD/APGD;
    ``step_size`` None is the evaluation rule of ``AttackSpec``.
    """

    name: AttackName = "pgd"
    steps: int = 20
    restarts: int = 1
    objective: Literal["ce", "margin", "dlr"] = "ce"
    step_size: float | None = None

    def spec(self, eps: float, norm: str, num_classes: int, *, draws: int = 1,
             eot_samples: int | None = None) -> AttackSpec:
        """The ``AttackSpec`` of this attack at radius ``eps`` of ``norm``; ``draws``
        judges a randomized defense over that many passes, ``eot_samples`` is EOT-PGD's."""
        return AttackSpec(name=self.name, threat=ThreatModel(
            eps=eps, norm=norm, steps=self.steps, step_size=self.step_size),
            restarts=self.restarts, objective=self.objective, num_classes=num_classes,
            draws=draws, eot_samples=eot_samples if self.name == "eot-pgd" else None)

    @property
    def label(self) -> str:
        """Short column label: ``PGD-20``, ``PGD-50x3``, ``AutoAttack``, ``APGD-T``."""
        return attack_label(self.name, self.steps, self.restarts)


def attack_label(name: str, steps: int | None, restarts: int | None) -> str:
    """``PGD-20``, ``PGD-50x3``, ``FGSM``, ``APGD-CE-100``, ``AutoAttack``, ``BPDA-PGD-20``,
    ``EOT-PGD-20``, ``AutoAttack-rand``."""
    if name == "autoattack":
        return "AutoAttack"
    if name == "autoattack-rand":
        return "AutoAttack-rand"
    if name == "fgsm":
        return "FGSM"
    base = f"{name.upper()}-{steps}"
    return f"{base}x{restarts}" if restarts and restarts > 1 else base


@dataclass(frozen=True, kw_only=True)
class MinimalEntry:
    """The minimal-perturbation attack behind the average perturbation (eq. 3): FMN
    (L-inf, L2), DDN (L2 only; Rony et al. 2019) or PGD bisection."""

    attack: Literal["fmn", "ddn", "bisection"] = "fmn"
    steps: int = 100


@dataclass(frozen=True, kw_only=True)
class EmpiricalProtocol:
    """One threat model: its radius, the attacks at it, and the radii of the curve.

    Args:
        norm: ``linf`` or ``l2``.
        eps: the leaderboard's radius ([0, 1] pixel units).
        attacks: the attacks at ``eps`` (the first also draws the curve and the large-eps
            check; the others must be stronger: more steps or restarts, or AutoAttack).
        curve: more radii for robust accuracy against eps (attacked with the first attack).
        large_eps: a radius at which robust accuracy should be near 0 (check), or None.
        minimal: the minimal attack of the average perturbation, or None.
        examples: how many clean/adversarial pairs the report shows.
        eot_samples: EOT draws per gradient step against a randomized defense.
        draws: passes a randomized defense is judged over (robust only if all correct).
        plain: on a defended model, the plain (non-adaptive) counterpart of ``"all"``
            adapted attacks at eps, or of the ``"first"`` only.
        costly: a defense that declares itself ``costly`` (TV minimisation: an iterative
            solve in every forward pass, times EOT's draws) gets ``"all"`` attacks and radii,
            or only the ``"first"`` attack (adapted and plain) at eps.
        randomized: the same for a defense that declares itself ``randomized`` (its
            AutoAttack, the rand version, runs 20 EOT draws per step: about 2,000 passes
            per point against EOT-PGD-20's 200).

    A model behind a pre-processing defense gets, for each attack, the adaptive attack its
    defense's declarations call for (``attacks.eot.adaptive_attack_for``: EOT-PGD for a
    randomized defense, BPDA-PGD for a non-differentiable one, AutoAttack-rand) beside the
    plain attack at ``eps``, so the table shows the gap a plain attack leaves (Athalye,
    Carlini and Wagner 2018); the curve and the large-eps check use the adaptive first
    attack.
    """

    norm: Literal["linf", "l2"] = "linf"
    eps: float = 0.1
    attacks: tuple[AttackEntry, ...] = (AttackEntry(),)
    curve: tuple[float, ...] = ()
    large_eps: float | None = None
    minimal: MinimalEntry | None = field(default_factory=MinimalEntry)
    examples: int = 8
    eot_samples: int = 10
    draws: int = 10
    plain: Literal["all", "first"] = "all"
    costly: Literal["all", "first"] = "all"
    randomized: Literal["all", "first"] = "all"

    def __post_init__(self) -> None:
        if not 0 < self.eps <= (1.0 if self.norm == "linf" else 100.0):
            raise ConfigError(f"eps must be in (0, 1] for linf (pixel units), got {self.eps}")
        if not self.attacks:
            raise ConfigError("attacks: at least one attack")
        if any(e <= 0 for e in self.curve):
            raise ConfigError(f"curve radii must be > 0, got {list(self.curve)}")
        if self.large_eps is not None and self.large_eps <= self.eps:
            raise ConfigError(f"large_eps ({self.large_eps}) must exceed eps ({self.eps})")
        if self.eot_samples < 1 or self.draws < 1:
            raise ConfigError(f"eot_samples and draws must be >= 1, got {self.eot_samples}, "
                              f"{self.draws}")
        if not 0 <= self.examples <= 64:
            raise ConfigError(f"examples must be in [0, 64], got {self.examples}")
        if self.minimal is not None and self.minimal.attack == "ddn" and self.norm != "l2":
            raise ConfigError(f"minimal: ddn is an L2 attack; for norm {self.norm!r} use "
                              "fmn or bisection")
        labels = [a.label for a in self.attacks]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"attacks: two attacks with the same settings ({labels})")

    def radii(self) -> list[float]:
        """Every radius the first attack runs at: the curve, eps, large_eps, sorted."""
        rs = {float(self.eps), *map(float, self.curve)}
        if self.large_eps is not None:
            rs.add(float(self.large_eps))
        return sorted(rs)


@dataclass(frozen=True, kw_only=True)
class SmoothedAttackEntry:
    """SmoothAdv PGD on the smoothed classifier (``certify.smoothed_attack``): ``steps``,
    noise ``samples`` per step, PREDICT's ``n`` draws (its alpha is the protocol's)."""

    steps: int = 20
    samples: int = 16
    n: int = 1000


@dataclass(frozen=True, kw_only=True)
class CertifiedProtocol:
    """Randomized-smoothing certification of the defenses trained with noise.

    CERTIFY (Cohen et al. 2019, arXiv 1902.02918) with ``n0`` selection and ``n``
    estimation draws at failure probability ``alpha`` on the first ``n_inputs`` of the
    protocol's test points; the leaderboard shows certified accuracy at ``radii``
    ([0, 1] pixel units of the noise's norm) and the ACR. ``attack`` (L2 noise only)
    attacks the smoothed classifier at the same radii on the same points, for the check
    that no certified accuracy exceeds the empirical one.
    """

    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    n_inputs: int = 100
    radii: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    batch_size: int | None = None
    attack: SmoothedAttackEntry | None = field(default_factory=SmoothedAttackEntry)

    def __post_init__(self) -> None:
        if self.n0 < 1 or self.n < 1 or self.n_inputs < 1:
            raise ConfigError("n0, n and n_inputs must be >= 1")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.radii or any(r < 0 for r in self.radii):
            raise ConfigError(f"radii: at least one radius >= 0, got {list(self.radii)}")


@dataclass(frozen=True, kw_only=True)
class LipschitzProtocol:
    """Deterministic L2 certification by the Lipschitz margin (``certify.lipschitz``).

    Every defense that randomized smoothing does not certify (no training noise) and that
    has no pre-processing defense in front is certified on the first ``n_inputs`` test
    points with sound constants (``method``: ``gram`` or ``svd``), pairwise unless
    ``per_logit``; the leaderboard shows certified accuracy at ``radii`` (L2, pixel units)
    and the ACR. A model that is not a chain of layers of known constant (a residual
    network) gets no certificate, and its row says why.
    """

    n_inputs: int = 1000
    radii: tuple[float, ...] = (0.25, 0.5, 1.0)
    method: str = "gram"
    per_logit: bool = False

    def __post_init__(self) -> None:
        if self.n_inputs < 1:
            raise ConfigError(f"lipschitz.n_inputs must be >= 1, got {self.n_inputs}")
        if not self.radii or any(r < 0 for r in self.radii):
            raise ConfigError(f"lipschitz.radii: at least one radius >= 0, got "
                              f"{list(self.radii)}")
        if self.method not in ("gram", "svd"):
            raise ConfigError(f"lipschitz.method must be 'gram' or 'svd', got {self.method!r}")


@dataclass(frozen=True, kw_only=True)
class MMCertProtocol:
    """Certified l0 budgets by sub-sampling (``certify.mmcert``, MMCert, arXiv 2403.19080).

    Every defense trained with the ``subsample`` method (its base classifier reads
    sub-sampled inputs) is certified on the first ``n_inputs`` test points with its training
    ``keep`` counts: ``n0`` selection and ``n`` estimation sub-samples, MMCert's top-2
    Bonferroni bounds at ``alpha``, attacks that ``modify`` elements (or do ``any`` of
    modify, add, delete). The leaderboard shows certified accuracy at ``budgets`` (elements
    of every modality at once, the ``joint`` direction); the rows hold the budget of each
    modality alone too.
    """

    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    n_inputs: int = 200
    budgets: tuple[int, ...] = (0, 1, 2, 4, 8)
    operations: str = "modify"
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.n_inputs < 1 or self.n < 1 or self.n0 < 1 or self.batch_size < 1:
            raise ConfigError("mmcert: n0, n, n_inputs and batch_size must be >= 1")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"mmcert.alpha must be in (0, 1), got {self.alpha}")
        if not self.budgets or any(b < 0 for b in self.budgets):
            raise ConfigError(f"mmcert.budgets: at least one whole number >= 0, got "
                              f"{list(self.budgets)}")
        if self.operations not in ("modify", "any"):
            raise ConfigError(f"mmcert.operations must be 'modify' or 'any', got "
                              f"{self.operations!r}")


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """The evaluation every defense of a suite gets, on the same first ``n_test`` points.

    ``seed`` seeds the attacks and the certification noise; ``checks`` runs
    ``bastion.checks`` (model checks on the first ``check_points`` points).
    """

    n_test: int = 1000
    batch_size: int = 250
    seed: int = 0
    empirical: tuple[EmpiricalProtocol, ...] = (EmpiricalProtocol(),)
    certified: CertifiedProtocol | None = field(default_factory=CertifiedProtocol)
    lipschitz: LipschitzProtocol | None = None
    mmcert: MMCertProtocol | None = None
    checks: bool = True
    check_points: int = 100

    def __post_init__(self) -> None:
        if self.mmcert is not None and self.mmcert.n_inputs > self.n_test:
            raise ConfigError(f"mmcert.n_inputs ({self.mmcert.n_inputs}) exceeds "
                              f"n_test ({self.n_test})")
        if self.lipschitz is not None and self.lipschitz.n_inputs > self.n_test:
            raise ConfigError(f"lipschitz.n_inputs ({self.lipschitz.n_inputs}) exceeds "
                              f"n_test ({self.n_test})")
        if self.n_test < 1 or self.batch_size < 1 or self.check_points < 1:
            raise ConfigError("n_test, batch_size and check_points must be >= 1")
        if self.certified is not None and self.certified.n_inputs > self.n_test:
            raise ConfigError(f"certified.n_inputs ({self.certified.n_inputs}) exceeds "
                              f"n_test ({self.n_test}): certification runs on the "
                              "protocol's test points")
        norms = [e.norm for e in self.empirical]
        if len(set(norms)) != len(norms):
            raise ConfigError(f"empirical: one entry per norm, got {norms}")


@dataclass(frozen=True, kw_only=True)
class PreprocessEntry:
    """A pre-processing defense of a suite entry: ``name`` and ``options`` of an untrained
    defense (``tv``, ``resize-pad``, ``bit-depth``, ``jpeg``), or ``from`` an earlier
    defense of the suite whose run trained one (the guided denoiser's recipe)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    from_: str | None = None  # YAML key ``from``

    def __post_init__(self) -> None:
        if (self.name is None) == (self.from_ is None):
            raise ConfigError("preprocess: give exactly one of name (a defense) or from "
                              "(an earlier defense of the suite that trained one)")
        if self.name is not None:
            from bastion.preprocess.registry import resolved_options

            try:
                resolved_options(self.name, self.options)
            except BastionError as err:
                raise ConfigError(f"preprocess: {err}") from None


@dataclass(frozen=True, kw_only=True)
class DefenseEntry:
    """A defense: a training recipe with overrides, an existing run folder, or an earlier
    defense's model behind a pre-processing defense.

    ``init_from`` names an earlier defense of the suite whose trained model initialises
    this one (fine-tuning, e.g. MACER from the Gaussian-noise model); it replaces the
    recipe's own ``init_from`` by that defense's run folder. ``train_dir`` (relative to
    the suite file) is where a recipe trains, instead of ``<out>/<name>``: two suites
    that name the same folder and recipe share one training (the second resumes the
    finished run, training nothing). ``base`` with ``preprocess``
    evaluates the trained model of the earlier defense ``base`` behind ``preprocess``,
    with no training (``{name: standard+tv, base: standard, preprocess: {name: tv}}``).
    """

    name: str
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    train_dir: str | None = None
    init_from: str | None = None
    base: str | None = None
    preprocess: PreprocessEntry | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.base is not None:
            if self.preprocess is None or self.recipe is not None or self.run is not None:
                raise ConfigError(f"defense {self.name!r}: base (an earlier defense whose "
                                  "trained model this one puts behind a pre-processing "
                                  "defense) needs preprocess and no recipe or run")
            return
        if self.preprocess is not None:
            raise ConfigError(f"defense {self.name!r}: preprocess needs base (the earlier "
                              "defense whose model it defends); a recipe trained with a "
                              "defense in front sets it in the recipe's own preprocess key")
        if self.train_dir is not None and self.recipe is None:
            raise ConfigError(f"defense {self.name!r}: train_dir (the run folder a recipe "
                              "trains into, shared with another suite) needs a recipe")
        if self.init_from is not None and self.recipe is None:
            raise ConfigError(f"defense {self.name!r}: init_from (an earlier defense whose "
                              "model initialises this one) needs a recipe")
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"defense name {self.name!r}: use letters, digits, '.', '_' "
                              "or '-' (it names a folder), at most 64 characters")
        if (self.recipe is None) == (self.run is None):
            raise ConfigError(f"defense {self.name!r}: give exactly one of recipe (a YAML "
                              "recipe to train) or run (an existing run folder)")
        if self.run is not None and self.overrides:
            raise ConfigError(f"defense {self.name!r}: overrides apply to a recipe, not to "
                              "an existing run")


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A parsed suite: its name, protocol and defenses (see the module docstring)."""

    name: str
    protocol: Protocol = field(default_factory=Protocol)
    defenses: tuple[DefenseEntry, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"suite name {self.name!r}: letters, digits, '.', '_', '-'")
        if not self.defenses:
            raise ConfigError("a suite needs at least one defense")
        names = [d.name for d in self.defenses]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"defense names must be unique; repeated: {dup}")
        for i, d in enumerate(self.defenses):
            if d.base is not None and d.base not in names[:i]:
                raise ConfigError(f"defense {d.name!r}: base {d.base!r} must name an earlier "
                                  f"defense of the suite ({names[:i]})")
            src = d.preprocess.from_ if d.preprocess is not None else None
            if src is not None and src not in names[:i]:
                raise ConfigError(f"defense {d.name!r}: preprocess.from {src!r} must name an "
                                  f"earlier defense of the suite ({names[:i]})")
            if d.init_from is not None and d.init_from not in names[:i]:
                raise ConfigError(f"defense {d.name!r}: init_from {d.init_from!r} must name "
                                  f"an earlier defense of the suite ({names[:i]})")


@dataclass(frozen=True)
class ResolvedDefense:
    """A defense with its training config resolved and checked.

    ``run_dir`` is the existing run folder of a ``run:`` entry, None for a recipe (the
    bench trains it into ``<out>/<name>/``).
    """

    entry: DefenseEntry
    config: TrainConfig
    run_dir: Path | None
    base: ResolvedDefense | None = None
    defense_from: ResolvedDefense | None = None
    train_dir: Path | None = None
    init_defense: ResolvedDefense | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    def trained_run(self, out: Path) -> Path:
        """The run folder holding this defense's trained weights (a bench trains a recipe
        into ``<out>/<name>``; a ``base`` entry uses its base's)."""
        if self.base is not None:
            return self.base.trained_run(out)
        if self.run_dir is not None:
            return self.run_dir
        return self.train_dir if self.train_dir is not None else out / self.name


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config as canonical JSON."""
    return stable_hash(to_dict(cfg))


def stable_hash(obj: Any) -> str:
    """SHA-256 (16 hex digits) of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def smoothing_noise(cfg: TrainConfig) -> tuple[str, float] | None:
    """``(noise, sigma)`` when the run's model is a smoothing base classifier, else None."""
    if cfg.method not in SMOOTHING_METHODS:
        return None
    opts = cfg.method_options
    return str(opts.get("noise", "gaussian")), float(opts["sigma"])


def certificate_norm(noise: str) -> str:
    """The norm of the radii a smoothing noise certifies (``noise.from_std(...).norm``)."""
    from bastion.noise import from_std

    return from_std(noise, 1.0).norm


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b=1"]`` (values as JSON, which YAML reads back)."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


def _resolve(entry: DefenseEntry, base: Path, where: str,
             earlier: dict[str, ResolvedDefense]) -> ResolvedDefense:
    try:
        if entry.base is not None:
            assert entry.preprocess is not None
            src = entry.preprocess.from_
            if src is not None and earlier[src].config.preprocess is None:
                raise ConfigError(f"preprocess.from {src!r}: that defense trains no "
                                  "pre-processing defense (its config has no preprocess)")
            if earlier[entry.base].config.preprocess is not None:
                raise ConfigError(f"base {entry.base!r} is itself a defended run; put the "
                                  "pre-processing defense in front of an undefended model")
            return ResolvedDefense(entry, earlier[entry.base].config, None,
                                   base=earlier[entry.base],
                                   defense_from=earlier[src] if src is not None else None)
        if entry.recipe is not None:
            path = (base / entry.recipe).resolve()
            if not path.is_file():
                raise MissingFileError(f"recipe {entry.recipe!r} not found (looked for {path})")
            data = apply_overrides(read_config_file(path), _flatten(entry.overrides))
            train_dir = (base / entry.train_dir).resolve() if entry.train_dir else None
            return ResolvedDefense(entry, validate(from_dict(TrainConfig, data)), None,
                                   train_dir=train_dir,
                                   init_defense=earlier.get(entry.init_from or ""))
        run_dir = (base / str(entry.run)).resolve()
        if not run_dir.is_dir():
            raise MissingFileError(f"run folder {entry.run!r} not found (looked for {run_dir})")
        return ResolvedDefense(entry, load_config_of(run_dir), run_dir)
    except BastionError as err:
        raise type(err)(f"{where}: defense {entry.name!r}: {err}") from None


def load_suite(path: str | Path) -> tuple[Suite, list[ResolvedDefense]]:
    """Read and check a suite file; resolve every defense's config.

    Raises ``ConfigError`` / ``MissingFileError`` naming the file, the defense and the
    key, before anything is written.
    """
    path = Path(path)
    data = read_config_file(path)
    try:
        suite = from_dict(Suite, data, "suite")
    except BastionError as err:
        raise type(err)(f"{path}: {err}") from None
    resolved: list[ResolvedDefense] = []
    for d in suite.defenses:
        resolved.append(_resolve(d, path.resolve().parent, str(path),
                                 {r.name: r for r in resolved}))
    datasets = sorted({r.config.dataset for r in resolved})
    if len(datasets) > 1:
        raise ConfigError(f"{path}: the defenses use several datasets ({datasets}); a suite "
                          "compares defenses on one dataset")
    return suite, resolved


def protocol_dict(protocol: Protocol) -> dict[str, Any]:
    """The protocol as plain JSON (for the records and the fingerprints); ``lipschitz`` and
    ``mmcert`` are left out when not set, so protocols written before them keep their
    hashes."""
    d = to_dict(protocol)
    for key in ("lipschitz", "mmcert"):
        if d.get(key) is None:
            d.pop(key, None)
    return d


__all__ = [
    "AttackEntry",
    "CertifiedProtocol",
    "DefenseEntry",
    "EmpiricalProtocol",
    "LipschitzProtocol",
    "MMCertProtocol",
    "PreprocessEntry",
    "MinimalEntry",
    "Protocol",
    "ResolvedDefense",
    "SmoothedAttackEntry",
    "SMOOTHING_METHODS",
    "Suite",
    "attack_label",
    "certificate_norm",
    "config_hash",
    "load_suite",
    "protocol_dict",
    "smoothing_noise",
    "stable_hash",
]
