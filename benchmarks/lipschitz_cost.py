"""Costs of deterministic certification (issue 19), measured in one run.

1. Training step: one optimisation step (forward, loss, backward, Adam) on a batch of
   Fashion-MNIST images for each constrained network of the recipes against the same
   network unconstrained with cross-entropy: GloRo (persistent power iterates, one step per
   layer per batch), GloRo with learnable splines, hinge-KR with spectral normalisation
   (persistent vectors) and with Björck (15 iterations per forward). Goal: at most 1.5x.
2. Certification throughput: images per second of the Lipschitz-margin certificate of a
   trained (or, without a run folder, freshly built) GloRo network, the bound included
   (computed once per model, timed apart), against randomized smoothing's CERTIFY with
   n = 10,000 draws (n0 = 100) on the small-cnn, on the same images and hardware.

    .venv/bin/python benchmarks/lipschitz_cost.py --out benchmarks/out/lipschitz_cost.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from recipes import cpu_model  # benchmarks/recipes.py (this folder is on sys.path)

from bastion.certify.lipschitz import LipschitzCertifier
from bastion.certify.registry import smoothing_certifier
from bastion.data import load_dataset
from bastion.models import build
from bastion.noise import Gaussian
from bastion.records import StepContext
from bastion.train import GloRo, HingeKR, Standard

NET = {"channels": (32, 64), "hidden": (256,)}
CASES = [
    ("unconstrained + CE (reference)", {**NET, "constraint": "none"}, Standard()),
    ("GloRo (MaxMin)", {**NET, "constraint": "none"}, GloRo(eps=0.5)),
    ("GloRo (LLS)", {**NET, "constraint": "none", "activation": "lls"}, GloRo(eps=0.5)),
    ("hinge-KR, spectral norm", {**NET, "constraint": "spectral", "activation": "groupsort",
                                 "lipschitz": 0.353}, HingeKR()),
    ("hinge-KR, Björck", {**NET, "constraint": "bjorck", "activation": "groupsort"},
     HingeKR()),
]


def _step_ms(opts, method, x, y, repeats: int) -> float:
    torch.manual_seed(0)
    model = build("lipschitz-cnn", dataset="fashion-mnist", **opts).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    state = method.init_state(len(x), "cpu") if hasattr(method, "init_state") else None
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        out = method(model, x, y, StepContext(state=state, generator=torch.Generator()))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--n-certify", type=int, default=500)
    p.add_argument("--n-smoothing", type=int, default=10)
    p.add_argument("--gloro-run", default="runs/bench/lipschitz/gloro")
    p.add_argument("--smoothing-run", default="results/full/gaussian-0.25")
    p.add_argument("--out", default="benchmarks/out/lipschitz_cost.json")
    args = p.parse_args()
    test = load_dataset("fashion-mnist", "test")
    train = load_dataset("fashion-mnist", "train")
    xb, yb = train.images[: args.batch], train.labels[: args.batch]
    steps = {}
    for name, opts, method in CASES:
        steps[name] = _step_ms(opts, method, xb, yb, args.repeats)
        print(f"step {name}: {steps[name]:.1f} ms", flush=True)
    ref = steps[CASES[0][0]]

    from bastion.runs import load_model

    run = Path(args.gloro_run)
    model = load_model(run) if (run / "model.json").is_file() else build(
        "lipschitz-cnn", dataset="fashion-mnist", **NET).eval()
    x = test.images[: args.n_certify]
    t0 = time.perf_counter()
    cert = LipschitzCertifier(model=model, num_classes=10)
    cert.certify(x[:1])  # the bound, computed once per model
    bound_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cert.certify(x)
    lip_s = time.perf_counter() - t0
    srun = Path(args.smoothing_run)
    base = load_model(srun) if (srun / "model.json").is_file() else build(
        "small-cnn", dataset="fashion-mnist").eval()
    smooth = smoothing_certifier(base, Gaussian(sigma=0.25), num_classes=10, n0=100,
                                 n=10_000, alpha=0.001)
    xs = test.images[: args.n_smoothing]
    gens = [torch.Generator().manual_seed(i) for i in range(len(xs))]
    smooth.certify(xs[:1], gens[:1])  # warm-up (and the batch-size tuning)
    t0 = time.perf_counter()
    smooth.certify(xs, gens)
    smooth_s = time.perf_counter() - t0
    out = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "batch": args.batch,
        "train_step_ms": steps,
        "train_step_ratio": {k: v / ref for k, v in steps.items()},
        "lipschitz": {"model": str(run) if (run / "model.json").is_file() else "untrained",
                      "bound_seconds": bound_s, "images": len(x),
                      "images_per_second": len(x) / lip_s},
        "smoothing": {"model": str(srun) if (srun / "model.json").is_file() else "untrained",
                      "n": 10_000, "n0": 100, "images": len(xs),
                      "images_per_second": len(xs) / smooth_s},
    }
    out["speedup"] = out["lipschitz"]["images_per_second"] / out["smoothing"]["images_per_second"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
