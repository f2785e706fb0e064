"""Contract of every registered training method (``bastion.train.registry.METHODS``).

Parametrised over the registry at collection time: a method added to ``METHODS`` is
covered here without a new test. Each method is built with its defaults (plus an entry of
``OVERRIDES`` where a default cannot work on the tiny model), given the tiny fitted
classifier (or, for a method that trains something else, the model of its ``MODELS``
entry: HGD's denoiser in front of that classifier) and driven exactly as
``train.loop.fit`` drives it: ``init_state(dataset_size, device)`` if it has one,
``on_epoch_start(epoch, model, train_data, generator, state)`` if it has one, then
``method(model, x, y, ctx=StepContext(...))`` with the state as ``ctx.state``.

The contract (``train/loop.py``, ``records/step.py``): the loss is a finite scalar with a
graph to the parameters; the method calls no ``backward``/``step`` itself (no ``.grad``
left on parameters, parameters unchanged), does not modify the batch in place, restores
every sub-module's train/eval flag, draws its random numbers from ``ctx.generator`` only
(the global RNG is untouched, same seed gives the same loss), logs detached scalars, and
keeps its mutable state in the state object (the frozen method dataclass does not change;
the state survives ``state_dict`` -> checkpoint format -> ``load_state_dict`` exactly).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bastion.attacks.pgd import ATTACK_NORMS
from bastion.records import StepContext, StepOutput
from bastion.train.checkpoint import checkpoint_dir, load_train_state, save_checkpoint
from bastion.train.registry import METHODS, build_method
from tests.contracts._tiny import (
    TensorData,
    fitted_model,
    grads_left,
    mode_flags,
    same_structure,
    tiny_data,
)

# Options for methods whose defaults cannot work on the tiny model (8x8, 4 classes,
# batch 4). Keep this empty unless a default is impossible there; never add an entry
# only to make a test faster.
OVERRIDES: dict[str, dict[str, Any]] = {}


def _hgd_model() -> torch.nn.Module:
    """HGD trains a denoiser in front of a fixed classifier, so it needs a ``Defended``:
    the contract's fitted classifier (frozen, all eval) behind a small ``GuidedDenoiser``
    (its ``contract_kwargs``, in train mode). The denoiser's weights come from a fixed seed
    without touching the caller's global RNG state."""
    from bastion.preprocess.base import Defended
    from bastion.preprocess.hgd import GuidedDenoiser

    classifier = fitted_model()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        denoiser = GuidedDenoiser(**GuidedDenoiser.contract_kwargs)
    return Defended(denoiser, classifier, frozen_model=True)


def _lipschitz_model() -> torch.nn.Module:
    """GloRo bounds the network it trains as a chain of layers of known constant, which
    the generic model (train-mode BatchNorm, average pooling) is not: a small
    spectrally normalised ``lipschitz-cnn`` for the tiny data, in train mode, with a fixed
    seed that leaves the caller's global RNG alone."""
    from bastion.models import build
    from tests.contracts._tiny import NUM_CLASSES, SHAPE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build("lipschitz-cnn", num_classes=NUM_CLASSES, in_channels=SHAPE[0],
                      input_size=SHAPE[1:], mean=(0.5,), std=(0.25,), channels=(4, 8),
                      hidden=(8,), constraint="spectral")
    return model.train()


def _subsample_model() -> torch.nn.Module:
    """Sub-sampling training feeds kept values plus a keep-mask channel
    (``models.ablation``), which the generic model's first layer refuses."""
    from tests.contracts._tiny import NUM_CLASSES, SHAPE, tiny_subsampling_model

    return tiny_subsampling_model(SHAPE[0], SHAPE[1:], NUM_CLASSES)


# Methods that cannot train the generic ``fitted_model`` and the model each is driven with
# instead (built the same way on every call). Add an entry only for a method whose model
# must have another structure (a defense in front of a classifier), never to make a test
# pass or run faster; the contract itself is the same.
MODELS: dict[str, Callable[[], torch.nn.Module]] = {"hgd": _hgd_model, "gloro": _lipschitz_model,
                                                   "subsample": _subsample_model}


def _model(name: str) -> torch.nn.Module:
    return MODELS.get(name, fitted_model)()


BATCH = 4
DEVICE = torch.device("cpu")
NAMES = sorted(METHODS)


