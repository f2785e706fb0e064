"""Command-line interface: ``bastion train | eval | certify | certify-lipschitz |
certify-mmcert | bench | report | demo``.

Thin by design: each command parses its options, calls one library function from
``bastion.runs`` or ``bastion.bench`` and shows progress and a short table. Everything it
writes lives in the run folder (or the bench folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import traceback
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from tqdm import tqdm

from bastion._validate import check_int, check_run_dir
from bastion.attacks.eot import DEFAULT_DRAWS
from bastion.attacks.evaluate import MINIMAL_ATTACKS
from bastion.attacks.spec import ATTACKS, AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.certify.config import CertificationWarning, CertifyConfig
from bastion.config import load_config
from bastion.errors import BastionError, InputError, MissingFileError
from bastion.preprocess.registry import PREPROCESSORS
from bastion.runs import (
    DefenseChoice,
    eval_record_path,
    evaluate_minimal_run,
    evaluate_run,
    load_config_of,
    minimal_record_path,
    run_is_randomized,
    train_from_config,
)

DEFAULT_RUNS = Path("runs")
DEBUG_ENV = "BASTION_DEBUG"
"""Environment variable: ``1`` makes user errors show their traceback (as ``--debug``)."""


class _CountBar:
    """``progress(done, total)`` for the certification functions: a tqdm bar of images,
    created at the first call (once the run is loaded, so errors print cleanly)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, unit="img", dynamic_ncols=True,
                            desc=self.desc)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

def _train_progress(total_epochs: int) -> tuple[Any, Any, Any]:
    bar: dict[str, tqdm] = {}

    def on_batch(epoch: int, step: int, steps: int) -> None:
        if "b" not in bar:
            bar["b"] = tqdm(total=steps, desc=f"epoch {epoch + 1}/{total_epochs}", unit="batch",
                            leave=False, dynamic_ncols=True)
        bar["b"].update(1)

    def on_epoch(rec: dict[str, Any]) -> None:
        if "b" in bar:
            bar.pop("b").close()
        parts = [f"epoch {rec['epoch']}/{total_epochs}", f"loss {rec.get('train_loss', 0):.4f}"]
        for key in ("test_clean_acc", "test_robust_acc", "train_robust_acc"):
            if key in rec:
                parts.append(f"{key} {100 * rec[key]:.2f}%")
        parts.append(f"{rec['seconds']:.0f}s")
        tqdm.write("  ".join(parts))

    def close() -> None:
        if "b" in bar:
            bar.pop("b").close()

    return on_batch, on_epoch, close


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else DEFAULT_RUNS / Path(args.config).stem
    print(f"training {cfg.method} {cfg.model} on {cfg.dataset} -> {out}")
    on_batch, on_epoch, close = _train_progress(cfg.epochs)
    t0 = time.perf_counter()
    try:
        history = train_from_config(cfg, out, resume=not args.no_resume,
                                    overwrite=getattr(args, "overwrite", False),
                                    on_batch=on_batch, on_epoch=on_epoch)
    finally:
        close()
    last = history.epochs[-1] if history.epochs else {}
    print(f"done in {time.perf_counter() - t0:.0f}s; run folder: {out}")
    if last:
        rows = [("clean accuracy", last.get("test_clean_acc"))]
        if last.get("test_robust_acc") is not None:  # absent when eval.attack is null
            rows.append(("robust accuracy (per-epoch attack)", last["test_robust_acc"]))
        print(_table(rows))
    return 0


def _attack_from_args(args: argparse.Namespace, draws: int = 1) -> AttackSpec:
    threat = ThreatModel(eps=args.eps, norm=args.norm, steps=args.steps,
                         step_size=args.step_size)
    if args.eot_samples is not None and args.attack != "eot-pgd":
        raise InputError(f"--eot-samples applies to --attack eot-pgd, not {args.attack!r}")
    return AttackSpec(name=args.attack, threat=threat, restarts=args.restarts,
                      objective=args.objective, draws=draws, eot_samples=args.eot_samples)


