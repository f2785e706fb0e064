"""Cost of each pre-processing defense per image, and of one EOT-PGD / BPDA-PGD evaluation.

For every defense of ``bastion.preprocess.registry`` (the guided denoiser untrained: its
cost does not depend on its weights) on the first ``--n`` Fashion-MNIST test images in one
batch: milliseconds per image of the defense's forward pass alone, and of the defended
small-cnn's forward (and forward + backward, through BPDA where the defense is not
differentiable). Then the attack each declaration calls for, PGD-20 at L-inf 0.1 (EOT with
``--eot-samples`` draws per step for randomized defenses), per point, and its number of
passes per point (steps x draws). The classifier is the quick suite's standard model if it
exists (``runs/bench/quick/standard``), else an untrained small-cnn (the costs are the same).

    .venv/bin/python benchmarks/preprocess_cost.py --n 200 --out benchmarks/out/preprocess_cost.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from recipes import cpu_model  # benchmarks/recipes.py (this folder is on sys.path)

from bastion.attacks.eot import BPDA, adaptive_attack_for
from bastion.attacks.spec import AttackSpec
from bastion.data import load_dataset
from bastion.models import build
from bastion.preprocess import Defended
from bastion.preprocess.registry import PREPROCESSORS, build_preprocessor

OPTIONS = {"tv": {"keep_prob": 0.5, "lam": 0.03}, "bit-depth": {"bits": 3}}
"""The settings of benchmarks/suites/preprocess.yaml (the others at their defaults)."""


def _best(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eot-samples", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/preprocess_cost.json")
    args = p.parse_args()
    test = load_dataset("fashion-mnist", "test")
    x, y = test.images[: args.n], test.labels[: args.n]
    run = Path("runs/bench/quick/standard")
    if (run / "model.json").is_file():
        from bastion.runs import load_model

        clf = load_model(run)
    else:
        clf = build("small-cnn", num_classes=10, in_channels=1, input_size=28,
                    dataset="fashion-mnist").eval()
    rows = []
    base = _best(lambda: clf(x), args.repeats) / args.n
    for name in PREPROCESSORS:
        pre = build_preprocessor(name, OPTIONS.get(name), in_channels=1).eval()
        model = Defended(pre, clf).eval()
        grad_model = model if pre.differentiable else BPDA(model)
        with torch.no_grad():
            t_pre = _best(lambda pre=pre: pre(x), args.repeats) / args.n
            t_fwd = _best(lambda m=model: m(x), args.repeats) / args.n

        def fwd_bwd(m=grad_model) -> None:
            xx = x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(m(xx), y).backward()

        t_fb = _best(fwd_bwd, args.repeats) / args.n
        attack = adaptive_attack_for(model, "pgd")
        spec = AttackSpec(name=attack, threat={"eps": 0.1, "steps": 20},
                          eot_samples=args.eot_samples if attack == "eot-pgd" else None)
        t0 = time.perf_counter()
        spec.run(model, x, y, generator=torch.Generator().manual_seed(0))
        t_attack = (time.perf_counter() - t0) / args.n
        passes = 20 * (args.eot_samples if attack == "eot-pgd" else 1)
        rows.append({"defense": name, "options": OPTIONS.get(name, {}),
                     **pre.declaration(), "ms_per_image_defense": 1e3 * t_pre,
                     "ms_per_image_forward": 1e3 * t_fwd,
                     "ms_per_image_forward_backward": 1e3 * t_fb, "attack": attack,
                     "attack_passes_per_point": passes, "ms_per_point_attack": 1e3 * t_attack})
    out = {"n": args.n, "threads": torch.get_num_threads(), "cpu": cpu_model() or "unknown",
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "torch": torch.__version__, "classifier_ms_per_image_forward": 1e3 * base,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"classifier alone: {1e3 * base:.3f} ms/image forward ({args.n} images, "
          f"{torch.get_num_threads()} threads, {out['cpu']})")
    print(f"{'defense':<11}{'defense ms':>11}{'fwd ms':>9}{'fwd+bwd ms':>12}  "
          f"{'attack':<9}{'passes':>7}{'ms/point':>10}")
    for r in rows:
        print(f"{r['defense']:<11}{r['ms_per_image_defense']:>11.3f}"
              f"{r['ms_per_image_forward']:>9.3f}{r['ms_per_image_forward_backward']:>12.3f}  "
              f"{r['attack']:<9}{r['attack_passes_per_point']:>7}"
              f"{r['ms_per_point_attack']:>10.2f}")


if __name__ == "__main__":
    main()
