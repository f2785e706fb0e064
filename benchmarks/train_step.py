"""One PGD-AT training step: bastion's ``fit`` against a bare plain-torch loop, and how fast
adversarial training gets with channels-last and bf16 autocast (issue: training speed).

The step (as ``configs/pgd-at.yaml``, whose values are read from the recipe): the small-cnn
on one fixed batch of 128 Fashion-MNIST training images; PGD-7 L-inf, eps 0.1, step 0.025,
from a uniform random start in the ball, the model in eval mode while attacking; then one
training forward of ``[x_adv; x]`` with loss ``0.7 CE(x_adv) + 0.3 CE(x)`` (``clean_weight``
0.3), backward and an SGD step (lr 0.05, momentum 0.9, weight decay 5e-4).

Variants, in one process, on the same batch and the same initial weights (each variant
trains its own copy):

  a  bare: the loop written below in plain torch -- its own PGD-7 with
     ``torch.autograd.grad``, ``sign``, projection and clamp, then forward / backward /
     ``SGD.step`` -- NCHW, fp32. The reference: what the step costs without a library.
  b  ``fit`` NCHW fp32 (``channels_last=False, precision="fp32"``)
  c  ``fit`` channels-last fp32
  d  ``fit`` channels-last bf16 autocast
  e  ``fit`` NCHW bf16 autocast
  (d and e run where torch has bf16 autocast on the device; ``bf16_native`` in the
  header line says whether the CPU has bf16 instructions, without which it is emulated.)

How ``fit`` is timed: one repetition is one call ``fit(model, PGDAT(...), data, opt,
epochs=1, batch_size=128)`` on a dataset made of the fixed batch repeated ``--steps``
times, so one call is ``--steps`` training steps; no evaluation, no run folder, no
scheduler. The per-step time is the interval between consecutive ``on_batch`` callbacks,
i.e. one whole step of the loop as it runs in training: index gather and device transfer
of the batch, the ``StepContext``, the method (bastion's PGD engine, including its
final no-grad forward that judges success), the finite-loss check, ``zero_grad`` /
``backward`` / ``step`` and the log accumulation. The first step of each call (which also
holds fit's per-call setup) is not an interval; that setup -- generator, shuffling,
converting the model to channels-last and back -- is reported separately as the whole
call divided by its steps (``per_call_ms``). fit's batches are random draws, with
repeats, from the copies of the 128 images: the same shapes and the same work as the
fixed batch. The bare loop's per-step time is measured around each of its steps. On an
accelerator every step ends with a synchronisation, in both.

Repetitions are interleaved (a b c d e a b c d e ...) after one warm-up repetition of
each, so load from other processes affects all variants alike; medians (and quartiles)
over all steps are reported, with the ratio to (a) (``ratio_to_a`` = time / time of a;
``speedup_vs_a`` = its inverse) and the passes through the model per training example
per step (forward and backward, counted with hooks in one extra untimed step).

``--accuracy`` trains ``configs/pgd-at.yaml`` at the demo budget (``DEMO_OVERRIDES`` below,
the pgd-at defense of ``benchmarks/suites/quick.yaml``, i.e. ``bastion demo``: 2 epochs,
PGD-5 inner attack, PGD-5 per-epoch check on 500 test images) as fp32-NCHW,
fp32-channels-last and bf16-channels-last (``--seeds`` to repeat over seeds), then
evaluates each in fp32 with PGD-20, L-inf 0.1 (step 2.5 eps / steps, one random start) on
the first 1000 test images; it prints clean and robust accuracy, training seconds (the sum
of the epochs' ``train_seconds`` in the run's history, so a resumed run counts its earlier
epochs too) and the differences to fp32-NCHW.
Run folders go to ``--out`` (resumed when rerun with the same settings; ``--fresh``
starts over).

Output: JSON lines (a header line, then one per variant) and a Markdown table on stdout.
``--quick`` is a smoke run of either mode (few repetitions, a small batch / subset).

    .venv/bin/python benchmarks/train_step.py                 # timing, ~minutes
    .venv/bin/python benchmarks/train_step.py --accuracy      # three demo trainings
    .venv/bin/python benchmarks/train_step.py --quick         # smoke runs
    .venv/bin/python benchmarks/train_step.py --accuracy --quick
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.certify.forward import bf16_supported
from bastion.config import TrainConfig, load_config
from bastion.data import load_dataset
from bastion.models import build
from bastion.runs import evaluate_run, resolve_device, train_from_config
from bastion.train import fit
from bastion.train.loop import check_precision
from bastion.train.registry import build_method

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "pgd-at.yaml"
# The demo budget of PGD-AT: the pgd-at defense of benchmarks/suites/quick.yaml (bastion demo),
# formerly bastion.cli.DEMO_OVERRIDES.
DEMO_OVERRIDES = ["epochs=2", "method_options.threat.steps=5", "eval.threat.steps=5",
                  "eval.n_test=500"]
VARIANTS: dict[str, dict[str, Any]] = {
    "a": {"name": "bare NCHW fp32", "kind": "bare", "channels_last": False, "precision": "fp32"},
    "b": {"name": "fit NCHW fp32", "kind": "fit", "channels_last": False, "precision": "fp32"},
    "c": {"name": "fit channels-last fp32", "kind": "fit", "channels_last": True,
          "precision": "fp32"},
    "d": {"name": "fit channels-last bf16", "kind": "fit", "channels_last": True,
          "precision": "bf16"},
    "e": {"name": "fit NCHW bf16", "kind": "fit", "channels_last": False, "precision": "bf16"},
}
ACCURACY_VARIANTS: dict[str, dict[str, Any]] = {
    "fp32-nchw": {"channels_last": False, "precision": "fp32"},
    "fp32-channels-last": {"channels_last": True, "precision": "fp32"},
    "bf16-channels-last": {"channels_last": True, "precision": "bf16"},
}


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


# ------------------------------------------------------------------------- the bare loop


@dataclass
class BareStep:
    """PGD-AT written in plain torch: the reference a library step is compared with."""

    model: nn.Module
    opt: torch.optim.Optimizer
    eps: float
    steps: int
    step_size: float
    clean_weight: float
    generator: torch.Generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model = self.model
        model.eval()  # the attack runs in eval mode (threat.train_mode false)
        start = (torch.rand(x.shape, generator=self.generator, device=x.device) * 2 - 1)
        x_adv = (x + self.eps * start).clamp(0.0, 1.0)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
        model.train()
        w = self.clean_weight
        if w > 0:
            logits = model(torch.cat([x_adv, x]))
            loss = ((1 - w) * F.cross_entropy(logits[: len(x)], y)
                    + w * F.cross_entropy(logits[len(x):], y))
        else:
            loss = F.cross_entropy(model(x_adv), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


# ------------------------------------------------------------------------------- timing


@dataclass
class Variant:
    """One timed variant: its settings, model, optimizer and the samples so far."""

    key: str
    spec: dict[str, Any]
    model: nn.Module
    opt: torch.optim.Optimizer
    step_ms: list[float] = field(default_factory=list)
    call_ms_per_step: list[float] = field(default_factory=list)
    passes: dict[str, float] = field(default_factory=dict)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's SGD over ``model``'s parameters."""
    o = cfg.optim
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                           weight_decay=o.weight_decay, nesterov=o.nesterov)


