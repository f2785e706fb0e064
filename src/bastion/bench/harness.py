"""Run a benchmark suite: train or load each defense, evaluate it, certify it, check it.

``run_suite(suite_path, out)`` works through the suite's defenses in order. For each:

1. **train** (a recipe) into ``<out>/<name>/`` with ``runs.train_from_config`` -- which
   resumes an interrupted run and returns at once for a finished one -- or load an
   existing run folder (``run:`` entries are read, never written);
2. **attacks** per threat model: the first attack at every radius of the protocol (the
   robust-accuracy curve, the leaderboard radius, the large-eps check), the stronger ones
   at the leaderboard radius, all in one ``EvalResult`` on the same first ``n_test`` test
   points; then the **minimal** attack (the seed's eq. 3) and the **examples** the report
   shows;
3. **certify** with randomized smoothing (CERTIFY) when the model is a smoothing base
   classifier (``suite.smoothing_noise``), on the first ``n_inputs`` of those points;
4. **checks** (``bastion.checks``): model checks on the first ``check_points`` points, and
   the record checks (clean accuracy against the run's own record, monotone in eps, a
   large radius, convergence of the first attack against the strongest);
5. the leaderboard **row** (``outcome.json``).

Everything a defense's evaluation writes is under ``<out>/<name>/bench/``. Each stage is
saved atomically as soon as it is complete, with a fingerprint (hash of the resolved
config, the weights and the stage's protocol) in ``bench/manifest.json``; a rerun of the
same command loads every stage whose fingerprint still matches and redoes the rest, so an
interrupted bench loses at most the stage in progress (certification resumes per input).
A changed recipe or protocol recomputes exactly the stages it affects.

Under ``torchrun`` every rank runs the same sequence: training is data-parallel
(``fit``), attacks split the test points across ranks and merge
(``attacks.evaluate``), certification shards its inputs (``certify.pipeline``); only
rank 0 writes, and the ranks meet at a barrier after each stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.attacks.eot import adaptive_attack_for, through_bpda_if_needed
from bastion.attacks.evaluate import evaluate_attacks, evaluate_minimal
from bastion.attacks.spec import AttackSpec
from bastion.bench.suite import (
    AttackEntry,
    EmpiricalProtocol,
    Protocol,
    ResolvedDefense,
    Suite,
    attack_label,
    certificate_norm,
    config_hash,
    load_suite,
    protocol_dict,
    smoothing_noise,
    stable_hash,
)
from bastion.certify import CertifyConfig
from bastion.certify.lipschitz import (
    LipschitzCertifier,
    certificate_from_rows,
    topk_certified_accuracy,
)
from bastion.certify.pipeline import certify_dataset
from bastion.certify.summary import rows_to_certificate
from bastion.checks import CheckFinding, run_checks
from bastion.config import dump_config
from bastion.data import load_dataset
from bastion.errors import InputError, MissingFileError
from bastion.metrics import (
    attack_success_rate,
    average_certified_radius,
    average_perturbation,
    average_perturbation_of_successes,
    certified_accuracy,
)
from bastion.preprocess import preprocessor_of
from bastion.records import Certificate, EvalResult, History
from bastion.records.io import atomic_write_bytes, atomic_write_json, load_record, save_record
from bastion.runs import (
    DefenseChoice,
    certify_run,
    init_distributed,
    load_model,
    read_history,
    resolve_device,
    train_from_config,
)
from bastion.train.checkpoint import checkpoint_dir

log = logging.getLogger(__name__)

BENCH = "bench"
MANIFEST = "manifest.json"
OUTCOME = "outcome.json"


# ------------------------------------------------------------------------------ hooks

def _no_stage(defense: str, stage: str, status: str) -> None:
    log.info("[%s] %s: %s", defense, stage, status)


@dataclass
class BenchHooks:
    """What a caller (the CLI) sees of a bench: stage messages and progress bars.

    ``stage(defense, stage, status)`` with status ``"start"``, ``"done"`` (with seconds)
    or ``"cached"``; ``bar(description, total)`` returns ``(update(n), close())``;
    ``train(defense, epochs)`` returns ``(on_batch, on_epoch, close)`` for
    ``train_from_config``. The defaults log and show nothing.
    """

    stage: Callable[[str, str, str], None] = _no_stage
    bar: Callable[[str, int], tuple[Callable[[int], None], Callable[[], None]]] = field(
        default=lambda _d, _t: (lambda _n: None, lambda: None))
    train: Callable[[str, int], tuple[Any, Any, Callable[[], None]]] = field(
        default=lambda _d, _e: (None, None, lambda: None))


# ------------------------------------------------------------------------------ ranks

def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _main() -> bool:
    return _dist()[0] == 0


# ------------------------------------------------------------------------------ stages

class _Stages:
    """The saved stages of one defense: ``bench/<stage file>`` plus their fingerprints."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / MANIFEST
        self.manifest: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.manifest = json.loads(self.path.read_text())
            except (OSError, ValueError):
                log.warning("%s is unreadable; every stage is recomputed", self.path)
                self.manifest = {}

    def fresh(self, stage: str, fingerprint: str, filename: str) -> bool:
        entry = self.manifest.get(stage)
        return (isinstance(entry, dict) and entry.get("fingerprint") == fingerprint
                and (self.folder / filename).is_file())

    def seconds(self, stage: str) -> float:
        entry = self.manifest.get(stage)
        return float(entry.get("seconds", 0.0)) if isinstance(entry, dict) else 0.0

    def done(self, stage: str, fingerprint: str, filename: str, seconds: float) -> None:
        self.manifest[stage] = {"fingerprint": fingerprint, "file": filename,
                                "seconds": round(seconds, 3)}
        if _main():
            atomic_write_json(self.path, self.manifest)
        _barrier()


