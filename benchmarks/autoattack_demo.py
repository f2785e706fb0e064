"""AutoAttack (standard, explicit settings) against PGD-20 on the make-demo model: the first 100
Fashion-MNIST test images, L-inf eps 0.1 (docs/results.md). Run after `make demo` (its PGD-AT
model; the numbers in docs/results.md were measured on the earlier demo's runs/demo-pgd-at):

    .venv/bin/python benchmarks/autoattack_demo.py
"""
import json
from pathlib import Path

import torch

from bastion.attacks.evaluate import evaluate_attacks
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.metrics import robust_accuracy
from bastion.runs import load_model

torch.set_num_threads(2)
model = load_model("runs/bench/quick/pgd-at")
test = load_dataset("fashion-mnist", "test")
n = 100
x, y = test.images[:n], test.labels[:n]
specs = [AttackSpec(name="pgd", threat=ThreatModel(eps=0.1, steps=20)),
         AttackSpec(name="autoattack", threat=ThreatModel(eps=0.1))]
r = evaluate_attacks(model, x, y, specs, batch_size=100)
out = {"n": n, "clean": float(r.clean_correct.double().mean()),
       "pgd20": robust_accuracy(r, eps=0.1, attack="pgd"),
       "autoattack": robust_accuracy(r, eps=0.1, attack="autoattack"),
       "worst": robust_accuracy(r, eps=0.1),
       "seconds": {o.attack: round(o.seconds, 1) for o in r.outcomes},
       "cpu": Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")}
print(json.dumps(out), flush=True)
