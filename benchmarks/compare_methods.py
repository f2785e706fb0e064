"""Compare the empirical training methods on Fashion-MNIST at one budget (issue: empirical family).

Every method trains the same small-cnn with the same epochs, batch size, optimiser and
learning-rate schedule (its recipe in configs/, with the shared overrides below), then is
evaluated on the same first N test images: clean accuracy, PGD-20 and PGD-50 robust accuracy
at L-inf eps 0.1 (step 2.5 eps / steps, one random start, keep-best), the minimal L-inf
perturbation found by FMN (100 steps, on the first M test images) and wall time.

FMN's per-example record (``attacks.evaluate.evaluate_minimal``, an ``EvalResult``) is saved
as ``<method>.fmn.json`` next to ``<method>.json``, and summarised by both named
definitions of ``docs/metrics.md``:

* "avg pert. eq.(3)": ``metrics.average_perturbation``, the seed's eq. (3), the sum of the
  found norms over all M points (unbroken and clean-misclassified points count 0) / M;
* "avg pert. of successes": ``metrics.average_perturbation_of_successes``, the same sum /
  the number of points FMN flipped (clean-correct, misclassified after the attack).

Results are written per method (the run resumes: finished methods are skipped; a finished
method without its FMN record gets one from its saved model, without retraining) and as a
Markdown table and a history plot.

    .venv/bin/python benchmarks/compare_methods.py --out runs/compare \
        --set epochs=4 --set train_subset=20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bastion.attacks.evaluate import evaluate_attack, evaluate_minimal
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.bench.plots import plot_history
from bastion.config import load_config
from bastion.data import load_dataset
from bastion.metrics import (
    attack_success_rate,
    average_perturbation,
    average_perturbation_of_successes,
)
from bastion.records import EvalResult, load_record, save_record
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


FMN_KEYS = ("fmn_avg_pert_eq3", "fmn_avg_pert_of_successes", "fmn_success")


def fmn_record_path(out: Path, name: str) -> Path:
    """Where the per-example FMN ``EvalResult`` of method ``name`` is saved."""
    return out / f"{name}.fmn.json"


def fmn_summary(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                record_path: Path) -> dict[str, float]:
    """Run FMN (L-inf, 100 steps) on ``x``, save its record, return both named averages."""
    r = evaluate_minimal(model, x, y, attack="fmn", norm="linf", steps=100)
    save_record(record_path, r)
    return fmn_columns(r)


def fmn_columns(r: EvalResult) -> dict[str, float]:
    """The table's FMN values from the per-example record (docs/metrics.md)."""
    return {
        "fmn_avg_pert_eq3": average_perturbation(r, attack="fmn"),
        "fmn_avg_pert_of_successes": average_perturbation_of_successes(r, attack="fmn"),
        # fraction of all M points misclassified after FMN (clean-misclassified included)
        "fmn_success": attack_success_rate(r, attack="fmn"),
        "fmn_n": len(r),
    }


def evaluate(run_dir: Path, n: int, m: int, eps: float, record_path: Path) -> dict[str, float]:
    model = load_model(run_dir)
    test = load_dataset("fashion-mnist", "test")
    x, y = test.images[:n], test.labels[:n]
    out: dict[str, float] = {}
    for steps in (20, 50):
        spec = AttackSpec(threat=ThreatModel(eps=eps, steps=steps))
        r = evaluate_attack(model, x, y, spec, seed=0)
        out["clean_acc"] = float(r.clean_correct.double().mean())
        out[f"pgd{steps}_acc"] = float(r.adv_correct().double().mean())
    out.update(fmn_summary(model, x[:m], y[:m], record_path))
    return out


def backfill_fmn(res: dict, run_dir: Path, m: int, record_path: Path) -> bool:
    """Add the FMN columns to a result written before per-example records; True if changed.

    Reads the record if it exists, else runs FMN on the saved model (no retraining); leaves
    the result as it is when neither exists.
    """
    if all(k in res for k in FMN_KEYS):
        return False
    if record_path.exists():
        res.update(fmn_columns(load_record(EvalResult, record_path)))
    elif run_dir.exists():
        test = load_dataset("fashion-mnist", "test")
        res.update(fmn_summary(load_model(run_dir), test.images[:m], test.labels[:m],
                               record_path))
    else:
        return False
    return True


def _num(row: dict, key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "n/a"


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
        record_path = fmn_record_path(out, name)
        if res_path.exists():
            res = json.loads(res_path.read_text())
            if backfill_fmn(res, run_dir, args.m, record_path):
                res_path.write_text(json.dumps(res, indent=2) + "\n")
        else:
            cfg = load_config(recipe, [*args.set, *extra])
            t0 = time.perf_counter()
            hist = train_from_config(cfg, run_dir)
            train_s = sum(e["seconds"] for e in hist.epochs)
            t1 = time.perf_counter()
            res = {"method": name, "recipe": recipe, "overrides": [*args.set, *extra],
                   "train_seconds": round(train_s, 1),
                   **evaluate(run_dir, args.n, args.m, args.eps, record_path),
                   "eval_seconds": round(time.perf_counter() - t1, 1),
                   "wall_seconds": round(time.perf_counter() - t0, 1),
                   "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
            res_path.write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps(res), flush=True)
        histories[name] = [json.loads(line) for line in
                           (run_dir / "history.jsonl").read_text().splitlines()]
    rows = [json.loads((out / f"{k}.json").read_text()) for k in [*METHODS, *ABLATIONS]
            if (out / f"{k}.json").exists()]
    # both FMN columns: minimal L-inf perturbation, docs/metrics.md (n/a: no FMN record yet)
    lines = ["| method | clean | PGD-20 | PGD-50 | avg pert. eq.(3) | avg pert. of successes |"
             " train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['clean_acc']:.1f} | {100 * r['pgd20_acc']:.1f}"
                     f" | {100 * r['pgd50_acc']:.1f} | {_num(r, 'fmn_avg_pert_eq3')} |"
                     f" {_num(r, 'fmn_avg_pert_of_successes')} | {r['train_seconds']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot_history(histories, out / "history.png", metrics=("test_robust_acc",),
                 clean_metrics=("test_clean_acc",), title="per-epoch test accuracy")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
