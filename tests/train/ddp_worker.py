"""Worker for the DDP test: ``torchrun --nproc_per_node 2 ddp_worker.py OUT_DIR``.

Also importable: ``train_digits(run_dir)`` runs the same training in one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.train import PGDAT, fit


def train_digits(run_dir: str) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = load_dataset("digits", "train")
    fit(model, PGDAT(threat=ThreatModel(eps=0.1, steps=3)), data, opt, epochs=6, batch_size=50,
        seed=0, run_dir=run_dir)
    test = load_dataset("digits", "test")
    attack = AttackSpec(threat=ThreatModel(eps=0.1, steps=10))
    r = evaluate_attack(model.eval(), test.images, test.labels, attack)
    return {"clean": float(r.clean_correct.double().mean()),
            "robust": float(r.adv_correct().double().mean())}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    result = train_digits(str(out / "run"))
    result["world_size"] = dist.get_world_size()
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()
