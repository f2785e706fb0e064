"""AutoAttack (standard) against PGD-20 and PGD-50 with restarts on a trained run folder: the
first N Fashion-MNIST test images at L-inf eps 0.1 (issue 17; docs/results.md).

Each attack's outcome is saved to OUT/<attack>.json as soon as it is complete, and a rerun
skips the saved ones, so an interrupted measurement loses at most the attack in progress.
All attacks see the same points (the records share index, labels and clean predictions).

    .venv/bin/python benchmarks/autoattack_full.py RUN_DIR OUT_DIR [N]
"""
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bastion.attacks.evaluate import evaluate_attacks
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.records.evaluation import EvalResult
from bastion.records.io import atomic_write_json, load_record, save_record
from bastion.runs import load_model

run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
model = load_model(run_dir)
test = load_dataset("fashion-mnist", "test")
x, y = test.images[:n], test.labels[:n]
specs = {
    "pgd20": AttackSpec(name="pgd", threat=ThreatModel(eps=0.1, steps=20)),
    "pgd50x5": AttackSpec(name="pgd", threat=ThreatModel(eps=0.1, steps=50), restarts=5),
    "autoattack": AttackSpec(name="autoattack", threat=ThreatModel(eps=0.1), num_classes=10),
}
merged: EvalResult | None = None
for key, spec in specs.items():
    path = out / f"{key}.json"
    if path.exists():
        r = load_record(EvalResult, path)
    else:
        t0 = time.perf_counter()
        r = evaluate_attacks(model, x, y, [spec], batch_size=250)
        save_record(path, r)
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    merged = r if merged is None else merged.with_outcome(r.outcomes[0])
assert merged is not None
acc = {k: float(merged.adv_correct(0.1, attack=s.name, norm="linf").double().mean())
       for k, s in specs.items() if s.name != "pgd"}
pgd = [o for o in merged.outcomes if o.attack == "pgd"]
summary = {
    "run": str(run_dir), "n": n,
    "clean": float(merged.clean_correct.double().mean()),
    "pgd20": float(EvalResult(index=merged.index, labels=merged.labels,
                              clean_pred=merged.clean_pred, outcomes=(pgd[0],))
                   .adv_correct(0.1).double().mean()),
    "pgd50x5": float(EvalResult(index=merged.index, labels=merged.labels,
                                clean_pred=merged.clean_pred, outcomes=(pgd[1],))
                     .adv_correct(0.1).double().mean()),
    **acc,
    "worst": float(merged.adv_correct(0.1).double().mean()),
    "seconds": {k: round(o.seconds, 1) for k, o in zip(specs, merged.outcomes, strict=True)},
    "autoattack_settings": merged.outcomes[2].params,
    "cpu": Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t"),
    "python": platform.python_version(), "torch": torch.__version__,
    "date": time.strftime("%Y-%m-%d"),
}
atomic_write_json(out / "summary.json", summary)
print(json.dumps(summary), flush=True)
