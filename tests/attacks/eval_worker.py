"""Worker for the sharded-evaluation test: ``eval_worker.py OUT_DIR``.

OUT_DIR holds ``model.pt`` (the state dict of ``tiny_model()``). Run plainly, it evaluates
in one process and writes ``single-*.json``; under ``torchrun --nproc_per_node 2`` each rank
joins a gloo process group, evaluates its share of the batches and writes the merged
records ``rank<r>-*.json`` (every rank returns the full record), the points its
``progress`` callback saw, and the errors raised by misuse (``rank<r>-errors.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from bastion.attacks.evaluate import evaluate_attacks, evaluate_minimal
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.records import EvalResult, save_record

N_POINTS = 180
BATCH_SIZE = 40  # 5 batches (the last one of 20 points): rank 0 gets 3, rank 1 gets 2
ATTACKS = (
    AttackSpec(threat=ThreatModel(eps=0.1, steps=8, random_init=True), restarts=2),
    AttackSpec(threat=ThreatModel(eps=0.5, norm="l2", steps=5, random_init=True)),
)


def tiny_model() -> nn.Module:
    """The architecture the test trains and the workers load."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def evaluate_all(model: nn.Module, progress: list[int]) -> dict[str, EvalResult]:
    """The records the test compares: PGD (random start, 2 restarts) and L2 PGD in one
    call, FMN, and the bisection (which draws random starts), on the first N_POINTS."""
    test = load_dataset("digits", "test")
    x, y = test.images[:N_POINTS], test.labels[:N_POINTS]
    return {
        "pgd": evaluate_attacks(model, x, y, ATTACKS, batch_size=BATCH_SIZE, seed=5,
                                progress=progress.append),
        "fmn": evaluate_minimal(model, x, y, steps=20, batch_size=BATCH_SIZE,
                                progress=progress.append),
        "bisection": evaluate_minimal(model, x, y, attack="bisection", steps=5, eps_max=0.5,
                                      search_steps=4, batch_size=BATCH_SIZE, seed=2),
    }


def misuse_errors(model: nn.Module, rank: int) -> dict[str, str]:
    """What each rank raises when the ranks disagree (seed) or one of them fails (labels)."""
    test = load_dataset("digits", "test")
    x, y = test.images[:20], test.labels[:20]
    spec = AttackSpec(threat=ThreatModel(eps=0.1, steps=2))
    errors: dict[str, str] = {}
    try:
        evaluate_attacks(model, x, y, [spec], batch_size=10, seed=rank)
    except ValueError as err:
        errors["seed"] = f"{type(err).__name__}: {err}"
    bad = y.clone()
    if rank == 1:
        bad[0] = 99
    try:
        evaluate_attacks(model, x, bad, [spec], batch_size=10)
    except ValueError as err:
        errors["labels"] = f"{type(err).__name__}: {err}"
    return errors


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model = tiny_model()
    model.load_state_dict(torch.load(out / "model.pt"))
    model.eval()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    tag = f"rank{dist.get_rank()}" if distributed else "single"
    progress: list[int] = []
    for name, record in evaluate_all(model, progress).items():
        save_record(out / f"{tag}-{name}.json", record)
    (out / f"{tag}-progress.json").write_text(json.dumps(progress))
    if distributed:
        (out / f"{tag}-errors.json").write_text(json.dumps(misuse_errors(model,
                                                                         dist.get_rank())))
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
