"""Value and time of the per-layer spectral-norm bounds of ``operator_norm`` on typical layers.

For each conv / linear layer (a list of shapes, or the Conv2d / Linear layers of a registered
model architecture, kaiming-normal initialised with ``--seed``): the sound Gram-iteration
bound (``gram_bound_conv`` / ``gram_bound_dense``), power iteration (50 iterations from a
seeded start, and 1 iteration from a warm vector, a persistent iterate), the sound
``reshaped-sound`` bound, the unsound ``fft-circular`` value, and the exact norm by SVD of
the explicit matrix where it has at most ``SVD_MAX_SIDE`` (4096) columns and
``SVD_MAX_ENTRIES`` entries. Elsewhere the reference is a 500-iteration power iteration, a
LOWER bound on the norm, so the excesses over it overstate the true excess a little.
Prints a Markdown table (excess over the reference in %, milliseconds, best of
``--repeats``) and writes JSON to ``--out``.

    .venv/bin/python benchmarks/lipschitz_bounds.py --out benchmarks/out/lipschitz_bounds.json
    .venv/bin/python benchmarks/lipschitz_bounds.py --quick --out /tmp/lipschitz_quick.json
    .venv/bin/python benchmarks/lipschitz_bounds.py --model small-cnn --out ...
    .venv/bin/python benchmarks/lipschitz_bounds.py --layers conv,16,16,3,1,1,14 linear,256,10

A conv spec is ``conv,c_in,c_out,k,stride,padding,n`` (an ``n x n`` input), a linear one
``linear,in,out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bastion.models.lipschitz.operator_norm import (
    SOUND_METHODS,
    SVD_MAX_ENTRIES,
    SVD_MAX_SIDE,
    conv_output_size,
    conv_power_bound,
    conv_svd_norm,
    fft_circular_norm,
    gram_bound_conv,
    gram_bound_dense,
    linear_power_bound,
    reshaped_kernel_bound,
)


@dataclass(frozen=True)
class Layer:
    """One layer shape: a conv ``c_in -> c_out``, ``k x k``, on an ``n x n`` input, or a linear
    ``c_in -> c_out`` (then ``k = stride = n = 1``, ``padding = 0``)."""

    kind: str
    c_in: int
    c_out: int
    k: int = 1
    stride: int = 1
    padding: int = 0
    n: int = 1

    @property
    def name(self) -> str:
        if self.kind == "linear":
            return f"linear {self.c_in}->{self.c_out}"
        s = f" s{self.stride}" if self.stride != 1 else ""
        return f"conv {self.c_in}->{self.c_out} {self.k}x{self.k} p{self.padding}{s} @{self.n}"


DEFAULT_LAYERS = [
    Layer("conv", 1, 32, 3, 1, 1, 28),
    Layer("conv", 32, 32, 3, 2, 1, 28),
    Layer("conv", 32, 64, 3, 1, 1, 14),
    Layer("conv", 64, 64, 3, 2, 1, 14),
    Layer("linear", 3136, 256),
    Layer("linear", 256, 10),
]
QUICK_LAYERS = [
    Layer("conv", 1, 4, 3, 1, 1, 8),
    Layer("conv", 4, 4, 3, 2, 1, 8),
    Layer("linear", 64, 10),
]


def parse_layer(spec: str) -> Layer:
    parts = spec.split(",")
    try:
        if parts[0] == "conv" and len(parts) == 7:
            c_in, c_out, k, s, p, n = (int(v) for v in parts[1:])
            return Layer("conv", c_in, c_out, k, s, p, n)
        if parts[0] == "linear" and len(parts) == 3:
            return Layer("linear", int(parts[1]), int(parts[2]))
    except ValueError:
        pass
    raise SystemExit(f"bad layer spec {spec!r}: use conv,c_in,c_out,k,stride,padding,n or "
                     "linear,in,out")


def model_layers(name: str, in_channels: int, input_size: int) -> list[Layer]:
    """The square-kernel Conv2d (groups 1, dilation 1, zero padding) and Linear layers of a
    registered architecture, with the input sizes a forward pass shows."""
    from bastion.models import build

    model = build(name, in_channels=in_channels, input_size=input_size).eval()
    found: list[Layer] = []

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(m, nn.Linear):
            found.append(Layer("linear", m.in_features, m.out_features))
        elif (m.kernel_size[0] == m.kernel_size[1] and m.groups == 1
              and tuple(m.dilation) == (1, 1) and m.padding_mode == "zeros"
              and not isinstance(m.padding, str) and m.padding[0] == m.padding[1]
              and m.stride[0] == m.stride[1] and x.shape[2] == x.shape[3]):
            found.append(Layer("conv", m.in_channels, m.out_channels, m.kernel_size[0],
                               m.stride[0], m.padding[0], x.shape[2]))
        else:
            print(f"skipping {m} on input {tuple(x.shape)} (not a square plain conv)")

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, in_channels, input_size, input_size))
    for h in handles:
        h.remove()
    return found


def _timed(f: Callable[[], torch.Tensor], repeats: int, device: torch.device
           ) -> tuple[float, float]:
    """``(value, best milliseconds)`` of ``f`` over ``repeats`` runs."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = f()
        value = float(out)
        best = min(best, time.perf_counter() - t0)
    return value, 1000.0 * best


