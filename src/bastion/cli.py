"""Command-line interface: ``bastion train | eval | certify | demo``.

Thin by design: each command parses its options, calls one library function from
``bastion.runs`` and shows progress and a short table. Everything it writes lives in the
run folder.
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

from tqdm import tqdm

from bastion._validate import check_int, check_run_dir
from bastion.attacks.spec import ATTACKS, AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.certify.config import CertificationWarning, CertifyConfig
from bastion.config import load_config
from bastion.data import load_dataset
from bastion.errors import BastionError, MissingFileError
from bastion.runs import eval_record_path, evaluate_run, load_config_of, train_from_config

DEFAULT_RUNS = Path("runs")
DEBUG_ENV = "BASTION_DEBUG"
"""Environment variable: ``1`` makes user errors show their traceback (as ``--debug``)."""


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


def _attack_from_args(args: argparse.Namespace) -> AttackSpec:
    threat = ThreatModel(eps=args.eps, norm=args.norm, steps=args.steps,
                         step_size=args.step_size)
    return AttackSpec(name=args.attack, threat=threat, restarts=args.restarts,
                      objective=args.objective)


def cmd_eval(args: argparse.Namespace) -> int:
    # every argument checked before the run is loaded (and nothing is written until the end)
    run = check_run_dir(args.run_dir)
    check_int(args.n, "--n", low=1)
    check_int(args.batch_size, "--batch-size", low=1)
    check_int(args.seed, "--seed", low=0)
    attack = _attack_from_args(args)
    bars: list[tqdm] = []

    def progress(done: int) -> None:
        if not bars:  # created once the run is loaded, so errors print cleanly
            bars.append(tqdm(total=args.n, desc=f"{attack.name} eps={attack.eps:g}",
                             unit="img", dynamic_ncols=True))
        bars[0].update(done)

    try:
        result = evaluate_run(run, attack, n=args.n, which=args.checkpoint,
                              batch_size=args.batch_size, seed=args.seed, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    clean = float(result.clean_correct.double().mean())
    robust = float(result.adv_correct().double().mean())
    seconds = sum(o.seconds for o in result.outcomes)
    path = eval_record_path(run, attack, args.n, args.checkpoint)
    print(_table([("points", str(args.n)), ("clean accuracy", _rate(clean)),
                  (f"robust accuracy ({attack.name}-{attack.steps}, {attack.norm} "
                   f"eps {attack.eps:g})", _rate(robust)),
                  ("seconds", f"{seconds:.1f}")]))
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
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:  # created once the run is loaded, so errors print cleanly
            bars.append(tqdm(total=total, initial=done, unit="img", dynamic_ncols=True,
                             desc=f"certify {config.noise} sigma={config.sigma:g}"))
        bars[0].n = done
        bars[0].refresh()

    try:
        res = certify_run(args.run_dir, config, out=args.out, progress=progress)
    finally:
        for bar in bars:
            bar.close()
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


DEMO_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "pgd-at.yaml"
# the recipe at a demo budget: 2 epochs, PGD-5 inner attack, PGD-5 per-epoch check
DEMO_OVERRIDES = ["epochs=2", "method_options.threat.steps=5", "eval.threat.steps=5",
                  "eval.n_test=500"]


def cmd_demo(args: argparse.Namespace) -> int:
    """PGD-AT small-cnn on Fashion-MNIST, then PGD-20 at eps 0.1 on 1000 test images."""
    out = Path(args.out)
    ns = argparse.Namespace(config=str(args.recipe), set=DEMO_OVERRIDES + args.set,
                            out=str(out), no_resume=False)
    cmd_train(ns)
    cfg = load_config_of(out)
    n_test = len(load_dataset(cfg.dataset, "test", cfg.data_dir))
    ev = argparse.Namespace(run_dir=str(out), attack="pgd", eps=cfg.eval.threat.eps,
                            norm=cfg.eval.threat.norm, steps=20, step_size=None, restarts=1,
                            objective="ce", n=min(1000, n_test), checkpoint="last",
                            batch_size=250, seed=0)
    return cmd_eval(ev)


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
    e.add_argument("--attack", default="pgd", choices=ATTACKS, help="attack to run")
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

    d = sub.add_parser("demo", help="PGD-AT on Fashion-MNIST, then PGD-20 evaluation",
                       formatter_class=fmt)
    d.add_argument("--out", default=str(DEFAULT_RUNS / "demo-pgd-at"), help="run folder")
    d.add_argument("--recipe", default=str(DEMO_RECIPE), help="recipe to train")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides")
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
