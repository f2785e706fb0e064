"""The seed's general AT algorithm: D_adv regeneration, batch composition, checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import perturbation_norm
from bastion.attacks.threat import ThreatModel
from bastion.models import build
from bastion.records import StepContext
from bastion.train import EvalPlan, RegeneratedAT, build_method, fit, per_epoch_evaluation
from bastion.train.checkpoint import checkpoint_dir, load_train_state
from bastion.train.regenerate import RegeneratedSet
from bastion.train.state_io import join_state, split_state


@dataclass
class _Data:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _data(n: int = 50) -> _Data:
    g = torch.Generator().manual_seed(0)
    return _Data(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", num_classes=3, in_channels=1, input_size=8, hidden=(16,))


class _Recorder(nn.Module):
    """Wraps a model and keeps every batch it is called on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def _regen(eps: float = 0.1, steps: int = 10, **options: Any) -> RegeneratedAT:
    return RegeneratedAT(threat=ThreatModel(eps=eps, steps=steps), **options)


def _ctx(index: torch.Tensor, state: RegeneratedSet) -> StepContext:
    return StepContext(index=index, state=state)


@dataclasses.dataclass(frozen=True)
class _KeepsState:
    """Delegates to ``method`` and remembers the state object ``fit`` made for it."""

    method: RegeneratedAT
    states: list[RegeneratedSet] = dataclasses.field(default_factory=list)

    def init_state(self, n: int, device: Any) -> RegeneratedSet:
        self.states.append(self.method.init_state(n, device))
        return self.states[-1]

    def on_epoch_start(self, *args: Any) -> None:
        self.method.on_epoch_start(*args)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> Any:
        return self.method(model, x, y, ctx=ctx)


@pytest.mark.parametrize(("fraction", "n"), [(0.3, 50), (0.25, 10), (1.0, 7), (0.01, 20)])
def test_stored_set_size_ball_and_box(fraction, n):
    data = _data(n)
    m = _regen(steps=3, subset_fraction=fraction, attack_batch_size=4)
    state = m.init_state(n, "cpu")
    assert state.generated_at is None and state.examples is None and state.index.numel() == 0
    m.on_epoch_start(0, _model(), data, torch.Generator().manual_seed(0), state)
    idx, adv = state.index, state.examples
    assert idx.numel() == max(1, round(fraction * n)) == adv.shape[0]
    assert idx.unique().numel() == idx.numel() and (idx >= 0).all() and (idx < n).all()
    delta = adv - data.images[idx]
    assert (perturbation_norm(delta, "linf") <= 0.1 + 1e-6).all()
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float(delta.abs().max()) > 0.05  # really attacked


def test_regenerated_only_every_n_epochs_with_fresh_subsets():
    data = _data(40)
    model = _model()
    m = _regen(steps=2, subset_fraction=0.5, regenerate_every=3)
    state = m.init_state(40, "cpu")
    g = torch.Generator().manual_seed(0)
    snapshots = []
    for epoch in range(7):
        m.on_epoch_start(epoch, model, data, g, state)
        snapshots.append((state.generated_at, state.index.clone(), state.examples.clone()))
    assert [s[0] for s in snapshots] == [0, 0, 0, 3, 3, 3, 6]
    for a, b in [(0, 1), (0, 2), (3, 4), (3, 5)]:
        assert torch.equal(snapshots[a][1], snapshots[b][1])
        assert torch.equal(snapshots[a][2], snapshots[b][2])
    assert not torch.equal(snapshots[0][1], snapshots[3][1])  # a new D' each time
    assert not torch.equal(snapshots[3][1], snapshots[6][1])