def _defense_from_args(args: argparse.Namespace) -> DefenseChoice | None:
    """``--defense NAME [--defense-option K=V ...]`` or ``--defense-from RUN``, checked."""
    if args.defense is None and args.defense_from is None:
        if args.defense_option:
            raise InputError("--defense-option needs --defense NAME")
        return None
    if args.defense is not None and args.defense_from is not None:
        raise InputError("give --defense NAME or --defense-from RUN_DIR, not both")
    if args.defense_from is not None:
        if args.defense_option:
            raise InputError("--defense-option applies to --defense NAME, not --defense-from")
        return DefenseChoice(from_run=str(check_run_dir(args.defense_from)))
    options: dict[str, Any] = {}
    for item in args.defense_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--defense-option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return DefenseChoice(name=args.defense, options=options)


def cmd_eval(args: argparse.Namespace) -> int:
    # every argument checked before the run is loaded (and nothing is written until the end)
    run = check_run_dir(args.run_dir)
    check_int(args.n, "--n", low=1)
    check_int(args.batch_size, "--batch-size", low=1)
    check_int(args.seed, "--seed", low=0)
    defense = _defense_from_args(args)
    minimal = args.attack in MINIMAL_ATTACKS
    if args.draws is not None:
        check_int(args.draws, "--draws", low=1)
    draws = args.draws or (DEFAULT_DRAWS if run_is_randomized(run, defense) else 1)
    attack = None if minimal else _attack_from_args(args, draws)
    if minimal and (args.norm == "linf" and args.attack == "ddn"):
        raise InputError("--attack ddn is an L2 attack: add --norm l2 (or use --attack fmn)")
    bars: list[tqdm] = []
    desc = args.attack if minimal else f"{args.attack} eps={args.eps:g}"

    def progress(done: int) -> None:
        if not bars:  # created once the run is loaded, so errors print cleanly
            bars.append(tqdm(total=args.n, desc=desc, unit="img", dynamic_ncols=True))
        bars[0].update(done)

    try:
        if attack is None:
            result = evaluate_minimal_run(run, args.attack, norm=args.norm, steps=args.steps,
                                          n=args.n, which=args.checkpoint,
                                          batch_size=args.batch_size, seed=args.seed,
                                          progress=progress, defense=defense)
        else:
            result = evaluate_run(run, attack, n=args.n, which=args.checkpoint,
                                  batch_size=args.batch_size, seed=args.seed,
                                  progress=progress, defense=defense)
    finally:
        for bar in bars:
            bar.close()
    clean = float(result.clean_correct.double().mean())
    seconds = sum(o.seconds for o in result.outcomes)
    rows = [("points", str(args.n)), ("clean accuracy", _rate(clean))]
    pre = result.params.get("preprocessor")
    if pre:
        flags = ", ".join([("randomized" if pre.get("randomized") else "deterministic"),
                           ("differentiable" if pre.get("differentiable")
                            else "non-differentiable")])
        rows.insert(0, ("defense", f"{pre['class']} ({flags})"))
    if attack is None:
        from bastion.metrics import average_perturbation

        o = result.outcomes[0]
        rows.append((f"average perturbation ({args.attack}-{args.steps}, {args.norm}, eq. 3)",
                     f"{average_perturbation(result):.4f}"))
        ok = result.clean_correct
        broken = (o.adv_pred != result.labels) & ok
        rows.append(("clean-correct points broken", _rate(float(broken.sum()) /
                                                          max(1, int(ok.sum())))))
        path = minimal_record_path(run, args.attack, args.norm, args.steps, args.n,
                                   args.checkpoint, defense)
    else:
        robust = float(result.adv_correct().double().mean())
        o = result.outcomes[0]
        bpda = o.params.get("bpda") and attack.name != "bpda-pgd"
        how = (attack.name if attack.name in ("autoattack", "autoattack-rand")  # fixed steps
               else f"{attack.name}-{attack.steps}") + (" + BPDA" if bpda else "")
        if attack.draws > 1:
            how += f", robust on all {attack.draws} draws"
        rows.append((f"robust accuracy ({how}, {attack.norm} eps {attack.eps:g})",
                     _rate(robust)))
        if attack.draws > 1:
            spread = result.draw_spread()
            rows.append(("one draw: mean (std) over draws",
                         f"{_rate(spread['mean'])} ({100 * spread['std']:.2f})"))
        path = eval_record_path(run, attack, args.n, args.checkpoint, defense)
    rows.append(("seconds", f"{seconds:.1f}"))
    print(_table(rows))
    print(f"record: {path}")
    return 0


C = TypeVar("C")