def weight_for(layer: Layer, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    shape = ((layer.c_out, layer.c_in) if layer.kind == "linear"
             else (layer.c_out, layer.c_in, layer.k, layer.k))
    w = torch.empty(shape)
    nn.init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
    return w.to(device)


def bench_layer(layer: Layer, w: torch.Tensor, repeats: int, power_iters: int,
                ref_iters: int) -> dict[str, object]:
    dev = w.device
    conv = layer.kind == "conv"
    geo = {"stride": layer.stride, "padding": layer.padding}
    if conv:
        ho, wo = conv_output_size(layer.n, layer.k, layer.stride, layer.padding)
        rows, cols = layer.c_out * ho * wo, layer.c_in * layer.n * layer.n

        def power(v: torch.Tensor | None, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
            return conv_power_bound(w, layer.n, v=v, iters=iters, **geo)
    else:
        rows, cols = layer.c_out, layer.c_in

        def power(v: torch.Tensor | None, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
            return linear_power_bound(w, v=v, iters=iters)

    methods: dict[str, dict[str, object]] = {}

    def record(name: str, f: Callable[[], torch.Tensor], sound: bool) -> None:
        value, ms = _timed(f, repeats, dev)
        methods[name] = {"value": value, "ms": ms, "sound": sound}

    if conv:
        record("gram", lambda: gram_bound_conv(w, layer.n, **geo), True)
        record("reshaped-sound", lambda: reshaped_kernel_bound(
            w, layer.stride, input_size=layer.n, padding=layer.padding), True)
        if layer.n % layer.stride == 0:
            record("fft-circular", lambda: fft_circular_norm(w, layer.n, stride=layer.stride),
                   SOUND_METHODS["fft-circular"])
    else:
        record("gram", lambda: gram_bound_dense(w), True)
    record(f"power{power_iters}", lambda: power(None, power_iters)[0], False)
    _, warm_v = power(None, power_iters)
    record("power1-warm", lambda: power(warm_v, 1)[0], False)

    svd_ok = cols <= SVD_MAX_SIDE and rows * cols <= SVD_MAX_ENTRIES
    if svd_ok:
        f = ((lambda: conv_svd_norm(w, layer.n, **geo)) if conv
             else (lambda: torch.linalg.matrix_norm(w.double(), ord=2)))
        value, ms = _timed(f, 1, dev)
        reference = {"kind": "svd", "value": value, "ms": ms}
    else:
        value, ms = _timed(lambda: power(None, ref_iters)[0], 1, dev)
        reference = {"kind": f"power{ref_iters} (lower bound)", "value": value, "ms": ms}
    for m in methods.values():
        m["excess_pct"] = 100.0 * (float(m["value"]) / float(reference["value"]) - 1.0)
    return {"layer": layer.name, **layer.__dict__, "matrix": [rows, cols],
            "reference": reference, "methods": methods}


def markdown(results: list[dict[str, object]], power_iters: int) -> str:
    cols = ["gram", "reshaped-sound", "fft-circular", f"power{power_iters}", "power1-warm"]
    head = ("| layer | reference | ref value | ref ms | "
            + " | ".join(f"{c} % / ms" for c in cols) + " |")
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for r in results:
        ref = r["reference"]
        cells = []
        for c in cols:
            m = r["methods"].get(c)
            cells.append("n/a" if m is None else f"{m['excess_pct']:+.3f} / {m['ms']:.2f}")
        lines.append(f"| {r['layer']} | {ref['kind']} | {ref['value']:.5f} | {ref['ms']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="*", default=None,
                   help="conv,c_in,c_out,k,stride,padding,n or linear,in,out (default: the "
                        "6 layers of the docstring)")
    p.add_argument("--model", default=None, help="take the layers of this registered model")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--quick", action="store_true", help="tiny layers, one repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--power-iters", type=int, default=50)
    p.add_argument("--ref-iters", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/out/lipschitz_bounds.json")
    args = p.parse_args()
    if args.model is not None:
        layers = model_layers(args.model, args.in_channels, args.input_size)
    elif args.layers:
        layers = [parse_layer(s) for s in args.layers]
    else:
        layers = QUICK_LAYERS if args.quick else DEFAULT_LAYERS
    repeats = 1 if args.quick else args.repeats
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for layer in layers:
        w = weight_for(layer, gen, device)
        results.append(bench_layer(layer, w, repeats, args.power_iters, args.ref_iters))
        print(f"done: {layer.name}", flush=True)
    print()
    print(markdown(results, args.power_iters))
    print("\nexcess = value / reference - 1; a power-iteration reference is a lower bound, "
          "so there the excess of the sound bounds is slightly overstated.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": {"seed": args.seed, "repeats": repeats, "power_iters": args.power_iters,
                     "ref_iters": args.ref_iters, "quick": args.quick, "model": args.model},
        "sound": SOUND_METHODS,
        "layers": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