def test_batch_is_clean_points_plus_their_stored_adversarial_versions():
    data = _data(30)
    inner = _model()
    m = _regen(steps=2, subset_fraction=0.4)
    state = m.init_state(30, "cpu")
    m.on_epoch_start(0, inner, data, torch.Generator().manual_seed(0), state)
    stored = set(state.index.tolist())
    index = torch.tensor([0, 3, 5, 8, 13, 21, 29, 17])
    with_adv = [i for i in index.tolist() if i in stored]
    assert 0 < len(with_adv) < len(index)
    rec = _Recorder(inner)
    x, y = data.images[index], data.labels[index]
    out = m(rec, x, y, ctx=_ctx(index, state))
    (batch,) = rec.seen
    pos = {i: k for k, i in enumerate(state.index.tolist())}
    want_adv = torch.stack([state.examples[pos[i]] for i in with_adv])
    assert torch.equal(batch, torch.cat([x, want_adv]))
    ys = torch.cat([y, data.labels[torch.tensor(with_adv)]])
    torch.testing.assert_close(out.loss, F.cross_entropy(inner(batch), ys))
    assert out.logs["adv_frac"] == pytest.approx(len(with_adv) / (len(index) + len(with_adv)))
    # keep_clean=False: D_adv ∪ (D \ D'), each point once, adversarial where stored; the
    # same state object serves the replaced method
    m2 = dataclasses.replace(m, keep_clean=False)
    rec2 = _Recorder(inner)
    m2(rec2, x, y, ctx=_ctx(index, state))
    keep = torch.tensor([i not in stored for i in index.tolist()])
    assert torch.equal(rec2.seen[0], torch.cat([x[keep], want_adv]))


def test_an_epoch_sees_every_clean_and_every_stored_example_once():
    data = _data(24)
    inner = _model()
    m = _regen(steps=2, subset_fraction=0.5)
    state = m.init_state(24, "cpu")
    m.on_epoch_start(0, inner, data, torch.Generator().manual_seed(0), state)
    rec = _Recorder(inner)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    for step in range(3):
        idx = order[step * 8 : (step + 1) * 8]
        m(rec, data.images[idx], data.labels[idx], ctx=_ctx(idx, state))
    seen = torch.cat(rec.seen).flatten(1)
    everything = torch.cat([data.images, state.examples]).flatten(1)
    assert seen.shape[0] == 24 + 12
    # every row of ``everything`` appears in ``seen`` exactly once
    matches = (seen[:, None, :] == everything[None, :, :]).all(-1)
    assert torch.equal(matches.sum(0), torch.ones(36, dtype=torch.long))


def test_before_any_generation_it_is_clean_training():
    data = _data(10)
    model = _model()
    m = RegeneratedAT()
    state = m.init_state(10, "cpu")
    out = m(model, data.images, data.labels, ctx=_ctx(torch.arange(10), state))
    torch.testing.assert_close(out.loss, F.cross_entropy(model(data.images), data.labels))
    assert out.logs["adv_frac"] == 0.0