def weights_hash(run_dir: Path) -> str:
    """The fingerprint of a run's last weights (the ``weights_hash`` of its rows)."""
    ckpt = checkpoint_dir(run_dir, "last")
    if ckpt is None:
        raise InputError(f"{run_dir} has no finished checkpoint to evaluate")
    h = hashlib.sha256()
    for f in sorted(ckpt.glob("model*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bastion", "torch", "torchvision", "torchattacks", "numpy", "scipy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ------------------------------------------------------------------------------ one defense

@dataclass
class _Context:
    defense: ResolvedDefense
    protocol: Protocol
    run_dir: Path
    stages: _Stages
    hooks: BenchHooks
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    base: dict[str, str]

    def fingerprint(self, stage_settings: Any) -> str:
        return stable_hash({**self.base, "stage": stage_settings})


def adapted(entry: AttackEntry, model: nn.Module) -> AttackEntry:
    """``entry`` with the adaptive attack ``model``'s defense calls for (itself on an
    undefended model or where the plain attack already fits): PGD -> EOT-PGD / BPDA-PGD,
    AutoAttack -> AutoAttack-rand (``attacks.eot.adaptive_attack_for``)."""
    base = {"pgd": "pgd", "autoattack": "autoattack"}.get(entry.name)
    if base is None or preprocessor_of(model) is None:
        return entry
    return dataclasses.replace(entry, name=adaptive_attack_for(model, base))


def _costly_first(emp: EmpiricalProtocol, model: nn.Module) -> bool:
    """Whether ``model``'s defense gets only the first attack at eps (``emp.costly``,
    ``emp.randomized``)."""
    pre = preprocessor_of(model)
    return pre is not None and ((pre.costly and emp.costly == "first")
                                or (pre.randomized and emp.randomized == "first"))


def _plan(emp: EmpiricalProtocol, model: nn.Module) -> tuple[list[AttackEntry], list[float]]:
    """The attacks and the first attack's radii for ``model`` (``emp.costly``)."""
    if _costly_first(emp, model):
        return list(emp.attacks[:1]), [emp.eps]
    return list(emp.attacks), emp.radii()


def _specs(emp: EmpiricalProtocol, num_classes: int, model: nn.Module) -> list[AttackSpec]:
    """The attacks of one threat model: the first (adapted) at every radius, the others
    (adapted) at eps, and on a defended model the plain ones at eps too."""
    pre = preprocessor_of(model)
    kw = {"draws": emp.draws if pre is not None and pre.randomized else 1,
          "eot_samples": emp.eot_samples}
    entries, radii = _plan(emp, model)
    first, *rest = [adapted(a, model) for a in entries]
    specs = [first.spec(r, emp.norm, num_classes, **kw) for r in radii]
    specs += [a.spec(emp.eps, emp.norm, num_classes, **kw) for a in rest]
    plain = entries if emp.plain == "all" else entries[:1]
    specs += [a.spec(emp.eps, emp.norm, num_classes, **kw) for a in plain
              if adapted(a, model).name != a.name]
    return specs


def _record_stage(ctx: _Context, stage: str, settings: Any, desc: str, total: int,
                  compute: Callable[[Callable[[int], None]], EvalResult]) -> EvalResult:
    """An ``EvalResult`` stage: loaded when saved with the same fingerprint, else computed
    (``compute(progress)``, with a progress bar of ``total`` points) and saved."""
    fname = f"{stage}.json"
    fp = ctx.fingerprint(settings)
    if ctx.stages.fresh(stage, fp, fname):
        ctx.hooks.stage(ctx.defense.name, stage, "cached")
        return load_record(EvalResult, ctx.stages.folder / fname)
    ctx.hooks.stage(ctx.defense.name, stage, "start")
    update, close = ctx.hooks.bar(f"{ctx.defense.name}: {desc}", total)
    t0 = time.perf_counter()
    try:
        result = compute(update)
    finally:
        close()
    if _main():
        save_record(ctx.stages.folder / fname, result)
    ctx.stages.done(stage, fp, fname, time.perf_counter() - t0)
    ctx.hooks.stage(ctx.defense.name, stage, "done")
    return result


def _run_attacks(ctx: _Context, emp: EmpiricalProtocol) -> EvalResult:
    p = ctx.protocol
    attacks_only = {k: v for k, v in protocol_dict(emp).items()
                    if k not in ("minimal", "examples")}
    specs = _specs(emp, ctx.num_classes, ctx.model)
    return _record_stage(
        ctx, f"attacks-{emp.norm}",
        {"empirical": attacks_only, "n_test": p.n_test, "seed": p.seed,
         "batch_size": p.batch_size},
        f"{len(specs)} attacks ({emp.norm})", len(ctx.x),
        lambda progress: evaluate_attacks(ctx.model, ctx.x, ctx.y, specs,
                                          batch_size=p.batch_size, seed=p.seed,
                                          progress=progress))


def _run_minimal(ctx: _Context, emp: EmpiricalProtocol) -> EvalResult | None:
    minimal = emp.minimal
    if minimal is None:
        return None
    p = ctx.protocol
    kw: dict[str, Any] = {"eps_max": max(emp.radii())} if minimal.attack == "bisection" else {}
    return _record_stage(
        ctx, f"minimal-{emp.norm}",
        {"minimal": protocol_dict(minimal), "norm": emp.norm, "n_test": p.n_test,
         "seed": p.seed, "batch_size": p.batch_size},
        f"{minimal.attack} ({emp.norm})", len(ctx.x),
        lambda progress: evaluate_minimal(through_bpda_if_needed(ctx.model), ctx.x, ctx.y,
                                          attack=minimal.attack,
                                          norm=emp.norm, steps=minimal.steps,
                                          batch_size=p.batch_size, seed=p.seed,
                                          progress=progress, **kw))


def _run_examples(ctx: _Context, emp: EmpiricalProtocol) -> Path | None:
    if emp.examples == 0:
        return None
    from bastion.bench.examples import adversarial_examples, save_examples

    stage, fname = f"examples-{emp.norm}", f"examples-{emp.norm}.safetensors"
    first = adapted(emp.attacks[0], ctx.model)
    fp = ctx.fingerprint({"attack": protocol_dict(first), "eps": emp.eps, "norm": emp.norm,
                          "k": emp.examples, "seed": ctx.protocol.seed})
    if ctx.stages.fresh(stage, fp, fname):
        return ctx.stages.folder / fname
    t0 = time.perf_counter()
    k = min(emp.examples, len(ctx.x))
    ex = adversarial_examples(ctx.model, ctx.x[:k], ctx.y[:k],
                              first.spec(emp.eps, emp.norm, ctx.num_classes,
                                         eot_samples=emp.eot_samples), k=k,
                              seed=ctx.protocol.seed)
    if _main():
        save_examples(ctx.stages.folder / fname, ex)
    ctx.stages.done(stage, fp, fname, time.perf_counter() - t0)
    return ctx.stages.folder / fname


def _done_bar(ctx: _Context, desc: str, total: int
              ) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """The hooks' bar as a certification ``progress(done, total)`` (done: a running count)."""
    update, close = ctx.hooks.bar(desc, total)
    seen = [0]

    def progress(done: int, _total: int) -> None:
        update(done - seen[0])
        seen[0] = done

    return progress, close


def _run_certify(ctx: _Context) -> tuple[Certificate, float] | None:
    cp = ctx.protocol.certified
    noise = smoothing_noise(ctx.defense.config)
    if cp is None or noise is None or ctx.defense.base is not None:
        # (a base classifier behind a pre-processing defense is not certified: CERTIFY
        # runs on the run folder's own model)
        return None
    stage, fname = "certify", "certify.jsonl"
    config = CertifyConfig(noise=noise[0], sigma=noise[1], n0=cp.n0, n=cp.n, alpha=cp.alpha,
                           n_inputs=cp.n_inputs, skip=1, batch_size=cp.batch_size,
                           seed=ctx.protocol.seed, device=ctx.defense.config.device)
    fp = ctx.fingerprint({"certify": dataclasses.asdict(config)})
    path = ctx.stages.folder / fname
    if ctx.stages.fresh(stage, fp, fname):
        ctx.hooks.stage(ctx.defense.name, stage, "cached")
        from bastion.certify import read_rows

        rows = read_rows(path)
        return rows_to_certificate(rows, certificate_norm(noise[0])), ctx.stages.seconds(stage)
    old = ctx.stages.manifest.get(stage)
    if path.exists() and isinstance(old, dict) and old.get("fingerprint") != fp:
        # rows of other settings or other weights: start over (an interrupted
        # certification of the same settings has no manifest entry yet and resumes)
        if _main():
            path.unlink()
        _barrier()
    ctx.hooks.stage(ctx.defense.name, stage, "start")
    progress, close = _done_bar(ctx, f"{ctx.defense.name}: certify ({noise[0]} "
                                f"sigma {noise[1]:g})", cp.n_inputs)

    t0 = time.perf_counter()
    try:
        res = certify_run(ctx.run_dir, config, out=path, progress=progress)
    finally:
        close()
    seconds = time.perf_counter() - t0
    ctx.stages.done(stage, fp, fname, seconds)
    ctx.hooks.stage(ctx.defense.name, stage, "done")
    rows = res.rows
    if not rows:  # not rank 0 under torchrun: read the merged file
        from bastion.certify import read_rows

        rows = read_rows(path)
    return rows_to_certificate(rows, certificate_norm(noise[0])), seconds


def _run_lipschitz(ctx: _Context) -> tuple[Certificate, float] | None:
    """The Lipschitz-margin certificate of a defense smoothing does not certify (see
    ``suite.LipschitzProtocol``), or None (with the reason logged) where none applies."""
    lp = ctx.protocol.lipschitz
    if lp is None or smoothing_noise(ctx.defense.config) is not None or (
            ctx.defense.base is not None):
        return None
    stage, fname = "certify-lipschitz", "certify-lipschitz.jsonl"
    cfg = ctx.defense.config
    top_k = int(cfg.method_options.get("top_k", 1)) if cfg.method == "gloro" else 1
    settings = {**dataclasses.asdict(lp), "top_k": top_k}
    fp = ctx.fingerprint({"certify-lipschitz": settings})
    path = ctx.stages.folder / fname
    from bastion.certify import read_rows

    if ctx.stages.fresh(stage, fp, fname):
        ctx.hooks.stage(ctx.defense.name, stage, "cached")
        return certificate_from_rows(read_rows(path)), ctx.stages.seconds(stage)
    if path.exists() and _main():
        path.unlink()  # other settings or weights (no partial rows worth keeping: it is fast)
    _barrier()
    n = min(lp.n_inputs, len(ctx.x))
    ctx.hooks.stage(ctx.defense.name, stage, "start")
    t0 = time.perf_counter()
    try:
        certifier = LipschitzCertifier(model=ctx.model, num_classes=ctx.num_classes,
                                       method=lp.method, per_logit=lp.per_logit, top_k=top_k)
        rows = certify_dataset(certifier, ctx.x[:n], ctx.y[:n], out_path=path,
                               seed=ctx.protocol.seed)
    except InputError as err:
        log.warning("%s: no Lipschitz certificate: %s", ctx.defense.name, err)
        ctx.hooks.stage(ctx.defense.name, stage, f"skipped ({err})")
        return None
    seconds = time.perf_counter() - t0
    ctx.stages.done(stage, fp, fname, seconds)
    ctx.hooks.stage(ctx.defense.name, stage, "done")
    if not rows:
        rows = read_rows(path)
    return certificate_from_rows(rows), seconds


def _run_mmcert(ctx: _Context) -> tuple[Certificate, float] | None:
    """MMCert's certificate of a defense trained on sub-samples (``suite.MMCertProtocol``),
    or None where none applies (another method, or a pre-processing defense in front)."""
    mp = ctx.protocol.mmcert
    cfg = ctx.defense.config
    if mp is None or cfg.method != "subsample" or ctx.defense.base is not None:
        return None
    from bastion.certify import read_rows
    from bastion.certify.mmcert import MMCertCertifier, direction_certificates
    from bastion.certify.rowstore import read_header
    from bastion.models.ablation import layout_of
    from bastion.train.registry import build_method

    stage, fname = "certify-mmcert", "certify-mmcert.jsonl"
    # the counts the model was trained with (the method's default when the recipe has none)
    method = build_method(cfg.method, **cfg.method_options)
    keep = list(layout_of(ctx.model).per_modality(method.keep))
    fp = ctx.fingerprint({"certify-mmcert": {**dataclasses.asdict(mp), "keep": keep}})
    path = ctx.stages.folder / fname
    if ctx.stages.fresh(stage, fp, fname):
        ctx.hooks.stage(ctx.defense.name, stage, "cached")
        return (direction_certificates(read_rows(path), read_header(path))["joint"],
                ctx.stages.seconds(stage))
    old = ctx.stages.manifest.get(stage)
    if path.exists() and isinstance(old, dict) and old.get("fingerprint") != fp:
        if _main():
            path.unlink()  # rows of other settings or weights; same settings resume
        _barrier()
    n = min(mp.n_inputs, len(ctx.x))
    ctx.hooks.stage(ctx.defense.name, stage, "start")
    progress, close = _done_bar(ctx, f"{ctx.defense.name}: certify (MMCert, keep "
                                f"{'+'.join(map(str, keep))})", n)

    t0 = time.perf_counter()
    try:
        certifier = MMCertCertifier(model=ctx.model, num_classes=ctx.num_classes,
                                    keep=tuple(keep), n0=mp.n0, n=mp.n, alpha=mp.alpha,
                                    operations=mp.operations, batch_size=mp.batch_size)  # type: ignore[arg-type]
        rows = certify_dataset(certifier, ctx.x[:n], ctx.y[:n], out_path=path,
                               seed=ctx.protocol.seed, progress=progress)
    finally:
        close()
    seconds = time.perf_counter() - t0
    ctx.stages.done(stage, fp, fname, seconds)
    ctx.hooks.stage(ctx.defense.name, stage, "done")
    if not rows:
        rows = read_rows(path)
    return direction_certificates(rows, read_header(path))["joint"], seconds


def _run_smoothed_attack(ctx: _Context) -> EvalResult | None:
    cp = ctx.protocol.certified
    noise = smoothing_noise(ctx.defense.config)
    if cp is None or cp.attack is None or noise is None or certificate_norm(noise[0]) != "l2":
        return None
    from bastion.certify.smoothed_attack import attack_smoothed
    from bastion.certify.smoothing import SmoothedClassifier
    from bastion.noise import from_std

    radii = [r for r in cp.radii if r > 0]
    if not radii:
        return None
    k = min(cp.n_inputs, len(ctx.x))
    smoothed = SmoothedClassifier(ctx.model, from_std(noise[0], noise[1]), ctx.num_classes)
    attack = cp.attack
    return _record_stage(
        ctx, "smoothed-attack",
        {"attack": protocol_dict(attack), "radii": radii, "n_inputs": cp.n_inputs,
         "alpha": cp.alpha, "noise": noise, "seed": ctx.protocol.seed},
        f"SmoothAdv on the smoothed classifier ({len(radii)} radii)", k,
        lambda _progress: attack_smoothed(smoothed, ctx.x[:k], ctx.y[:k], radii,
                                          steps=attack.steps, samples=attack.samples,
                                          n=attack.n, alpha=cp.alpha,
                                          seed=ctx.protocol.seed))


def _run_checks(ctx: _Context, results: Mapping[str, EvalResult],
                cert: Certificate | None, smoothed: EvalResult | None) -> list[CheckFinding]:
    if not ctx.protocol.checks:
        return []
    stage, fname = "checks", "checks.json"
    fp = ctx.fingerprint({"checks": ctx.protocol.check_points,
                          "results": {k: stable_hash(v.to_dict()) for k, v in results.items()},
                          "cert": None if cert is None else stable_hash(cert.to_dict()),
                          "smoothed": None if smoothed is None
                          else stable_hash(smoothed.to_dict())})
    if ctx.stages.fresh(stage, fp, fname):
        data = json.loads((ctx.stages.folder / fname).read_text())
        return [CheckFinding.from_dict(f) for f in data["findings"]]
    t0 = time.perf_counter()
    k = min(ctx.protocol.check_points, len(ctx.x))
    hist = read_history(ctx.run_dir)
    expected = None
    if hist is not None and len(hist) and hist.epochs[-1].get("test_clean_acc") is not None:
        expected = float(hist.epochs[-1]["test_clean_acc"])
    found = run_checks(ctx.model, ctx.x[:k], ctx.y[:k], num_classes=ctx.num_classes,
                       warn=False)
    for emp in ctx.protocol.empirical:
        r = results[emp.norm]
        weaker = _label_selector(adapted(emp.attacks[0], ctx.model).label)
        entries, _ = _plan(emp, ctx.model)
        strongest = adapted(entries[-1], ctx.model).label if len(entries) > 1 else None
        large = None if _costly_first(emp, ctx.model) else emp.large_eps
        found += run_checks(
            result=r, num_classes=ctx.num_classes, expected_clean=expected,
            eps_large=large, large_norm=emp.norm if large else None,
            weaker=weaker if strongest else None,
            stronger=_label_selector(strongest) if strongest else None,
            convergence_eps=emp.eps if strongest else None, warn=False)
    if cert is not None and smoothed is not None:
        radii = sorted({o.eps for o in smoothed.outcomes})
        found += run_checks(result=smoothed, cert=cert, radii=radii, warn=False)
    if cert is not None and cert.method == "lipschitz-margin" and cert.norm in results and (
            len(cert) == len(results[cert.norm])):
        # a deterministic certificate against the white-box attacks of its own norm
        emp = next(e for e in ctx.protocol.empirical if e.norm == cert.norm)
        found += run_checks(result=results[cert.norm], cert=cert,
                            radii=[emp.eps, *emp.radii()], warn=False)
    unique: list[CheckFinding] = []
    for f in found:
        if all((f.name, f.message) != (u.name, u.message) for u in unique):
            unique.append(f)
    if _main():
        atomic_write_json(ctx.stages.folder / fname,
                          {"findings": [f.to_dict() for f in unique]})
    ctx.stages.done(stage, fp, fname, time.perf_counter() - t0)
    return unique


def outcome_label(params: Mapping[str, Any]) -> str:
    """The column label of an outcome from its recorded params (``PGD-20``, ...), with
    `` (BPDA)`` where the attack ran through BPDA without its name saying so (AutoAttack
    and EOT-PGD against a non-differentiable defense)."""
    label = _attack_label_of(params)
    name = params.get("name") if isinstance(params, Mapping) else None
    if isinstance(params, Mapping) and params.get("bpda") and name != "bpda-pgd":
        label += " (BPDA)"
    return label


def _attack_label_of(params: Mapping[str, Any]) -> str:
    threat = params.get("threat", {}) if isinstance(params, Mapping) else {}
    return attack_label(str(params.get("name", "?")), threat.get("steps"),
                        params.get("restarts"))


def _labels_at(r: EvalResult, norm: str, eps: float) -> list[str]:
    """The distinct attack labels of the outcomes at ``(norm, eps)``, in record order."""
    out: list[str] = []
    for o in r.select(norm=norm, eps=eps):
        lab = outcome_label(o.params)
        if lab not in out:
            out.append(lab)
    return out


def _label_selector(label: str) -> Callable[[Any], bool]:
    return lambda o: _attack_label_of(o.params) == label  # the suite entry's label


# ------------------------------------------------------------------------------ the row

def _certified_radii(cert: Certificate | None, protocol: Protocol) -> tuple[float, ...] | None:
    """The leaderboard radii of ``cert``: the Lipschitz protocol's for a Lipschitz-margin
    certificate, the smoothing protocol's otherwise."""
    if cert is None:
        return None
    if cert.method == "lipschitz-margin":
        return protocol.lipschitz.radii if protocol.lipschitz is not None else None
    if cert.norm == "l0":
        return (tuple(float(b) for b in protocol.mmcert.budgets)
                if protocol.mmcert is not None else None)
    return protocol.certified.radii if protocol.certified is not None else None


def build_row(
    *, name: str, config: Any, protocol: Protocol, results: Mapping[str, EvalResult],
    minimal: Mapping[str, EvalResult | None], cert: Certificate | None,
    smoothed: EvalResult | None = None, findings: list[CheckFinding],
    history: History | None, timings: Mapping[str, float],
    base: Mapping[str, str], source: str, run_dir: Path, description: str = "",
) -> dict[str, Any]:
    """A defense's leaderboard row: a flat JSON dict (see ``bench.leaderboard``).

    Accuracies are fractions in [0, 1]; radii in [0, 1] pixel units; times in seconds.
    Keys: ``robust_acc/<norm>/<eps>/<attack>`` per attack at the leaderboard radius (the
    minimal attack, e.g. ``FMN``, counts the points it broke within eps) and ``.../worst``
    (a point is robust only if every attack, the minimal one included, failed), ``asr/<norm>/<eps>``
    (eq. 1, worst case over all points), ``avg_perturbation/<norm>`` (eq. 3 over all
    points) and ``avg_perturbation_successes/<norm>``, ``certified_acc/<norm>/<radius>``
    and ``acr``.
    """
    row: dict[str, Any] = {"name": name, "description": description, "source": source,
                           "run_dir": str(run_dir),
                           "method": config.method, "model": config.model,
                           "dataset": config.dataset, "n_test": protocol.n_test}
    clean = None
    for emp in protocol.empirical:
        r = results[emp.norm]
        clean = float(r.clean_correct.double().mean())
        key = f"{emp.norm}/{emp.eps:g}"
        for label in _labels_at(r, emp.norm, emp.eps):
            sel = [o for o in r.select(norm=emp.norm, eps=emp.eps)
                   if outcome_label(o.params) == label]
            part = EvalResult(index=r.index, labels=r.labels, clean_pred=r.clean_pred,
                              outcomes=tuple(sel))
            row[f"robust_acc/{key}/{label}"] = float(part.adv_correct(emp.eps)
                                                     .double().mean())
            if sel[0].draws > 1:
                row[f"draw_spread/{key}/{label}"] = part.draw_spread(attack=sel[0].attack,
                                                                     norm=emp.norm,
                                                                     eps=emp.eps)
        m = minimal.get(emp.norm)
        if m is not None:
            # the minimal attack's points within eps break points too (the worst case)
            row[f"robust_acc/{key}/{m.outcomes[0].attack.upper()}"] = float(
                m.adv_correct(emp.eps, norm=emp.norm).double().mean())
            for o in m.outcomes:
                # a randomized defense's clean pass differs between the two records: a
                # point wrong in the attacks' clean pass stays as it is there
                ok = r.clean_correct
                o = dataclasses.replace(
                    o, adv_pred=torch.where(ok, o.adv_pred, r.clean_pred),
                    perturbation=torch.where(ok, o.perturbation, 0.0))
                r = r.with_outcome(o)
        row[f"robust_acc/{key}/worst"] = float(r.adv_correct(emp.eps, norm=emp.norm)
                                               .double().mean())
        row[f"asr/{key}"] = attack_success_rate(r, eps=emp.eps, norm=emp.norm)
        row[f"curve/{emp.norm}"] = {f"{e:g}": v for e, v in r.robust_accuracy_curve(
            norm=emp.norm, radii=[0.0, *emp.radii()]).items()}
        if m is not None:
            row[f"avg_perturbation/{emp.norm}"] = average_perturbation(m)
            s = average_perturbation_of_successes(m)
            row[f"avg_perturbation_successes/{emp.norm}"] = None if math.isnan(s) else s
    row["clean_acc"] = clean
    radii = _certified_radii(cert, protocol)
    if cert is not None and radii is not None:
        labels = cert.labels
        row["certificate"] = cert.method
        accs = certified_accuracy(cert, labels, list(radii)).tolist()
        for rad, acc in zip(radii, accs, strict=True):
            row[f"certified_acc/{cert.norm}/{rad:g}"] = float(acc)
        row["acr"] = average_certified_radius(cert, labels)
        if "topk_radius" in cert.extra:  # a relaxed top-k GloRo model
            row["certified_top_k"] = int(cert.extra["topk_radius"].shape[1])
            for rad, acc in zip(radii, topk_certified_accuracy(cert, labels, radii),
                                strict=True):
                row[f"certified_topk_acc/{cert.norm}/{rad:g}"] = acc
        row["certified_clean_acc"] = float(((~cert.abstained) & (cert.prediction == labels))
                                           .double().mean())
        row["abstain_rate"] = float(cert.abstained.double().mean())
        row["certified_n"] = len(cert)
    if smoothed is not None:
        for o in smoothed.outcomes:
            row[f"smoothed_robust_acc/{o.norm}/{o.eps:g}"] = float(
                smoothed.adv_correct(o.eps, norm=o.norm).double().mean())
    row["train_seconds"] = (sum(float(e.get("train_seconds") or 0.0) for e in history.epochs)
                            if history is not None else None)
    row["epochs"] = len(history) if history is not None else None
    row.update({f"{k}_seconds": round(v, 2) for k, v in timings.items()})
    row["flags"] = sorted({f.name for f in findings})
    row["seeds"] = {"train": config.seed, "eval": protocol.seed}
    row["versions"] = _versions()
    row.update({f"{k}_hash": v for k, v in base.items()})
    row["robustbench"] = robustbench_card(row, protocol, config)
    return row


def robustbench_card(row: Mapping[str, Any], protocol: Protocol, config: Any
                     ) -> dict[str, Any] | None:
    """RobustBench's model-card fields (``model_info/<dataset>/<Linf|L2>/<name>.json``)
    for the first empirical threat model: clean and AutoAttack accuracy as percentage
    strings (``autoattack_acc`` None when the protocol has no AutoAttack), ``eps`` and
    ``threat_model``; the fields only the authors know (link, authors, venue) are None."""
    if not protocol.empirical:
        return None
    emp = protocol.empirical[0]
    aa = row.get(f"robust_acc/{emp.norm}/{emp.eps:g}/AutoAttack")
    return {
        "link": None, "name": row["name"], "authors": None,
        "additional_data": False, "number_forward_passes": 1,
        "dataset": config.dataset, "venue": None, "architecture": config.model,
        "threat_model": {"linf": "Linf", "l2": "L2"}[emp.norm], "eps": f"{emp.eps:g}",
        "clean_acc": f"{100 * row['clean_acc']:.2f}" if row.get("clean_acc") is not None
        else None,
        "reported": None,
        "autoattack_acc": None if aa is None else f"{100 * aa:.2f}",
    }


def _defense_choice(defense: ResolvedDefense, out: Path) -> DefenseChoice | None:
    """The pre-processing defense a ``base`` entry puts in front of its base's model."""
    pre = defense.entry.preprocess
    if pre is None:
        return None
    if pre.from_ is not None:
        assert defense.defense_from is not None
        return DefenseChoice(from_run=str(defense.defense_from.trained_run(out)))
    return DefenseChoice(name=pre.name, options=dict(pre.options))


def defense_config(defense: ResolvedDefense, out: Path) -> Any:
    """The config ``defense`` is trained and fingerprinted with in the bench folder ``out``:
    its recipe's, with ``init_from`` pointing at the run of the defense it starts from."""
    if defense.init_defense is None:
        return defense.config
    return dataclasses.replace(defense.config,
                               init_from=str(defense.init_defense.trained_run(out)))


def run_defense(defense: ResolvedDefense, suite: Suite, out: Path,
                hooks: BenchHooks | None = None) -> dict[str, Any]:
    """Train or load one defense, evaluate, certify and check it; return its row.

    The row is also saved to ``<out>/<name>/bench/outcome.json``.
    """
    hooks = hooks or BenchHooks()
    p = suite.protocol
    folder_root = out / defense.name
    defense = dataclasses.replace(defense, config=defense_config(defense, out))
    choice = _defense_choice(defense, out)
    if defense.base is not None:
        run_dir = defense.base.trained_run(out)
        for needed in (run_dir, *([Path(choice.from_run)] if choice.from_run else [])):
            if checkpoint_dir(needed, "last") is None:
                raise MissingFileError(
                    f"defense {defense.name!r} needs the trained run {needed}, which has no "
                    "checkpoint yet; bench the defenses it names first (or together: --only "
                    "with both names)")
        what = choice.name or f"the defense of {choice.from_run}"
        source = f"{defense.base.name} behind {what}"
        init_distributed(resolve_device(defense.config.device))
    elif defense.run_dir is None:
        run_dir = defense.trained_run(out)
        on_batch, on_epoch, close = hooks.train(defense.name, defense.config.epochs)
        hooks.stage(defense.name, "train", "start")
        try:
            train_from_config(defense.config, run_dir, resume=True, on_batch=on_batch,
                              on_epoch=on_epoch)
        finally:
            close()
        hooks.stage(defense.name, "train", "done")
        source = "recipe"
    else:
        run_dir = defense.run_dir
        source = f"run {run_dir}"
        init_distributed(resolve_device(defense.config.device))
    bench_dir = folder_root / BENCH
    if _main():
        bench_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(bench_dir / "config.yaml", dump_config(defense.config).encode())
    _barrier()
    device = resolve_device(defense.config.device)
    model = load_model(run_dir, "last", device)
    test = load_dataset(defense.config.dataset, "test", defense.config.data_dir)
    base = {"config": config_hash(defense.config), "weights": weights_hash(run_dir)}
    if choice is not None:
        model = choice.apply(model, test.shape[0], device)
        base["defense"] = stable_hash({**choice.to_dict(), "from_run": None, "weights": (
            weights_hash(Path(choice.from_run)) if choice.from_run else None)})
    n = min(p.n_test, len(test))
    if n < p.n_test:
        log.warning("the test set has only %d points; protocol n_test %d", n, p.n_test)
    ctx = _Context(defense, p, run_dir, _Stages(bench_dir), hooks, model,
                   test.images[:n], test.labels[:n], test.num_classes, base)
    results: dict[str, EvalResult] = {}
    minimal: dict[str, EvalResult | None] = {}
    for emp in p.empirical:
        results[emp.norm] = _run_attacks(ctx, emp)
        minimal[emp.norm] = _run_minimal(ctx, emp)
        _run_examples(ctx, emp)
    certified = _run_certify(ctx) or _run_mmcert(ctx) or _run_lipschitz(ctx)
    cert = certified[0] if certified else None
    smoothed = _run_smoothed_attack(ctx) if cert is not None else None
    findings = _run_checks(ctx, results, cert, smoothed)
    timings = {"eval": sum(ctx.stages.seconds(f"attacks-{e.norm}") for e in p.empirical),
               "minimal": sum(ctx.stages.seconds(f"minimal-{e.norm}") for e in p.empirical),
               "certify": certified[1] if certified else 0.0,
               "smoothed_attack": ctx.stages.seconds("smoothed-attack")}
    row = build_row(name=defense.name, config=defense.config, protocol=p, results=results,
                    minimal=minimal, cert=cert, smoothed=smoothed, findings=findings,
                    history=read_history(run_dir), timings=timings,
                    base={**base, "protocol": stable_hash(protocol_dict(p))},
                    source=source, run_dir=run_dir, description=defense.entry.description)
    if _main():
        atomic_write_json(bench_dir / OUTCOME, row)
    _barrier()
    return row


@dataclass(frozen=True)
class BenchResult:
    """What ``run_suite`` produced: the bench folder and one row per defense, in order."""

    out: Path
    suite: Suite
    rows: list[dict[str, Any]]


def run_suite(suite_path: str | Path, out: str | Path | None = None, *,
              only: list[str] | None = None, hooks: BenchHooks | None = None
              ) -> BenchResult:
    """Run a suite file into ``out`` (default ``runs/bench/<suite name>``); resumable.

    Everything is validated before anything is trained or written (``load_suite``).
    ``only`` restricts the run to the named defenses (the leaderboard still lists every
    defense whose outcome is saved). Writes ``<out>/suite.yaml`` (the file as given),
    then each defense (``run_defense``), then the leaderboard files
    (``bench.leaderboard.write_leaderboard``).
    """
    from bastion.bench.leaderboard import write_leaderboard

    suite_path = Path(suite_path)
    suite, resolved = load_suite(suite_path)
    names = [d.name for d in resolved]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise InputError(f"--only: unknown defense(s) {unknown}; the suite has {names}")
    out = Path(out) if out is not None else Path("runs") / "bench" / suite.name
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a folder")
    if _main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "suite.yaml", suite_path.read_bytes())
    _barrier()
    rows = []
    for d in resolved:
        if only and d.name not in only:
            saved = out / d.name / BENCH / OUTCOME
            if saved.is_file():
                    rows.append(json.loads(saved.read_text()))
            continue
        rows.append(run_defense(d, suite, out, hooks))
    if _main():
        write_leaderboard(out, rows, suite)
    _barrier()
    return BenchResult(out, suite, rows)


__all__ = [
    "BenchHooks",
    "BenchResult",
    "build_row",
    "defense_config",
    "outcome_label",
    "robustbench_card",
    "run_defense",
    "run_suite",
    "weights_hash",
]