def _run_bare(v: Variant, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, steps: int,
              device: torch.device, gen: torch.Generator) -> tuple[list[float], float]:
    """``steps`` bare steps; per-step milliseconds and the whole run's ms per step."""
    t = ThreatModel(**cfg.method_options["threat"])
    if t.norm != "linf" or t.step_size is None or not t.random_init or t.train_mode:
        raise SystemExit("the bare loop is L-inf PGD with an explicit step_size, a random start "
                         f"and the model in eval mode; the recipe's threat is {t}")
    step = BareStep(v.model, v.opt, t.eps, t.steps, t.step_size,
                    float(cfg.method_options.get("clean_weight", 0.0)), gen)
    xs = x.to(device)
    ys = y.to(device)
    times = []
    _sync(device)
    t_call = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step(xs, ys)
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return times, 1e3 * (time.perf_counter() - t_call) / steps


def _run_fit(v: Variant, cfg: TrainConfig, data: Any, batch: int,
             device: torch.device, seed: int) -> tuple[list[float], float]:
    """One ``fit`` epoch over ``data`` (len(data) // batch steps): the intervals between
    consecutive steps in ms, and the whole call's ms per step."""
    method = build_method(cfg.method, **cfg.method_options)
    stamps: list[float] = []

    def on_batch(epoch: int, step: int, steps_per_epoch: int) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    t_call = time.perf_counter()
    fit(v.model, method, data, v.opt, epochs=1, batch_size=batch, seed=seed,
        channels_last=v.spec["channels_last"], precision=v.spec["precision"],
        on_batch=on_batch)
    _sync(device)
    total = time.perf_counter() - t_call
    steps = len(data) // batch
    return [1e3 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)], 1e3 * total / steps


