"""Certify a dataset with randomized smoothing: resumable, shardable, summarised and plotted.

``certify_dataset`` writes one JSON line per input to a JSONL file as it goes, in the shape
of Cohen et al.'s ``certify.py`` log (arXiv 1902.02918), with raw counts for auditing::

    {"bastion-certify": 1, "params": {...}}                         <- header line
    {"index": 0, "label": 7, "prediction": 7, "radius": 0.81, "correct": true,
     "abstained": false, "counts": {"nA": 99873, "n": 100000}, "p_lower": 0.9995,
     "seconds": 12.3}

- Resumable: rows are appended, flushed and fsynced after every group of inputs; on restart
  the file is read back, a half-written last line is discarded, and work continues after the
  last complete row. The header must match the new call's parameters (else ``ValueError``).
- Independent of batching: input ``i`` draws its noise from its own generator seeded with
  ``input_seed(seed, i)`` (see ``smoothing.generators_for``), so its row does not depend on
  which inputs are certified together, on the tuned chunk size or on the rank running it.
- Sharded: under ``torchrun`` (an initialised process group, or ``RANK``/``WORLD_SIZE`` in the
  environment) rank ``r`` of ``w`` certifies inputs ``r::w`` into its own shard file
  (``<out>.rank<r>-of-<w>.jsonl``) and rank 0 merges the shards into ``out`` sorted by
  index: the same lines as a single-process run with the same seed, except the ``seconds``
  field (wall time), the only value that is not a function of the inputs and seeds.

``summarize`` gives certified accuracy at radii and the ACR (``bastion.metrics``);
``bench.plots.plot_certified_accuracy`` draws certified accuracy against radius.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_images, check_labels
from bastion.certify.sequential import certify_radius
from bastion.certify.smoothing import (
    MemoryFormat,
    Precision,
    SmoothedClassifier,
    resolve_precision,
)
from bastion.metrics import average_certified_radius, certified_accuracy
from bastion.noise import Noise
from bastion.records import Certificate
from bastion.records.io import atomic_write_bytes

log = logging.getLogger(__name__)

HEADER_KEY = "bastion-certify"
FORMAT_VERSION = 1
Progress = Callable[[int, int], None]
"""``progress(done, total)``: inputs finished so far (this rank) and inputs to do."""


# --------------------------------------------------------------------------- seeds, files


def input_seed(seed: int, index: int) -> int:
    """A 63-bit seed for dataset position ``index`` under run seed ``seed`` (SplitMix64)."""
    z = ((seed & 0xFFFFFFFF) << 32 | (index & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def selected_indices(num_images: int, skip: int = 1, max_inputs: int | None = None) -> list[int]:
    """Dataset positions certified: every ``skip``-th from 0, at most ``max_inputs`` of them."""
    if not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be an int >= 1, got {skip!r}")
    if max_inputs is not None and (not isinstance(max_inputs, int) or max_inputs < 1):
        raise ValueError(f"max_inputs must be an int >= 1 or None, got {max_inputs!r}")
    idx = list(range(0, num_images, skip))
    return idx if max_inputs is None else idx[:max_inputs]


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its rows: ``<stem>.rank<r>-of-<w><suffix>``."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False)


@dataclass(frozen=True)
class _FileState:
    header: dict[str, Any] | None
    rows: list[dict[str, Any]]
    lines: list[bytes]  # raw row lines, newline included
    good_bytes: int  # length of the complete prefix


def _read(path: Path) -> _FileState:
    data = path.read_bytes() if path.exists() else b""
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break  # no newline: a half-written last line (or nothing), discarded
        raw = data[pos : end + 1]
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line at byte {pos} is not valid JSON ({err})") from err
        if header is None and pos == 0:
            if not isinstance(obj, dict) or HEADER_KEY not in obj:
                raise ValueError(f"{path} is not a bastion certification file (no header)")
            header = obj
        else:
            rows.append(obj)
            lines.append(raw)
        pos = end + 1
    return _FileState(header, rows, lines, pos)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete rows of a certification JSONL file (a half-written last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no certification file at {str(path)!r}")
    return _read(path).rows


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The ``params`` of a certification file's header line."""
    state = _read(Path(path))
    if state.header is None:
        raise ValueError(f"{path} has no header line")
    return state.header["params"]


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "ab") as fh:
        fh.write("".join(lines).encode())
        fh.flush()
        os.fsync(fh.fileno())


