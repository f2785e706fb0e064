"""Compare the empirical training methods on Fashion-MNIST at one budget (issue: empirical family).

Every method trains the same small-cnn with the same epochs, batch size, optimiser and
learning-rate schedule (its recipe in configs/, with the shared overrides below), then is
evaluated on the same first N test images: clean accuracy, PGD-20 and PGD-50 robust accuracy
at L-inf eps 0.1 (step 2.5 eps / steps, one random start, keep-best), the average minimal
L-inf perturbation found by FMN (over the first M test images, successful points only), and
wall time. Results are written per method (the run resumes: finished methods are skipped)
and as a Markdown table and a history plot.

    .venv/bin/python benchmarks/compare_methods.py --out runs/compare \
        --set epochs=4 --set train_subset=20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bastion.attacks.minimal import fmn
from bastion.attacks.spec import AttackSpec
from bastion.attacks.evaluate import evaluate_attack
from bastion.bench.plots import plot_history
from bastion.config import load_config
from bastion.data import load_dataset
from bastion.runs import load_model, train_from_config

METHODS = {
    "standard": "configs/standard.yaml",
    "pgd-at": "configs/pgd-at.yaml",
    "regenerate": "configs/regenerate.yaml",
    "fat": "configs/fat.yaml",
    "cat": "configs/cat.yaml",
    "trades-b6": "configs/trades.yaml",
    "trades-b1": "configs/trades-beta1.yaml",
    "cure": "configs/cure.yaml",
    "tla": "configs/tla.yaml",
    "consistency": "configs/consistency.yaml",
}
# Ablations, run only when named with --only: (recipe, extra overrides after the shared ones).
ABLATIONS = {
    # AT on the same two attacked crop-flip views without the JS term: isolates what the
    # consistency term adds from what the augmentation does.
    "consistency-lambda0": ("configs/consistency.yaml", ["method_options.lambda_=0.0"]),
}


def evaluate(run_dir: Path, n: int, m: int, eps: float) -> dict[str, float]:
    model = load_model(run_dir)
    test = load_dataset("fashion-mnist", "test")
    x, y = test.images[:n], test.labels[:n]
    out: dict[str, float] = {}
    for steps in (20, 50):
        spec = AttackSpec(eps=eps, steps=steps)
        r = evaluate_attack(model, x, y, spec, seed=0)
        out["clean_acc"] = float(r.clean_correct.double().mean())
        out[f"pgd{steps}_acc"] = float(r.adv_correct().double().mean())
    mr = fmn(model, x[:m], y[:m], norm="linf", steps=100)
    out["fmn_mean_linf"] = mr.mean_norm()
    out["fmn_success"] = float(mr.success.double().mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.1)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    histories = {}
    selected = {k: (v, []) for k, v in METHODS.items()}
    selected |= {k: v for k, v in ABLATIONS.items() if args.only and k in args.only}
    for name, (recipe, extra) in selected.items():
        if args.only and name not in args.only:
            continue
        res_path = out / f"{name}.json"
        run_dir = out / name
        if not res_path.exists():
            cfg = load_config(recipe, [*args.set, *extra])
            t0 = time.perf_counter()
            hist = train_from_config(cfg, run_dir)
            train_s = sum(e["seconds"] for e in hist.epochs)
            t1 = time.perf_counter()
            res = {"method": name, "recipe": recipe, "overrides": [*args.set, *extra],
                   "train_seconds": round(train_s, 1), **evaluate(run_dir, args.n, args.m,
                                                                    args.eps),
                   "eval_seconds": round(time.perf_counter() - t1, 1),
                   "wall_seconds": round(time.perf_counter() - t0, 1),
                   "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
            res_path.write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps(res), flush=True)
        histories[name] = [json.loads(line) for line in
                           (run_dir / "history.jsonl").read_text().splitlines()]
    rows = [json.loads((out / f"{k}.json").read_text()) for k in [*METHODS, *ABLATIONS]
            if (out / f"{k}.json").exists()]
    lines = ["| method | clean | PGD-20 | PGD-50 | mean min L-inf (FMN) | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['clean_acc']:.1f} | {100 * r['pgd20_acc']:.1f}"
                     f" | {100 * r['pgd50_acc']:.1f} | {r['fmn_mean_linf']:.4f} |"
                     f" {r['train_seconds']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot_history(histories, out / "history.png", metrics=("test_robust_acc",),
                 clean_metrics=("test_clean_acc",), title="per-epoch test accuracy")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
