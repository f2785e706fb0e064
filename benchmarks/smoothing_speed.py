"""Speed of randomized-smoothing certification (issue: probabilistic certification).

Measures noisy forward passes per second, in one process on the same model and data:
  (a) the fastest plain-torch loop we can write: noise + forward + argmax + bincount under
      inference_mode, NCHW and channels-last, several batch sizes;
  (b) bastion's ``SmoothedClassifier.certify`` (layout and chunk size tuned by measurement);
  (c) ART's ``PyTorchRandomizedSmoothing.certify`` at the same n, best of several batch sizes;
  (d) bastion with bf16 autocast (where the CPU supports it) and how often the base
      classifier's prediction on a noisy input differs from fp32.
Rounds are interleaved and the best of each variant is kept, so load from other processes
affects all variants alike. Results go to stdout as JSON.

    .venv/bin/python benchmarks/smoothing_speed.py [--run runs/smoothing/gaussian-0.25]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bastion.certify.smoothing import SmoothedClassifier, bf16_supported
from bastion.data import load_dataset
from bastion.models import build
from bastion.noise import Gaussian
from bastion.runs import load_model


def bare_loop(model, x0, sigma, n, bs, channels_last, gen) -> float:
    """Noisy forward passes per second of a plain loop over one input."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    counts = torch.zeros(10, dtype=torch.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        done = 0
        while done < n:
            m = min(bs, n - done)
            noise = torch.randn((m, *x0.shape), generator=gen)
            batch = (noise.mul_(sigma).add_(x0)).contiguous(memory_format=fmt)
            counts += torch.bincount(model(batch).argmax(1), minlength=10)
            done += m
    dt = time.perf_counter() - t0
    model.to(memory_format=torch.contiguous_format)
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=None, help="trained run folder (default: untrained small-cnn)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--inputs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sigma", type=float, default=0.25)
    args = p.parse_args()
    torch.manual_seed(0)
    if args.run and Path(args.run).exists():
        model = load_model(args.run)
    else:
        model = build("small-cnn", dataset="fashion-mnist", zero_init_last=False).eval()
    test = load_dataset("fashion-mnist", "test")
    x = test.images[: args.inputs]
    gen = torch.Generator().manual_seed(0)
    res: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        res[key] = max(res.get(key, 0.0), value)

    smooth = SmoothedClassifier(model, Gaussian(sigma=args.sigma), 10)
    smooth.certify(x[:1], n0=10, n=100, alpha=0.001, generator=gen)  # tune once
    art = None
    try:
        from art.estimators.certification.randomized_smoothing import (
            PyTorchRandomizedSmoothing,
        )

        art = PyTorchRandomizedSmoothing(
            model, torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
            clip_values=(0.0, 1.0), device_type="cpu", sample_size=100, scale=args.sigma,
            alpha=0.001,
        )
    except ImportError:
        res["art_missing"] = 1.0
    bf16 = bf16_supported(torch.device("cpu"))
    for _ in range(args.rounds):
        for cl in (False, True):
            for bs in (100, 250, 500, 1000):
                keep(f"a_bare_{'cl' if cl else 'nchw'}_bs{bs}",
                     bare_loop(model, x[0], args.sigma, args.n, bs, cl, gen))
        t0 = time.perf_counter()
        smooth.certify(x, n0=100, n=args.n, alpha=0.001, generator=gen)
        keep("b_bastion", len(x) * (args.n + 100) / (time.perf_counter() - t0))
        if bf16:
            t0 = time.perf_counter()
            smooth.certify(x, n0=100, n=args.n, alpha=0.001, generator=gen, precision="bf16")
            keep("d_bastion_bf16", len(x) * (args.n + 100) / (time.perf_counter() - t0))
        if art is not None:
            xa = x[:1].numpy()
            for bs in (100, 500, 1000):
                t0 = time.perf_counter()
                art.certify(xa, n=args.n, batch_size=bs)
                keep(f"c_art_bs{bs}", (args.n + 100) / (time.perf_counter() - t0))
    best_a = max(v for k, v in res.items() if k.startswith("a_"))
    best_c = max((v for k, v in res.items() if k.startswith("c_")), default=float("nan"))
    res["b_over_best_a"] = res["b_bastion"] / best_a
    res["b_over_best_c"] = res["b_bastion"] / best_c
    if bf16:
        with torch.inference_mode():
            noisy = (x[0] + args.sigma * torch.randn((20_000, *x[0].shape), generator=gen))
            fp32 = torch.cat([model(noisy[i : i + 1000]).argmax(1) for i in range(0, 20_000, 1000)])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lo = torch.cat([model(noisy[i : i + 1000]).argmax(1)
                                for i in range(0, 20_000, 1000)])
        res["bf16_prediction_disagreement"] = float((fp32 != lo).double().mean())
    res["bf16_supported"] = float(bf16)
    res["threads"] = float(torch.get_num_threads())
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()},
                     indent=2))
    np.random.seed(0)


if __name__ == "__main__":
    main()