def _open_for_resume(path: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows already in ``path`` (truncating a half-written line); writes the header if new."""
    header = {HEADER_KEY: FORMAT_VERSION, "params": params}
    if path.exists() and path.stat().st_size > 0:
        state = _read(path)
        if state.header is None:
            raise ValueError(f"{path} exists but has no complete header; remove it")
        if state.header.get("params") != json.loads(_dumps(params)):
            raise ValueError(
                f"{path} holds a certification with other parameters "
                f"({state.header.get('params')}); pass another output path to start a new one"
            )
        if state.good_bytes < path.stat().st_size:
            log.warning("%s: discarding a half-written last line", path)
            os.truncate(path, state.good_bytes)
        return state.rows
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (_dumps(header) + "\n").encode())
    return []


# --------------------------------------------------------------------------- distribution


def dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        r, w = int(rank or 0), int(world_size or 1)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, world_size), got rank {r} of {w}")
    return r, w


def _barrier() -> None:
    """Wait for every rank (initialising a gloo group from torchrun's environment if needed)."""
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


# --------------------------------------------------------------------------- certification


def _params(
    smoothed: SmoothedClassifier, x0: torch.Tensor, *, n0: int, n: int, alpha: float,
    seed: int, skip: int, radius: float | None, two_class: bool, precision: str,
    n_first: int, growth: float, num_images: int,
) -> dict[str, Any]:
    noise = smoothed.noise_for(x0)
    p: dict[str, Any] = {
        **noise.params(), "norm": noise.norm, "num_classes": smoothed.num_classes,
        "n0": n0, "n": n, "alpha": alpha, "seed": seed, "skip": skip,
        "num_images": num_images, "precision": precision,
    }
    if radius is None:
        p.update(mode="certify", two_class=two_class)
    else:
        p.update(mode="sequential", radius=float(radius), n_first=n_first, growth=float(growth))
    return p


def _rows_of(
    cert: Certificate, indices: list[int], labels: torch.Tensor, seconds: float
) -> list[dict[str, Any]]:
    rows = []
    per = round(seconds / max(1, len(indices)), 4)
    for j, i in enumerate(indices):
        pred = int(cert.prediction[j])
        abst = bool(cert.abstained[j])
        counts = {"nA": int(cert.extra["nA"][j]), "n": int(cert.extra["n"][j])}
        for key in ("nB", "looks"):
            if key in cert.extra:
                counts[key] = int(cert.extra[key][j])
        row = {
            "index": i, "label": int(labels[j]), "prediction": pred,
            "radius": float(cert.radius[j]), "correct": (not abst) and pred == int(labels[j]),
            "abstained": abst, "counts": counts, "p_lower": float(cert.extra["p_lower"][j]),
        }
        if "p_upper_b" in cert.extra:
            row["p_upper_b"] = float(cert.extra["p_upper_b"][j])
        row["seconds"] = per
        rows.append(row)
    return rows


def _num_classes(model: nn.Module, x0: torch.Tensor) -> int:
    net = unwrap(model)
    with model_mode(net, False), torch.inference_mode():
        return int(net(x0).shape[1])


def certify_shard(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: Noise,
    *,
    out_path: str | os.PathLike,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 1,
    max_inputs: int | None = None,
    seed: int = 0,
    radius: float | None = None,
    two_class: bool = False,
    num_classes: int | None = None,
    batch_size: int | None = None,
    memory_format: MemoryFormat = "auto",
    precision: Precision = "fp32",
    inputs_per_call: int | None = None,
    n_first: int = 100,
    growth: float = 2.0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Certify this rank's inputs (``selected[rank::world_size]``) into ``out_path``.

    The building block of ``certify_dataset`` (which picks the shard file and merges); the
    arguments are the same. Resumes from the rows already in ``out_path``.

    Returns:
        This shard's rows, in index order.
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    device = next(unwrap(model).parameters()).device
    x0 = images[:1].to(device)
    k = num_classes if num_classes is not None else _num_classes(model, x0)
    smoothed = SmoothedClassifier(model, noise, k, memory_format=memory_format)
    prec = resolve_precision(precision, device)
    params = _params(
        smoothed, x0, n0=n0, n=n, alpha=alpha, seed=seed, skip=skip, radius=radius,
        two_class=two_class, precision=prec, n_first=n_first, growth=growth,
        num_images=images.shape[0],
    )
    path = Path(out_path)
    done = _open_for_resume(path, params)
    assigned = selected_indices(images.shape[0], skip, max_inputs)[rank::world_size]
    have = [r["index"] for r in done]
    if have != assigned[: len(have)]:
        raise ValueError(
            f"{path} holds rows for inputs {have[:5]}... that are not this run's first "
            f"{len(have)} inputs; pass another output path"
        )
    rows = done[: len(assigned)]
    todo = assigned[len(rows) :]
    # Enough inputs per call to fill forward batches (in sequential mode most inputs stop
    # after a few hundred draws, so many are grouped); results do not depend on it.
    per_call = inputs_per_call or (64 if radius is not None else max(1, min(64, 4096 // (n0 + n))))
    if progress is not None:
        progress(len(rows), len(assigned))
    for start in range(0, len(todo), per_call):
        group = todo[start : start + per_call]
        idx = torch.tensor(group, dtype=torch.int64)
        x = images[idx].to(device)
        gens = [torch.Generator(device=device).manual_seed(input_seed(seed, i)) for i in group]
        t0 = time.perf_counter()
        if radius is None:
            cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                    generator=gens, two_class=two_class, precision=prec)
        else:
            cert = certify_radius(smoothed, x, radius, n0=n0, n_max=n, n_first=n_first,
                                  growth=growth, alpha=alpha, batch_size=batch_size,
                                  generator=gens, precision=prec)
        new = _rows_of(cert, group, labels[idx], time.perf_counter() - t0)
        _append(path, [_dumps(r) + "\n" for r in new])
        rows.extend(new)
        if progress is not None:
            progress(len(rows), len(assigned))
    return rows


def merge_shards(out_path: str | os.PathLike, world_size: int) -> list[dict[str, Any]]:
    """Merge the ``world_size`` shard files of ``out_path`` into ``out_path``, by index.

    Every shard must carry the same header. The merged file is written atomically and holds
    the header and the shards' row lines, unchanged, sorted by index.
    """
    header_line: bytes | None = None
    keyed: list[tuple[int, bytes, dict[str, Any]]] = []
    for r in range(world_size):
        p = shard_path(out_path, r, world_size)
        if not p.is_file():
            raise FileNotFoundError(f"missing shard {p}")
        state = _read(p)
        first = p.read_bytes().split(b"\n", 1)[0] + b"\n"
        if header_line is None:
            header_line = first
        elif first != header_line:
            raise ValueError(f"shard {p} was made with other parameters than shard 0")
        keyed.extend((row["index"], line, row) for row, line in
                     zip(state.rows, state.lines, strict=True))
    keyed.sort(key=lambda t: t[0])
    indices = [t[0] for t in keyed]
    if len(set(indices)) != len(indices):
        raise ValueError("shards overlap: an index appears twice")
    assert header_line is not None
    atomic_write_bytes(out_path, header_line + b"".join(t[1] for t in keyed))
    return [t[2] for t in keyed]


def certify_dataset(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: Noise,
    *,
    out_path: str | os.PathLike,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    skip: int = 1,
    max_inputs: int | None = None,
    seed: int = 0,
    radius: float | None = None,
    two_class: bool = False,
    num_classes: int | None = None,
    memory_format: MemoryFormat = "auto",
    precision: Precision = "fp32",
    inputs_per_call: int | None = None,
    n_first: int = 100,
    growth: float = 2.0,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Certify every ``skip``-th image with randomized smoothing, one JSONL row per input.

    Cohen et al. 2019, arXiv 1902.02918 (CERTIFY per input), or, with ``radius``, the
    sequential fixed-radius test of ``bastion.certify.sequential``.

    Args:
        model: base classifier (inputs [N, C, H, W] in [0, 1]), on the device to use.
        images: float [N, C, H, W] in [0, 1] (moved to the model's device in groups).
        labels: int64 [N].
        noise: ``Gaussian``, ``Laplace`` or ``Uniform`` (``bastion.certify.noise``).
        out_path: the JSONL file (appended to and resumed; see the module docstring).
        n0, n, alpha: CERTIFY's selection draws, estimation draws and failure probability
            (with ``radius``: ``n`` is the sequential test's largest number of draws).
        batch_size: noisy images per forward pass (None: measured, ``smoothing.tune``).
        skip: certify every ``skip``-th image (Cohen et al. use 20 on CIFAR-10's test set).
        max_inputs: certify at most this many images.
        seed: run seed; input ``i`` uses ``input_seed(seed, i)``.
        radius: None for CERTIFY; a radius for the sequential fixed-radius test.
        two_class: two-class radius (``stats.two_class_bounds``).
        num_classes: number of classes (None: read from one forward pass).
        memory_format: ``"auto"``, ``"contiguous"`` or ``"channels_last"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast where supported; in the header).
        inputs_per_call: inputs certified together (rows are written after each group);
            default ``max(1, min(64, 4096 // (n0 + n)))``, 64 in sequential mode. Results
            do not depend on it.
        n_first, growth: the sequential test's first look and look growth.
        rank, world_size: this process's shard (None: from torch.distributed or the
            ``RANK``/``WORLD_SIZE`` environment of torchrun).
        progress: ``progress(done, total)`` after each group.

    Returns:
        The rows, sorted by index (on rank 0 of several: the merged rows; on other ranks:
        that rank's rows).
    """
    r, w = dist_info(rank, world_size)
    kwargs: dict[str, Any] = dict(
        n0=n0, n=n, alpha=alpha, skip=skip, max_inputs=max_inputs, seed=seed, radius=radius,
        two_class=two_class, num_classes=num_classes, batch_size=batch_size,
        memory_format=memory_format, precision=precision, inputs_per_call=inputs_per_call,
        n_first=n_first, growth=growth, progress=progress,
    )
    if w == 1:
        return certify_shard(model, images, labels, noise, out_path=out_path, **kwargs)
    rows = certify_shard(model, images, labels, noise, out_path=shard_path(out_path, r, w),
                         rank=r, world_size=w, **kwargs)
    _barrier()
    if r == 0:
        rows = merge_shards(out_path, w)
    _barrier()
    return rows


# --------------------------------------------------------------------------- summary, plot


def rows_to_certificate(
    rows: Sequence[dict[str, Any]], norm: str = "l2", method: str = "smoothing"
) -> Certificate:
    """The rows as a ``Certificate`` carrying their labels and dataset indices."""
    if not rows:
        raise ValueError("no rows to summarise")
    cert = Certificate(
        prediction=torch.tensor([r["prediction"] for r in rows], dtype=torch.int64),
        radius=torch.tensor([r["radius"] for r in rows], dtype=torch.float64),
        abstained=torch.tensor([r["abstained"] for r in rows], dtype=torch.bool),
        norm=norm,  # type: ignore[arg-type]
        method=method,
        labels=torch.tensor([r["label"] for r in rows], dtype=torch.int64),
        index=torch.tensor([r["index"] for r in rows], dtype=torch.int64),
    )
    return cert


def default_radii(rows: Sequence[dict[str, Any]], step: float = 0.25) -> list[float]:
    """0, step, 2 step, ... up to the largest radius in ``rows`` (at least up to 1.0)."""
    top = max([1.0] + [float(r["radius"]) for r in rows])
    return [round(i * step, 10) for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def summarize(
    rows: Sequence[dict[str, Any]], radii: Sequence[float] | None = None, norm: str = "l2"
) -> dict[str, Any]:
    """Certified accuracy at ``radii`` and the ACR of a certification's rows.

    Certified accuracy at r (seed eq. 4): the fraction of all rows certified, correctly,
    with radius >= r. ACR (eq. 6): the mean of the radius over correct certified rows, 0
    elsewhere (``bastion.metrics``).

    Returns:
        ``{"n", "radii", "certified_accuracy" (list), "acr", "abstain_rate",
        "seconds", "seconds_per_input"}``.
    """

    radii = default_radii(rows) if radii is None else [float(r) for r in radii]
    cert = rows_to_certificate(rows, norm)
    labels = cert.labels
    acc = certified_accuracy(cert, labels, radii)
    seconds = float(sum(float(r.get("seconds", 0.0)) for r in rows))
    return {
        "n": len(rows),
        "radii": radii,
        "certified_accuracy": [float(a) for a in acc],
        "acr": average_certified_radius(cert, labels),
        "abstain_rate": float(cert.abstained.double().mean()),
        "seconds": seconds,
        "seconds_per_input": seconds / len(rows),
    }


__all__ = [
    "certify_dataset",
    "certify_shard",
    "default_radii",
    "input_seed",
    "merge_shards",
    "read_header",
    "read_rows",
    "rows_to_certificate",
    "selected_indices",
    "shard_path",
    "summarize",
]
