"""MMCert on two-view Fashion-MNIST beside randomized ablation on the concatenated input (issue 20).

For each keep count k (pixels kept per view):

- **MMCert**: ``configs/mmcert-pairs.yaml`` with ``keep: [k, k]`` (one small-cnn encoder per
  view, late fusion), certified with MMCert's top-2 Bonferroni bounds
  (``certify.mmcert.MMCertCertifier``), budgets along ``joint`` (r pixels of each view),
  ``view1`` alone and ``view2`` alone;
- **randomized ablation** (Levine and Feizi 2020), the paper's baseline:
  ``configs/ablation-pairs-wide.yaml`` with ``keep: [2k]`` (the same number of pixels over the
  concatenated 28x56 image), certified with its own bound (``bound="complement"``). An attack
  of r pixels in each view is one of 2r pixels of the concatenation, so its certified joint
  budget is ``floor(t / 2)`` for a certified l0 radius t, and its one-view budget is t.

Training resumes from the run folders, certification from its rows. Writes the JSON of every
curve, timings (seconds per input, forward passes per input, the combinatorics' share of the
time) and a plot.

    .venv/bin/python benchmarks/mmcert_pairs.py --out benchmarks/out/mmcert_pairs.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from bastion.attacks.evaluate import predict
from bastion.certify.mmcert import direction_certificates
from bastion.certify.subsampling_bound import Subsampling, largest_budget
from bastion.config import load_config
from bastion.data import load_dataset
from bastion.metrics import certified_accuracy
from bastion.models.ablation import layout_of
from bastion.records import Certificate
from bastion.runs import (
    certify_mmcert_run,
    load_config_of,
    load_model,
    read_history,
    train_from_config,
)
from bastion.train.subsampling import FixedSubsamples, SubSampledTraining

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = list(range(0, 41))


def _train(recipe: str, keep: list[int], run_dir: Path) -> float:
    cfg = load_config(ROOT / "configs" / recipe, [f"method_options.keep={keep}"])
    t0 = time.perf_counter()
    train_from_config(cfg, run_dir)
    hist = read_history(run_dir)
    return float(sum(e.get("train_seconds", 0.0) for e in hist.epochs)) if hist else (
        time.perf_counter() - t0)


def _curve(cert: Certificate, budgets: list[int], scale: int = 1) -> list[float]:
    """Certified accuracy at each budget r when a budget r costs ``scale * r`` of radius."""
    radius = torch.floor(cert.radius / scale)
    c = Certificate(prediction=cert.prediction, radius=radius, abstained=cert.abstained,
                    norm="l0", method=cert.method, labels=cert.labels)
    return [float(a) for a in certified_accuracy(c, cert.labels, [float(b) for b in budgets])]


def _base_accuracy(run_dir: Path, keep: list[int], n: int) -> tuple[float, float]:
    """The base classifier's accuracy on the first n complete test inputs and on one fixed
    sub-sample of each (seed 0)."""
    cfg = load_config_of(run_dir)
    test = load_dataset(cfg.dataset, "test")
    model = load_model(run_dir)
    x, y = test.images[:n], test.labels[:n]
    sub = FixedSubsamples.of(test, SubSampledTraining(keep=tuple(keep)), layout_of(model), n)
    with torch.no_grad():
        complete = float((predict(model, x, 250) == y).double().mean())
        return complete, float((predict(model, sub.images, 250) == y).double().mean())


def _combinatorics_seconds(rows, sizes: tuple[int, ...], keep: tuple[int, ...],
                           directions: dict[str, tuple[int, ...]]) -> float:
    """Wall time of the budget search alone, replayed from the rows' bounds."""
    setup = Subsampling(sizes, keep)
    t0 = time.perf_counter()
    for r in rows:
        for w in directions.values():
            largest_budget(r.details["p_lower"], r.details["p_upper_b"], setup, w)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/out/mmcert_pairs.json")
    ap.add_argument("--runs", default="results/mmcert")
    ap.add_argument("--keep", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--n-inputs", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    runs = ROOT / args.runs
    result: dict = {"date": datetime.date.today().isoformat(), "cpu": platform.processor()
                    or platform.machine(), "threads": torch.get_num_threads(),
                    "n0": args.n0, "n": args.n, "alpha": args.alpha,
                    "n_inputs": args.n_inputs, "budgets": BUDGETS, "models": {}}
    with contextlib.suppress(OSError, StopIteration):
        result["cpu"] = next(line.split(":", 1)[1].strip() for line in
                             Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("model name"))
    for k in args.keep:
        for kind, recipe, keep, bound in [("mmcert", "mmcert-pairs.yaml", [k, k], "top2"),
                                          ("ablation", "ablation-pairs-wide.yaml", [2 * k],
                                           "complement")]:
            name = f"{kind}-k{k}"
            run_dir = runs / name
            train_s = _train(recipe, keep, run_dir)
            res = certify_mmcert_run(run_dir, n0=args.n0, n=args.n, alpha=args.alpha,
                                     bound=bound, n_inputs=args.n_inputs)
            rows = res.rows
            certs = direction_certificates(rows)
            seconds = float(sum(r.seconds for r in rows)) / len(rows)
            if kind == "mmcert":
                sizes, ks = (784, 784), (k, k)
                dirs = {"joint": (1, 1), "view1": (1, 0), "view2": (0, 1)}
                curves = {d: _curve(certs[d], BUDGETS) for d in dirs}
            else:
                sizes, ks, dirs = (1568,), (2 * k,), {"joint": (1,)}
                cert = certs["joint"]
                curves = {"joint": _curve(cert, BUDGETS, scale=2),
                          "view1": _curve(cert, BUDGETS), "view2": _curve(cert, BUDGETS)}
            comb = _combinatorics_seconds(rows, sizes, ks, dirs) / len(rows)
            complete, sub = _base_accuracy(run_dir, keep, args.n_inputs)
            result["models"][name] = {
                "kind": kind, "keep": keep, "bound": bound, "run_dir": str(run_dir),
                "train_seconds": train_s,
                "base_acc_complete_inputs": complete, "base_acc_one_subsample": sub,
                "smoothed_accuracy": curves["joint"][0],
                "abstain_rate": float(certs["joint"].abstained.double().mean()),
                "curves": curves, "seconds_per_input": seconds,
                "forward_passes_per_input": args.n0 + args.n,
                "combinatorics_seconds_per_input": comb,
            }
            print(name, f"acc {curves['joint'][0]:.3f}", "joint",
                  [round(a, 3) for a in curves["joint"][:8]], f"{seconds:.2f} s/input",
                  f"search {comb * 1e3:.2f} ms/input", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
    _plot(result, Path(args.out).with_suffix(".png"))


def _plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), dpi=120)
    panels = [("joint", "r pixels of each view"), ("view1", "r pixels of view 1 only")]
    colours = {}
    for i, (direction, xlabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, m in result["models"].items():
            k = name.split("-k")[1]
            colour = colours.setdefault(k, f"C{len(colours)}")
            style = "-" if m["kind"] == "mmcert" else "--"
            label = (f"MMCert k={k}+{k}" if m["kind"] == "mmcert"
                     else f"ablation on the concatenation, k={2 * int(k)}")
            ax.step(result["budgets"], m["curves"][direction], where="post", ls=style,
                    color=colour, label=label)
        ax.set_xlabel(f"attack budget: {xlabel}")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 16 if direction == "joint" else max(result["budgets"]))
        ax.grid(alpha=0.3)
        ax.set_title(f"two-view Fashion-MNIST, {result['n_inputs']} test pairs, "
                     f"n={result['n']}", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