@contextmanager
def _count_passes(model: nn.Module, out: dict[str, float], batch: int) -> Iterator[None]:
    """Count examples through ``model``'s forward and backward (per ``batch`` examples)."""
    seen = {"forward": 0, "backward": 0}

    def fwd(m: nn.Module, args: tuple[Any, ...]) -> None:
        seen["forward"] += int(args[0].shape[0])

    def bwd(m: nn.Module, grad_out: tuple[torch.Tensor, ...]) -> None:
        seen["backward"] += int(grad_out[0].shape[0])

    handles = [model.register_forward_pre_hook(fwd), model.register_full_backward_pre_hook(bwd)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    out.update({k: v / batch for k, v in seen.items()})


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``xs``."""
    if len(xs) < 2:
        return (xs[0], xs[0], xs[0]) if xs else (float("nan"),) * 3
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def timing(args: argparse.Namespace) -> None:
    """Interleaved per-step timing of variants a-e; JSON lines and a Markdown table."""
    cfg = load_config(RECIPE)
    device = resolve_device(args.device)
    batch = args.batch_size
    train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    x, y = train.images[:batch].clone(), train.labels[:batch].clone()
    repeated = dataclasses.replace(train, images=x.repeat(args.steps, 1, 1, 1),
                                   labels=y.repeat(args.steps))
    one = dataclasses.replace(train, images=x, labels=y)
    torch.manual_seed(cfg.seed)
    base = build(cfg.model, num_classes=train.num_classes, in_channels=train.shape[0],
                 input_size=train.shape[1], dataset=cfg.dataset, **cfg.model_options).to(device)
    header: dict[str, Any] = {
        "mode": "timing", "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": batch, "steps_per_rep": args.steps,
        "reps": args.reps, "bf16_native": bf16_supported(device),
        "method": cfg.method, "method_options": cfg.method_options, "optim": vars(cfg.optim),
        "skipped": {},
    }
    variants: list[Variant] = []
    for key, spec in VARIANTS.items():
        if args.only and key not in args.only:
            continue
        if spec["precision"] == "bf16":
            try:
                check_precision("bf16", device)
            except ValueError as err:
                header["skipped"][key] = str(err)
                continue
        model = copy.deepcopy(base)
        variants.append(Variant(key, spec, model, _optimizer(model, cfg)))
    gen = torch.Generator(device=device).manual_seed(0)

    def run(v: Variant) -> tuple[list[float], float]:
        if v.spec["kind"] == "bare":
            return _run_bare(v, cfg, x, y, args.steps, device, gen)
        return _run_fit(v, cfg, repeated, batch, device, cfg.seed)

    for v in variants:  # warm-up, and one counted step (untimed)
        run(v)
        with _count_passes(v.model, v.passes, batch):
            if v.spec["kind"] == "bare":
                _run_bare(v, cfg, x, y, 1, device, gen)
            else:
                _run_fit(v, cfg, one, batch, device, cfg.seed)
    for _ in range(args.reps):
        for v in variants:
            steps, per_call = run(v)
            v.step_ms += steps
            v.call_ms_per_step.append(per_call)

    print(json.dumps(header, default=str))
    ref = next((statistics.median(v.step_ms) for v in variants if v.key == "a"), None)
    rows = []
    for v in variants:
        q1, med, q3 = _quantiles(v.step_ms)
        call = statistics.median(v.call_ms_per_step)
        row = {
            "variant": v.key, "name": v.spec["name"], "channels_last": v.spec["channels_last"],
            "precision": v.spec["precision"], "median_ms": round(med, 3),
            "q1_ms": round(q1, 3), "q3_ms": round(q3, 3), "samples": len(v.step_ms),
            "per_call_ms": round(call, 3),
            "ratio_to_a": None if ref is None else round(med / ref, 4),
            "speedup_vs_a": None if ref is None else round(ref / med, 4),
            "forward_per_example": v.passes.get("forward"),
            "backward_per_example": v.passes.get("backward"),
        }
        rows.append(row)
        print(json.dumps(row))
    print()
    print(f"PGD-AT step, batch {batch}, {device}, {torch.get_num_threads()} threads, "
          f"bf16 native: {header['bf16_native']}")
    print()
    print("| variant | median ms/step (IQR) | per call ms/step | time / a | speedup vs a "
          "| fwd/ex | bwd/ex |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "n/a" if r["ratio_to_a"] is None else f"{r['ratio_to_a']:.3f}x"
        speed = "n/a" if r["speedup_vs_a"] is None else f"{r['speedup_vs_a']:.2f}x"
        print(f"| {r['variant']} {r['name']} | {r['median_ms']:.1f} ({r['q1_ms']:.1f}-"
              f"{r['q3_ms']:.1f}) | {r['per_call_ms']:.1f} | {ratio} | {speed} | "
              f"{r['forward_per_example']:g} | {r['backward_per_example']:g} |")
    for key, why in header["skipped"].items():
        print(f"\n({key} skipped: {why})")


# ----------------------------------------------------------------------------- accuracy


def accuracy(args: argparse.Namespace) -> None:
    """Demo-budget PGD-AT per precision/layout, evaluated with PGD-20 in fp32."""
    quick = ["train_subset=256", "epochs=1", "method_options.threat.steps=2",
             "eval.threat.steps=2", "eval.n_test=32"] if args.quick else []
    n_eval = 64 if args.quick else args.n_eval
    attack = AttackSpec(name="pgd", threat=ThreatModel(eps=0.1, norm="linf", steps=20))
    tmp = tempfile.TemporaryDirectory() if args.quick else None
    out = Path(tmp.name if tmp is not None else args.out)
    device = resolve_device(args.device)
    header = {"mode": "accuracy", "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "recipe": str(RECIPE),
              "overrides": [*DEMO_OVERRIDES, *quick, *args.set], "eval": attack.name,
              "eval_threat": attack.threat.to_dict(), "eval_n": n_eval,
              "bf16_native": bf16_supported(device), "skipped": {}}
    rows: list[dict[str, Any]] = []
    try:
        for seed in args.seeds:
            for name, spec in ACCURACY_VARIANTS.items():
                if args.only and name not in args.only:
                    continue
                sets = [*DEMO_OVERRIDES, *quick, *args.set, f"seed={seed}",
                        f"device={args.device}",
                        f"channels_last={'true' if spec['channels_last'] else 'false'}",
                        f"precision={spec['precision']}"]
                try:
                    cfg = load_config(RECIPE, sets)
                except ValueError as err:  # bf16 where torch has no bf16 autocast: skip
                    if "config.precision" not in str(err):
                        raise
                    header["skipped"][f"{name}/seed{seed}"] = str(err)
                    continue
                run_dir = out / f"{name}-seed{seed}"
                t0 = time.perf_counter()
                history = train_from_config(cfg, run_dir, overwrite=args.fresh,
                                            resume=not args.fresh)
                wall = time.perf_counter() - t0
                result = evaluate_run(run_dir, attack, n=n_eval, batch_size=250, seed=0,
                                      device=args.device)
                rows.append({
                    "variant": name, "seed": seed, "channels_last": spec["channels_last"],
                    "precision": spec["precision"],
                    "clean": float(result.clean_correct.double().mean()),
                    "robust": float(result.adv_correct().double().mean()),
                    "train_seconds": round(sum(e.train_seconds for e in history.epochs), 2),
                    "wall_seconds": round(wall, 2),
                    "eval_seconds": round(sum(o.seconds for o in result.outcomes), 2),
                    "run_dir": str(run_dir),
                })
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(header, default=str))
    ref = {r["seed"]: r for r in rows if r["variant"] == "fp32-nchw"}
    for r in rows:
        base = ref.get(r["seed"])
        r["robust_minus_fp32_nchw_points"] = (None if base is None
                                              else round(100 * (r["robust"] - base["robust"]), 2))
        r["train_speedup_vs_fp32_nchw"] = (None if base is None or not r["train_seconds"]
                                           else round(base["train_seconds"] / r["train_seconds"],
                                                      3))
        print(json.dumps(r))
    print()
    print(f"PGD-AT demo budget, PGD-20 L-inf 0.1 on {n_eval} test images, {device}")
    print()
    print("| variant | seed | clean | robust | robust - fp32 NCHW (points) | train s "
          "| train speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["robust_minus_fp32_nchw_points"]
        s = r["train_speedup_vs_fp32_nchw"]
        print(f"| {r['variant']} | {r['seed']} | {100 * r['clean']:.2f}% | "
              f"{100 * r['robust']:.2f}% | {'n/a' if d is None else f'{d:+.2f}'} | "
              f"{r['train_seconds']:.1f} | {'n/a' if s is None else f'{s:.2f}x'} |")
    for key, why in header["skipped"].items():
        print(f"\n({key} skipped: {why})")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the timing (default) or the ``--accuracy`` mode."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy", action="store_true",
                   help="train the demo budget per variant and evaluate PGD-20")
    p.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, ...")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--only", nargs="*", default=None,
                   help="variant keys to run (timing: a-e; accuracy: "
                        f"{', '.join(ACCURACY_VARIANTS)})")
    p.add_argument("--batch-size", type=int, default=None, help="timing batch (default 128)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per repetition (default 8)")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="accuracy: seeds")
    p.add_argument("--n-eval", type=int, default=1000, help="accuracy: test images for PGD-20")
    p.add_argument("--out", default="runs/bench/train-step", help="accuracy: run folders")
    p.add_argument("--fresh", action="store_true",
                   help="accuracy: start the runs over (moves old ones aside)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="accuracy: extra config overrides")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (8 if args.quick else 128)
    args.steps = args.steps or (2 if args.quick else 8)
    args.reps = args.reps or (2 if args.quick else 10)
    (accuracy if args.accuracy else timing)(args)


if __name__ == "__main__":
    main()