def _threat_variants(name: str) -> list[dict[str, Any]]:
    """A method that attacks (a ``threat`` field) is also run in every other attack norm."""
    fields = {f.name: f for f in dataclasses.fields(METHODS[name])}
    if "threat" not in fields:
        return []
    default = fields["threat"].default
    return [{"threat": {"norm": n}} for n in ATTACK_NORMS if n != getattr(default, "norm", n)]


CASES = [
    pytest.param(name, variant, id=name + "".join(f"-{v['norm']}" for v in variant.values()))
    for name in NAMES for variant in [{}, *_threat_variants(name)]
]


def _build(name: str, variant: dict[str, Any] | None = None) -> Any:
    opts = {**OVERRIDES.get(name, {}), **(variant or {})}
    try:
        return build_method(name, **opts)
    except Exception as err:  # pragma: no cover - the message is the point
        raise AssertionError(
            f"method {name!r} cannot be built with its defaults + {opts}: "
            f"{type(err).__name__}: {err}. Give it defaults that work on any model, or add "
            "an entry to OVERRIDES in tests/contracts/test_method_contracts.py"
        ) from err


def _start(method: Any, model: torch.nn.Module, data: TensorData,
           generator: torch.Generator) -> Any:
    """What ``fit`` does before the first step: the state, then ``on_epoch_start(0)``."""
    state = method.init_state(len(data), DEVICE) if hasattr(method, "init_state") else None
    if hasattr(method, "on_epoch_start"):
        method.on_epoch_start(0, model, data, generator, state)
    return state