def _add_config_options(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """One ``--option`` per field of the frozen dataclass ``cls`` (``n_inputs`` ->
    ``--n-inputs``): the type, ``Literal`` choices, default and ``metadata["help"]`` come
    from the field; a bool defaulting to False is a flag. ``X | None`` takes an ``X``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            kinds = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(kinds) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: cannot map {tp} to an option")
            tp = kinds[0]
        flag = "--" + f.name.replace("_", "-")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no default")
        kw: dict[str, Any] = {"default": default, "help": f.metadata.get("help")}
        if tp is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, **kw)
        elif typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            parser.add_argument(flag, type=type(choices[0]), choices=choices, **kw)
        elif tp in (int, float, str):
            parser.add_argument(flag, type=tp, **kw)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: cannot map {tp} to an option")


def _config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The dataclass ``cls`` from the options ``_add_config_options`` added (validated by
    its ``__post_init__``)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def cmd_certify(args: argparse.Namespace) -> int:
    """Randomized-smoothing certification of a run's test set (rows written as it goes)."""
    from bastion.bench.plots import plot_certified_accuracy
    from bastion.certify.rowstore import read_header, read_rows
    from bastion.certify.summary import rows_to_certificate, summarize
    from bastion.runs import certify_run

    check_run_dir(args.run_dir)
    # every setting checked before any work; what n and alpha rule out is warned about here,
    # before any noise is drawn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CertificationWarning)
        config = _config_from_args(CertifyConfig, args)
    for w in caught:
        if issubclass(w.category, CertificationWarning):
            print(f"bastion: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for other in args.compare:
        if not Path(other).is_file():
            raise MissingFileError(f"--compare: certification file {other!r} does not exist")
    progress = _CountBar(f"certify {config.noise} sigma={config.sigma:g}")

    try:
        res = certify_run(args.run_dir, config, out=args.out, progress=progress)
    finally:
        progress.close()
    if res.summary is None:  # a rank other than 0 under torchrun
        return 0
    s = res.summary
    norm = read_header(res.out_path)["norm"]
    curves = {f"{Path(args.run_dir).name} ({config.noise} sigma={config.sigma:g}, "
              f"n={config.n})": rows_to_certificate(res.rows, norm)}
    for other in args.compare:
        curves[Path(other).stem] = rows_to_certificate(read_rows(other), norm)
    plot_path = plot_certified_accuracy(curves, res.out_path.with_suffix(".png"),
                                        title=f"{load_config_of(args.run_dir).dataset}: "
                                        "certified accuracy")
    rows: list[tuple[str, Any]] = [("points", str(s["n"])),
                                   ("abstained", _rate(s["abstain_rate"]))]
    if config.radius is None:
        rows += [(f"certified accuracy at r={r:g}", _rate(a))
                 for r, a in zip(s["radii"], s["certified_accuracy"], strict=True)]
        rows += [("ACR", f"{s['acr']:.4f}")]
    else:  # the sequential test answers one question: certified at this radius or not
        acc_r = summarize(res.rows, [config.radius], norm)["certified_accuracy"][0]
        draws = sum(int(r.details["counts"]["n"]) for r in res.rows) / max(1, len(res.rows))
        rows += [(f"certified accuracy at r={config.radius:g}", _rate(acc_r)),
                 ("noise draws per input (mean, after n0)",
                  f"{draws:.0f} of at most {config.n}")]
    rows += [("seconds", f"{s['seconds']:.1f}")]
    print(_table(rows))
    print(f"rows: {res.out_path}\nplot: {plot_path}")
    return 0


def cmd_certify_lipschitz(args: argparse.Namespace) -> int:
    """Deterministic L2 certification of a run's test set by its Lipschitz margin."""
    from bastion.bench.plots import plot_certified_accuracy
    from bastion.certify.rowstore import read_header, read_rows
    from bastion.certify.summary import rows_to_certificate
    from bastion.runs import certify_lipschitz_run

    check_run_dir(args.run_dir)
    for other in args.compare:
        if not Path(other).is_file():
            raise MissingFileError(f"--compare: certification file {other!r} does not exist")
    if any(r < 0 for r in args.radii):
        raise InputError(f"--radii must be >= 0, got {args.radii}")
    progress = _CountBar(f"certify lipschitz ({args.method})")

    try:
        res = certify_lipschitz_run(args.run_dir, method=args.method, per_logit=args.per_logit,
                                    checkpoint=args.checkpoint, n_inputs=args.n_inputs,
                                    skip=args.skip, out=args.out, radii=args.radii,
                                    progress=progress)
    finally:
        progress.close()
    if res.summary is None:
        return 0
    s = res.summary
    header = read_header(res.out_path)
    curves = {f"{Path(args.run_dir).name} (Lipschitz margin, {args.method})":
              rows_to_certificate(res.rows, "l2")}
    for other in args.compare:
        curves[Path(other).stem] = rows_to_certificate(read_rows(other), "l2")
    plot_path = plot_certified_accuracy(curves, res.out_path.with_suffix(".png"),
                                        title=f"{load_config_of(args.run_dir).dataset}: "
                                        "certified accuracy (L2)")
    rows: list[tuple[str, Any]] = [("points", str(s["n"])),
                                   ("bound", f"{header['method']}, "
                                    f"{'sound' if header['sound'] else 'NOT sound'}"),
                                   ("product of layer constants", f"{header['prefix']:.4g}"),
                                   ("largest pairwise K_ij", f"{header['max_pairwise']:.4g}")]
    rows += [(f"certified accuracy at r={r:g}", _rate(a))
             for r, a in zip(s["radii"], s["certified_accuracy"], strict=True)]
    rows += [("ACR", f"{s['acr']:.4f}"), ("seconds", f"{s['seconds']:.1f}")]
    print(_table(rows))
    print(f"rows: {res.out_path}\nplot: {plot_path}")
    return 0


def cmd_certify_mmcert(args: argparse.Namespace) -> int:
    """MMCert: certified l0 budgets per modality of a sub-sampling run's test set."""
    from bastion.bench.plots import plot_certified_accuracy
    from bastion.certify.mmcert import direction_certificates
    from bastion.runs import certify_mmcert_run

    check_run_dir(args.run_dir)
    if args.budgets is not None and any(b < 0 for b in args.budgets):
        raise InputError(f"--budgets must be >= 0, got {args.budgets}")
    directions = None
    if args.directions:
        directions = {}
        for item in args.directions:
            name, _, weights = item.partition("=")
            try:
                directions[name] = tuple(int(w) for w in weights.split(","))
            except ValueError:
                raise InputError(f"--directions: {item!r} is not NAME=W1,W2,... (whole "
                                 "weights, one per modality)") from None
            if not name or not weights:
                raise InputError(f"--directions: {item!r} is not NAME=W1,W2,...")
    progress = _CountBar(f"certify {'mmcert' if args.bound == 'top2' else 'ablation'}")

    try:
        res = certify_mmcert_run(
            args.run_dir, keep=tuple(args.keep) if args.keep else None, n0=args.n0, n=args.n,
            alpha=args.alpha, operations=args.operations, bound=args.bound,
            checkpoint=args.checkpoint, n_inputs=args.n_inputs, skip=args.skip,
            batch_size=args.batch_size, directions=directions, out=args.out,
            budgets=args.budgets, progress=progress)
    finally:
        progress.close()
    if res.summary is None:
        return 0
    s = res.summary
    certs = direction_certificates(res.rows)
    plot_path = plot_certified_accuracy(
        {f"{name} (r per modality)": c for name, c in certs.items()},
        res.out_path.with_suffix(".png"),
        title=f"{load_config_of(args.run_dir).dataset}: certified accuracy vs l0 budget")
    rows: list[tuple[str, Any]] = [("points", str(s["n"]))]
    for name in certs:
        accs = ", ".join(f"r={b}: {_rate(a)}" for b, a in
                         zip(s["budgets"], s[name]["certified_accuracy"], strict=True))
        rows.append((f"{name}", accs))
        rows.append((f"{name}: mean certified budget", f"{s[name]['mean_budget']:.2f}"))
    rows += [("seconds per input", f"{s['seconds_per_input']:.2f}")]
    print(_table(rows))
    print(f"rows: {res.out_path}\nplot: {plot_path}")
    return 0


_ROOT = Path(__file__).resolve().parents[2]
DEMO_SUITE = _ROOT / "benchmarks" / "suites" / "quick.yaml"


class _BenchProgress:
    """The CLI's view of a bench: a line per stage, tqdm bars for training and attacks."""

    def __init__(self) -> None:
        self.t0: dict[tuple[str, str], float] = {}

    def stage(self, defense: str, stage: str, status: str) -> None:
        key = (defense, stage)
        if status == "start":
            self.t0[key] = time.perf_counter()
            tqdm.write(f"[{defense}] {stage} ...")
        elif status == "done":
            dt = time.perf_counter() - self.t0.pop(key, time.perf_counter())
            tqdm.write(f"[{defense}] {stage} done ({dt:.0f}s)")
        else:
            tqdm.write(f"[{defense}] {stage}: {status} (saved earlier)")

    @staticmethod
    def bar(desc: str, total: int) -> tuple[Any, Any]:
        b = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)
        return b.update, b.close

    @staticmethod
    def train(defense: str, epochs: int) -> tuple[Any, Any, Any]:
        return _train_progress(epochs)

    def hooks(self) -> Any:
        from bastion.bench.harness import BenchHooks

        return BenchHooks(stage=self.stage, bar=self.bar, train=self.train)


def _print_leaderboard(rows: list[dict[str, Any]]) -> None:
    from bastion.bench.leaderboard import leaderboard_columns, to_markdown

    cols = [c for c in leaderboard_columns(rows)
            if not c[0].endswith(("minimal_seconds",)) and not c[0].startswith("asr/")]
    print(to_markdown(rows, cols))


def cmd_bench(args: argparse.Namespace) -> int:
    from bastion.bench.harness import run_suite

    res = run_suite(args.suite, args.out, only=args.only or None,
                    hooks=_BenchProgress().hooks())
    print(f"\nleaderboard ({res.suite.name}, accuracies in %):\n")
    _print_leaderboard(res.rows)
    print(f"bench folder: {res.out} (leaderboard.md, leaderboard.csv, leaderboard.json, "
          "robustbench.json)")
    if not args.no_report:
        path = _write_report(res.out, None)
        print(f"report: {path}")
    return 0


def _write_report(folder: Path | str, out: str | None) -> Path:
    from bastion.bench.collect import collect
    from bastion.bench.report import write_report

    title, entries, columns, notes = collect(folder)
    path = Path(out) if out else Path(folder) / "report.html"
    return write_report(path, entries, title=title, columns=columns, notes=notes)


def cmd_report(args: argparse.Namespace) -> int:
    folders = [Path(f) for f in args.folder]
    for folder in folders:
        if not folder.is_dir():
            raise MissingFileError(f"{str(folder)!r} is not a folder; give a bench folder "
                                   "(bastion bench) or a run folder (bastion train)")
    if len(folders) == 1:
        path = _write_report(folders[0], args.out)
    else:
        from bastion.bench.collect import collect
        from bastion.bench.report import ReportPart, write_combined

        if args.out is None:
            raise InputError("several folders make one page: give its file with --out "
                             "(for example --out results/report.html)")
        if len(set(map(Path.resolve, folders))) < len(folders):
            raise InputError("a folder is named twice; give each bench or run folder once")
        parts = [ReportPart(*collect(f)) for f in folders]
        path = write_combined(args.out, parts, title=args.title or "bastion: "
                              + ", ".join(p.title.removeprefix("bastion bench: ")
                                          for p in parts))
    print(f"report: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The quick suite (standard, short PGD-AT, short Gaussian smoothing) and its report."""
    ns = argparse.Namespace(suite=args.suite, out=args.out, only=None, no_report=False)
    return cmd_bench(ns)


def _rate(value: float | None) -> str:
    """A rate in [0, 1] as a percentage (``0.0712`` -> ``7.12%``); None -> ``n/a``."""
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def _table(rows: list[tuple[str, Any]]) -> str:
    """Aligned ``label  value`` lines. Each row's value is formatted by its caller: a string
    is shown as given (``_rate(x)``, ``f"{seconds:.1f}"``, ``str(n)``); an int as digits;
    None as ``n/a``. A bare float is taken for a rate and shown by ``_rate`` -- pass
    anything else (a time, an ACR) already formatted."""
    width = max(len(k) for k, _ in rows)
    lines = []
    for k, v in rows:
        if v is None or isinstance(v, float):
            v = _rate(v)
        lines.append(f"  {k.ljust(width)}  {v}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bastion", description="Train, attack and certify robust image classifiers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--debug", action="store_true",
                   help=f"on a user error, show the traceback too (or set {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a model from a YAML recipe", formatter_class=fmt)
    t.add_argument("config", help="YAML recipe, e.g. configs/pgd-at.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted), e.g. --set optim.lr=0.05")
    t.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    t.add_argument("--no-resume", action="store_true",
                   help="do not resume: start from scratch; a run folder that already holds "
                   "a run also needs --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="start over even if the run folder holds a run (another config, or "
                   "a finished one): its checkpoints, history, eval and certify records are "
                   "first moved aside to OUT/.replaced-<time>/")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="attack a trained run on its test set", formatter_class=fmt)
    e.add_argument("run_dir", help="run folder written by 'bastion train'")
    e.add_argument("--attack", default="pgd", choices=(*ATTACKS, *MINIMAL_ATTACKS[:2]),
                   help="attack to run: PGD, its adaptive versions (bpda-pgd: BPDA through a "
                   "non-differentiable defense; eot-pgd: EOT over a randomized one), "
                   "AutoAttack (autoattack-rand: the EOT version for randomized defenses), "
                   "or a minimal attack (fmn; ddn, L2) for the average perturbation")
    e.add_argument("--defense", default=None, choices=sorted(PREPROCESSORS),
                   help="put this pre-processing defense in front of the run's model")
    e.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --defense (repeatable), e.g. keep_prob=0.5")
    e.add_argument("--defense-from", default=None, metavar="RUN_DIR",
                   help="put the trained defense of this defended run (e.g. a guided "
                   "denoiser trained by configs/hgd.yaml) in front of the run's model")
    e.add_argument("--eot-samples", type=int, default=None,
                   help="EOT draws per gradient step (eot-pgd; default 10)")
    e.add_argument("--draws", type=int, default=None,
                   help="judge a randomized defense over this many passes: a point is robust "
                   "only if all are correct (default 10 for randomized defenses, else 1)")
    e.add_argument("--eps", type=float, default=0.1, help="radius in [0, 1] pixel units")
    e.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat-model norm")
    e.add_argument("--steps", type=int, default=20, help="PGD steps")
    e.add_argument("--step-size", type=float, default=None,
                   help="PGD step; default 2.5*eps/steps for linf, eps/2 for l2")
    e.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    e.add_argument("--objective", default="ce", choices=("ce", "margin", "dlr"),
                   help="loss the attack maximises")
    e.add_argument("--n", type=int, default=1000, help="first n test images")
    e.add_argument("--checkpoint", default="last", choices=("last", "best"),
                   help="end-of-training or best-robust checkpoint")
    e.add_argument("--batch-size", type=int, default=250, help="images per attack batch")
    e.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("certify", help="randomized-smoothing certification of a run's test set",
                       formatter_class=fmt)
    c.add_argument("run_dir", help="run folder written by 'bastion train'")
    _add_config_options(c, CertifyConfig)
    c.add_argument("--out", default=None,
                   help="JSONL rows file (default RUN_DIR/certify/<settings>.jsonl); resumed")
    c.add_argument("--compare", action="extend", nargs="+", default=[], metavar="JSONL",
                   help="other certification files to draw on the same plot (one or more; "
                   "the flag may repeat)")
    c.set_defaults(func=cmd_certify)

    cl = sub.add_parser("certify-lipschitz",
                        help="deterministic L2 certification of a run's test set by its "
                        "Lipschitz margin (one forward pass per image)", formatter_class=fmt)
    cl.add_argument("run_dir", help="run folder written by 'bastion train'")
    cl.add_argument("--method", default="gram", choices=("gram", "svd"),
                    help="layer bound: Gram iteration (sound, any size) or the exact SVD of "
                    "each operator (small layers only)")
    cl.add_argument("--per-logit", action="store_true",
                    help="the looser K_y + K_j instead of the pairwise K_yj")
    cl.add_argument("--checkpoint", default="last", choices=("last", "best"),
                    help="end-of-training or best-robust checkpoint")
    cl.add_argument("--n-inputs", type=int, default=None, help="at most this many test images")
    cl.add_argument("--skip", type=int, default=1, help="certify every skip-th test image")
    cl.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0],
                    help="L2 radii (pixel units) of the certified-accuracy table")
    cl.add_argument("--out", default=None, help="JSONL rows file (default "
                    "RUN_DIR/certify/lipschitz-<settings>.jsonl); resumed")
    cl.add_argument("--compare", action="extend", nargs="+", default=[], metavar="JSONL",
                    help="other certification files (e.g. smoothing's) on the same plot")
    cl.set_defaults(func=cmd_certify_lipschitz)

    cm = sub.add_parser("certify-mmcert",
                        help="MMCert: certified l0 budgets per modality of a sub-sampling "
                        "run's test set (arXiv 2403.19080)", formatter_class=fmt)
    cm.add_argument("run_dir", help="run folder of a model trained with the 'subsample' method")
    cm.add_argument("--keep", type=int, nargs="+", default=None,
                    help="elements kept per modality (default: the run's training keep)")
    cm.add_argument("--n0", type=int, default=100, help="selection sub-samples per input")
    cm.add_argument("--n", type=int, default=10_000, help="estimation sub-samples per input")
    cm.add_argument("--alpha", type=float, default=0.001, help="failure probability per input")
    cm.add_argument("--operations", default="modify", choices=("modify", "any"),
                    help="the attacker modifies elements, or also adds and deletes them")
    cm.add_argument("--bound", default="top2", choices=("top2", "complement"),
                    help="MMCert's Bonferroni bounds on p_A and p_B, or p_B = 1 - p_A "
                    "(randomized ablation)")
    cm.add_argument("--checkpoint", default="last", choices=("last", "best"))
    cm.add_argument("--n-inputs", type=int, default=None, help="at most this many test images")
    cm.add_argument("--skip", type=int, default=1, help="certify every skip-th test image")
    cm.add_argument("--batch-size", type=int, default=1000, help="sub-samples per forward pass")
    cm.add_argument("--directions", nargs="+", default=None, metavar="NAME=W1,W2",
                    help="budget directions R = t * (w1, w2, ...), e.g. ratio=1,2 for r2 = 2 r1 "
                    "(default: joint=1,1 and each modality alone); the first is the rows' "
                    "radius")
    cm.add_argument("--budgets", type=int, nargs="+", default=None,
                    help="budgets (elements per modality) of the certified-accuracy table")
    cm.add_argument("--out", default=None, help="JSONL rows file (default "
                    "RUN_DIR/certify/mmcert-<settings>.jsonl); resumed")
    cm.set_defaults(func=cmd_certify_mmcert)

    b = sub.add_parser("bench", help="train/load, attack, certify and check every defense of "
                       "a suite; leaderboard and report", formatter_class=fmt)
    b.add_argument("suite", help="suite YAML, e.g. benchmarks/suites/quick.yaml")
    b.add_argument("--out", default=None, help="bench folder (default runs/bench/<suite name>);"
                   " rerun the same command to resume")
    b.add_argument("--only", action="extend", nargs="+", default=[], metavar="NAME",
                   help="run only these defenses (the leaderboard keeps the others' saved rows)")
    b.add_argument("--no-report", action="store_true", help="do not write report.html")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="self-contained HTML report of bench or run folders",
                       formatter_class=fmt)
    r.add_argument("folder", nargs="+", help="bench folder (bastion bench) or run folder "
                   "(bastion train); several make one page, one part per folder")
    r.add_argument("--out", default=None, help="HTML file (default FOLDER/report.html; "
                   "required with several folders)")
    r.add_argument("--title", default=None, help="page title with several folders")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the quick suite on Fashion-MNIST (standard, PGD-AT, "
                       "Gaussian smoothing) and its report", formatter_class=fmt)
    d.add_argument("--suite", default=str(DEMO_SUITE), help="suite to run")
    d.add_argument("--out", default=str(DEFAULT_RUNS / "bench" / "quick"), help="bench folder")
    d.set_defaults(func=cmd_demo)
    for command in sub.choices.values():  # also after the command: bastion eval RUN --debug
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on a user error, show the traceback too (or set "
                             f"{DEBUG_ENV}=1)")
    return p


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 2 a user error (or bad arguments), 130
    interrupted.

    A user mistake is a ``bastion.errors.BastionError`` (a bad config key or value, a
    missing or corrupt file, a run folder that cannot be used as asked): it is printed as
    ``bastion: error: <message>`` without a traceback, unless ``--debug`` or
    ``BASTION_DEBUG=1``. Any other exception is a bug in bastion and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or _debug_from_env()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BastionError as err:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"bastion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
