"""Accuracy benchmark of the Fashion-MNIST recipes (issue: foundation).

Trains a recipe with ``bastion train`` (resumable), then on the first N test images:
clean accuracy, bastion PGD-K robust accuracy, and torchattacks' PGD at the same settings
(eps, step size, steps, random start) as an independent check. Writes a JSON summary.

    .venv/bin/python benchmarks/recipes.py configs/standard.yaml --out runs/bench-standard
    .venv/bin/python benchmarks/recipes.py configs/pgd-at.yaml --out runs/bench-pgd-at
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.config import load_config
from bastion.data import load_dataset
from bastion.runs import load_model, train_from_config


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def torchattacks_pgd(model, x, y, eps, alpha, steps, seed) -> float:
    import torchattacks

    torch.manual_seed(seed)
    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    correct = 0
    for i in range(0, len(x), 250):
        xb, yb = x[i : i + 250], y[i : i + 250]
        with torch.no_grad():
            clean_ok = model(xb).argmax(1) == yb
        adv = atk(xb, yb)
        with torch.no_grad():
            correct += int((clean_ok & (model(adv).argmax(1) == yb)).sum())
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.1)
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    t0 = time.perf_counter()
    history = train_from_config(cfg, args.out)
    train_seconds = sum(e["seconds"] for e in history.epochs)
    model = load_model(args.out)
    test = load_dataset(cfg.dataset, "test")
    x, y = test.images[: args.n], test.labels[: args.n]
    alpha = 2.5 * args.eps / args.steps
    spec = AttackSpec(name="pgd", threat=ThreatModel(eps=args.eps, steps=args.steps,
                                                     step_size=alpha))
    res = evaluate_attack(model, x, y, spec, seed=0)
    ta = torchattacks_pgd(model, x, y, args.eps, alpha, args.steps, seed=0)
    summary = {
        "config": args.config,
        "overrides": args.set,
        "epochs": len(history.epochs),
        "train_seconds_sum_of_epochs": round(train_seconds, 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
        "clean_acc": float(res.clean_correct.double().mean()),
        f"bastion_pgd{args.steps}_robust_acc": float(res.adv_correct().double().mean()),
        f"torchattacks_pgd{args.steps}_robust_acc": ta,
        "eps": args.eps,
        "step_size": alpha,
        "n": args.n,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out, "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