def test_state_round_trip_and_resume_through_fit(tmp_path):
    data = _data(64)
    m = _regen(steps=2, subset_fraction=0.25)
    state = m.init_state(64, "cpu")
    m.on_epoch_start(0, _model(), data, torch.Generator().manual_seed(0), state)
    split = split_state(state.state_dict())
    other = _regen(steps=2, subset_fraction=0.25).init_state(64, "cpu")
    other.load_state_dict(join_state(split.skeleton, split.tensors))
    assert torch.equal(other.index, state.index)
    assert torch.equal(other.examples, state.examples) and other.generated_at == 0
    # "no regeneration yet" is None, saved as null; checkpoints that wrote -1 load too
    empty = RegeneratedAT().init_state(64, "cpu")
    assert empty.state_dict()["epoch"] is None
    for saved_epoch in (None, -1):
        again = RegeneratedAT().init_state(64, "cpu")
        again.load_state_dict({**empty.state_dict(), "epoch": saved_epoch})
        assert again.generated_at is None and again.examples is None
    with pytest.raises(ValueError, match="64 training points"):
        RegeneratedAT().init_state(65, "cpu").load_state_dict(state.state_dict())
    # through fit: every 2 epochs; the checkpoint of epoch 2 holds epoch 0's D_adv
    model = _model()
    method = _KeepsState(_regen(steps=2, subset_fraction=0.25, regenerate_every=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = fit(model, method, data, opt, epochs=2, batch_size=16, run_dir=tmp_path,
               evaluate=per_epoch_evaluation(EvalPlan(n_test=16), data))
    (kept,) = method.states
    saved = load_train_state(checkpoint_dir(tmp_path, "last"))["method"]
    assert saved["epoch"] == 0 and torch.equal(saved["index"], kept.index)
    assert torch.equal(saved["x_adv"], kept.examples)
    assert all(0 < e["train_adv_frac"] < 0.5 for e in hist.epochs)
    # resuming restores the stored set exactly, then epoch 3 (0-based 2) regenerates
    resumed = _KeepsState(_regen(steps=2, subset_fraction=0.25, regenerate_every=2))
    fit(model, resumed, data, opt, epochs=2, batch_size=16, run_dir=tmp_path)  # nothing left
    assert torch.equal(resumed.states[0].index, kept.index)
    assert torch.equal(resumed.states[0].examples, kept.examples)
    assert resumed.states[0].generated_at == 0
    again = _KeepsState(_regen(steps=2, subset_fraction=0.25, regenerate_every=2))
    fit(model, again, data, opt, epochs=3, batch_size=16, run_dir=tmp_path)
    assert again.states[0].generated_at == 2


def test_resume_through_fit_continues_exactly(tmp_path):
    """1 epoch, stop, resume to 3 == 3 epochs in one go (the stored set spans the stop)."""
    data = _data(48)

    def run(out, epochs_then):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        method = _KeepsState(_regen(steps=2, subset_fraction=0.5, regenerate_every=2))
        for epochs in epochs_then:
            fit(model, method, data, opt, epochs=epochs, batch_size=16, run_dir=out)
        return model, method.states[-1]

    full_model, full = run(tmp_path / "full", [3])
    part_model, part = run(tmp_path / "part", [1, 3])
    assert full.generated_at == part.generated_at == 2
    assert torch.equal(full.index, part.index) and torch.equal(full.examples, part.examples)
    for p, q in zip(full_model.parameters(), part_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_options_are_validated_and_state_and_ctx_are_required():
    with pytest.raises(ValueError, match="subset_fraction"):
        RegeneratedAT(subset_fraction=0.0)
    with pytest.raises(ValueError, match="subset_fraction"):
        RegeneratedAT(subset_fraction=1.5)
    with pytest.raises(ValueError, match="regenerate_every"):
        RegeneratedAT(regenerate_every=0)
    with pytest.raises(ValueError, match="valid choices"):
        RegeneratedAT(threat={"norm": "l0"})
    with pytest.raises(ValueError, match="eps"):
        RegeneratedAT(threat={"eps": 1.5})
    with pytest.raises(ValueError, match="eps must be > 0"):
        RegeneratedAT(threat={"eps": 0.0})
    assert isinstance(build_method("regenerate", subset_fraction=0.2), RegeneratedAT)
    data = _data(10)
    m = _regen(subset_fraction=0.5, steps=1)
    with pytest.raises(ValueError, match="init_state"):
        m.on_epoch_start(0, _model(), data, None, None)
    state = m.init_state(10, "cpu")
    m.on_epoch_start(0, _model(), data, None, state)
    with pytest.raises(ValueError, match="ctx.index"):
        m(_model(), data.images, data.labels, ctx=StepContext(state=state))
    with pytest.raises(ValueError, match="init_state"):
        m(_model(), data.images, data.labels)
    with pytest.raises(ValueError, match="train_data has 10 points"):
        m.on_epoch_start(0, _model(), data, None, m.init_state(11))


def test_mode_restored_and_grads_reach_params():
    data = _data(16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(16, 3)).train()
    m = _regen(steps=2, subset_fraction=0.5)
    state = m.init_state(16, "cpu")
    m.on_epoch_start(0, model, data, torch.Generator().manual_seed(0), state)
    assert all(mod.training for mod in model.modules())
    assert all(p.grad is None for p in model.parameters())
    out = m(model, data.images, data.labels, ctx=_ctx(torch.arange(16), state))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
