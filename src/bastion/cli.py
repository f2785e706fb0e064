"""Command-line interface: ``bastion train | eval | demo``.

Thin by design: each command parses its options, calls one library function from
``bastion.runs`` and shows progress and a short table. Everything it writes lives in the
run folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bastion.attacks.spec import ATTACKS, AttackSpec
from bastion.config import load_config
from bastion.runs import evaluate_run, load_config_of, train_from_config

DEFAULT_RUNS = Path("runs")


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
        history = train_from_config(cfg, out, resume=not args.no_resume, on_batch=on_batch,
                                    on_epoch=on_epoch)
    finally:
        close()
    last = history.epochs[-1] if history.epochs else {}
    print(f"done in {time.perf_counter() - t0:.0f}s; run folder: {out}")
    if last:
        print(_table([("clean accuracy", last.get("test_clean_acc")),
                      ("robust accuracy (per-epoch attack)", last.get("test_robust_acc"))]))
    return 0


def _attack_from_args(args: argparse.Namespace) -> AttackSpec:
    return AttackSpec(name=args.attack, eps=args.eps, norm=args.norm, steps=args.steps,
                      step_size=args.step_size, restarts=args.restarts, objective=args.objective)


def cmd_eval(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    attack = _attack_from_args(args)
    bar = tqdm(total=args.n, desc=f"{attack.name} eps={attack.eps:g}", unit="img",
               dynamic_ncols=True)
    try:
        result, path = evaluate_run(run, attack, n=args.n, which=args.checkpoint,
                                    batch_size=args.batch_size, seed=args.seed,
                                    progress=bar.update)
    finally:
        bar.close()
    clean = float(result.clean_correct.double().mean())
    robust = float(result.adv_correct.double().mean())
    print(_table([("points", args.n), ("clean accuracy", clean),
                  (f"robust accuracy ({attack.name}-{attack.steps}, {attack.norm} "
                   f"eps {attack.eps:g})", robust),
                  ("seconds", round(result.seconds, 1))]))
    print(f"record: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """PGD-AT small-cnn on Fashion-MNIST, then PGD-20 at eps 0.1 on 1000 test images."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "pgd-at.yaml"
    out = Path(args.out)
    overrides = ["epochs=3", "method_options.steps=5", "eval.steps=5", "eval.n_test=500"]
    ns = argparse.Namespace(config=str(recipe), set=overrides, out=str(out),
                            no_resume=False)
    cmd_train(ns)
    cfg = load_config_of(out)
    ev = argparse.Namespace(run_dir=str(out), attack="pgd", eps=cfg.method_options.get("eps", 0.1),
                            norm="linf", steps=20, step_size=None, restarts=1, objective="ce",
                            n=1000, checkpoint="last", batch_size=250, seed=0)
    return cmd_eval(ev)


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = []
    for k, v in rows:
        if isinstance(v, float) and 0 <= v <= 1:
            v = f"{100 * v:.2f}%"
        lines.append(f"  {k.ljust(width)}  {v}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bastion", description="Train, attack and certify robust image classifiers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a model from a YAML recipe", formatter_class=fmt)
    t.add_argument("config", help="YAML recipe, e.g. configs/pgd-at.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted), e.g. --set optim.lr=0.05")
    t.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    t.add_argument("--no-resume", action="store_true",
                   help="start over even if the run folder has a checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="attack a trained run on its test set", formatter_class=fmt)
    e.add_argument("run_dir", help="run folder written by 'bastion train'")
    e.add_argument("--attack", default="pgd", choices=ATTACKS, help="attack to run")
    e.add_argument("--eps", type=float, default=0.1, help="radius in [0, 1] pixel units")
    e.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat-model norm")
    e.add_argument("--steps", type=int, default=20, help="PGD steps")
    e.add_argument("--step-size", type=float, default=None, help="default 2.5*eps/steps")
    e.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    e.add_argument("--objective", default="ce", choices=("ce", "margin", "dlr"),
                   help="loss the attack maximises")
    e.add_argument("--n", type=int, default=1000, help="first n test images")
    e.add_argument("--checkpoint", default="last", choices=("last", "best"),
                   help="end-of-training or best-robust checkpoint")
    e.add_argument("--batch-size", type=int, default=250, help="images per attack batch")
    e.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="PGD-AT on Fashion-MNIST, then PGD-20 evaluation",
                       formatter_class=fmt)
    d.add_argument("--out", default=str(DEFAULT_RUNS / "demo-pgd-at"))
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"bastion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
