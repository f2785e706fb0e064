"""Robust-overfitting early stopping: fit(..., patience=N) stops and keeps the best checkpoint."""

from __future__ import annotations

import json

import torch

from bastion.attacks.evaluate import predict
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.models import build
from bastion.train import EvalPlan, Standard, fit, per_epoch_evaluation
from bastion.train.checkpoint import checkpoint_dir, load_model_state


def test_patience_stops_a_non_improving_run_and_keeps_the_best(tmp_path):
    train = load_dataset("digits", "train").subset(256)
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing changes: no epoch improves
    plan = EvalPlan(attack=AttackSpec(threat=ThreatModel(eps=0.1, steps=2)), n_test=64, seed=0)
    hist = fit(model, Standard(), train, opt, epochs=6, batch_size=64,
               evaluate=per_epoch_evaluation(plan, test), run_dir=tmp_path, patience=1)
    assert [e["epoch"] for e in hist.epochs] == [1, 2]
    assert hist.epochs[0]["test_robust_acc"] == hist.epochs[1]["test_robust_acc"]
    best, last = checkpoint_dir(tmp_path, "best"), checkpoint_dir(tmp_path, "last")
    assert best is not None and best.name == "epoch-0001" and best.is_dir()
    assert last is not None and last.name == "epoch-0002"
    assert json.loads((tmp_path / "checkpoints" / "best.json").read_text())["epoch"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_patience_keeps_the_best_epoch_of_a_run_that_gets_worse(tmp_path):
    """Test accuracy that falls after epoch 1 (a learning rate that destroys the model)."""
    train = load_dataset("digits", "train").subset(256)
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 4 else 40.0)
    hist = fit(model, Standard(), train, opt, epochs=6, batch_size=64, scheduler=sched,
               evaluate=per_epoch_evaluation(EvalPlan(n_test=200), test), run_dir=tmp_path,
               patience=2)
    scores = [e["test_clean_acc"] for e in hist.epochs]
    assert len(scores) < 6
    best_epoch = scores.index(max(scores)) + 1
    assert len(scores) == best_epoch + 2  # stopped after 2 epochs without improvement
    best = checkpoint_dir(tmp_path, "best")
    assert best is not None and best.name == f"epoch-{best_epoch:04d}"
    assert hist.epochs[-1]["best_so_far"] == max(scores)
    # the kept weights are the best epoch's: they reproduce its test accuracy
    torch.manual_seed(1)
    fresh = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(32,))
    load_model_state(fresh, best)
    acc = float((predict(fresh, test.images[:200]) == test.labels[:200]).double().mean())
    assert acc == max(scores)