def _batch(data: TensorData, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.arange(step * BATCH, (step + 1) * BATCH) % len(data)
    return data.images[idx].clone(), data.labels[idx].clone(), idx


def _step(method: Any, model: torch.nn.Module, data: TensorData, generator: torch.Generator,
          state: Any, step: int = 0) -> StepOutput:
    x, y, idx = _batch(data, step)
    ctx = StepContext(epoch=0, step=step, index=idx, generator=generator, epochs=1,
                      state=state)
    return method(model, x, y, ctx=ctx)


def _log_value(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        assert v.dim() == 0, f"log is not a scalar: shape {tuple(v.shape)}"
        assert not v.requires_grad, "log tensor is not detached"
        return float(v)
    assert isinstance(v, int | float) and not isinstance(v, bool), f"log of type {type(v)}"
    return float(v)


@pytest.mark.parametrize("name", NAMES)
def test_builds_as_a_frozen_dataclass(name):
    method = _build(name)
    assert dataclasses.is_dataclass(method) and not isinstance(method, type)
    assert type(method).__dataclass_params__.frozen, f"{name}: method dataclass is not frozen"
    assert callable(method)
    # ``dataclasses.replace`` (used by configs and sweeps) must give an equal method.
    assert dataclasses.replace(method) == method


@pytest.mark.parametrize("name", NAMES)
def test_config_form_round_trips(name):
    """What a run config stores (``canonical_method_options``, JSON-safe) rebuilds the same
    method, so a resumed run trains with exactly the settings it started with."""
    from bastion.train.registry import canonical_method_options

    opts = OVERRIDES.get(name, {})
    stored = json.loads(json.dumps(canonical_method_options(name, opts)))
    assert build_method(name, **stored) == _build(name)
    assert canonical_method_options(name, stored) == stored


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_one_step_obeys_the_loop_contract(name, variant):
    method = _build(name, variant)
    model = _model(name)
    data = tiny_data()
    generator = torch.Generator().manual_seed(0)
    flags = mode_flags(model)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    rng = torch.get_rng_state()

    state = _start(method, model, data, generator)
    assert mode_flags(model) == flags, f"{name}.on_epoch_start changed module modes"
    assert grads_left(model) == [], f"{name}.on_epoch_start left .grad on parameters"

    x, y, idx = _batch(data, 0)
    x_before, y_before = x.clone(), y.clone()
    ctx = StepContext(epoch=0, step=0, index=idx, generator=generator, epochs=1, state=state)
    out = method(model, x, y, ctx=ctx)

    assert isinstance(out, StepOutput)
    loss = out.loss
    assert loss.dim() == 0 and loss.is_floating_point()
    assert torch.isfinite(loss), f"{name}: non-finite loss {loss}"
    assert loss.requires_grad and loss.grad_fn is not None, f"{name}: loss has no graph"
    changed = [n for n, m in model.named_modules() if m.training != flags[n]]
    assert not changed, f"{name}: modes of {changed} not restored after the step"
    assert grads_left(model) == [], f"{name}: left .grad on {grads_left(model)}"
    moved = [k for k, p in model.named_parameters() if not torch.equal(p, params[k])]
    assert not moved, f"{name}: parameters {moved} changed during the step"
    assert torch.equal(x, x_before) and torch.equal(y, y_before), f"{name}: batch modified"
    assert x.grad is None and not x.requires_grad
    assert torch.equal(torch.get_rng_state(), rng), (
        f"{name}: drew from the global RNG instead of ctx.generator"
    )
    for k, v in out.logs.items():
        assert math.isfinite(_log_value(v)), f"{name}: log {k!r} is not finite"

    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads, f"{name}: backward put no gradient on any parameter"
    bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{name}: non-finite gradients on {bad}"
    assert any(bool(g.abs().sum() > 0) for g in grads.values()), f"{name}: all gradients 0"
    assert x.grad is None


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_method_object_does_not_change(name, variant):
    """Mutable state lives in ``init_state``'s object, not in the frozen method."""
    method = _build(name, variant)
    before = copy.deepcopy(vars(method))
    model, data = _model(name), tiny_data()
    generator = torch.Generator().manual_seed(0)
    state = _start(method, model, data, generator)
    _step(method, model, data, generator, state)
    assert same_structure(vars(method), before), (
        f"{name}: calling the method changed its own attributes (keep state in init_state)"
    )


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_same_seed_same_step_and_state_survives_a_checkpoint(name, variant, tmp_path):
    """Exact resume: a step is a function of (model, batch, generator, state).

    Two identically seeded runs take the same first epoch (three steps over the twelve
    points). One run's state then goes through ``state_dict``, a real checkpoint
    (``train.checkpoint.save_checkpoint`` / ``load_train_state``, as ``fit`` saves it) and
    ``load_state_dict`` of a fresh method's fresh ``init_state``; the next step, which
    revisits the first batch, is bit-identical from both.
    """
    data = tiny_data()
    runs = []
    for _ in range(2):
        method, model = _build(name, variant), _model(name)
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(123)
        state = _start(method, model, data, generator)
        outs = [_step(method, model, data, generator, state, step=s) for s in range(3)]
        runs.append((method, model, generator, state, outs))
    (m_a, model_a, gen_a, state_a, outs_a), (_, _, _, _, outs_b) = runs
    for out_a, out_b in zip(outs_a, outs_b, strict=True):
        assert torch.equal(out_a.loss, out_b.loss), f"{name}: same seed, different loss"
        assert out_a.logs.keys() == out_b.logs.keys()
        for k in out_a.logs:
            a, b = _log_value(out_a.logs[k]), _log_value(out_b.logs[k])
            assert a == b or (math.isnan(a) and math.isnan(b)), f"{name}: log {k!r} differs"
    if state_a is None:
        return
    for attr in ("state_dict", "load_state_dict"):
        assert hasattr(state_a, attr), f"{name}: state object has no {attr}()"
    saved = state_a.state_dict()
    initial = _build(name, variant).init_state(len(data), DEVICE).state_dict()
    assert not same_structure(saved, initial), (
        f"{name}: the state did not change over an epoch, so this test cannot tell whether "
        "it is saved; make the tiny problem move it"
    )
    save_checkpoint(tmp_path, 1, model_a, {"method": saved}, is_best=False)
    loaded = load_train_state(checkpoint_dir(tmp_path, "last"))["method"]
    fresh_method = _build(name, variant)
    fresh = fresh_method.init_state(len(data), DEVICE)
    fresh.load_state_dict(loaded)
    model_b = copy.deepcopy(model_a)
    gen_b = torch.Generator().manual_seed(0)
    gen_b.set_state(gen_a.get_state())
    next_a = _step(m_a, model_a, data, gen_a, state_a, step=3)  # the first batch again
    next_b = _step(fresh_method, model_b, data, gen_b, fresh, step=3)
    assert torch.equal(next_a.loss, next_b.loss), (
        f"{name}: the step after a state_dict round trip differs (state not fully saved)"
    )
