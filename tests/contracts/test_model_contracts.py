"""Contract of every registered architecture (``bastion.models.registry.MODELS``).

Parametrised over the registry at collection time. For every architecture, built by
``models.build`` for a grey-scale and a colour dataset (one of them non-square): the first
layer is ``Normalize`` with the dataset's statistics, the output is ``[N, K]`` in train
and eval mode, and a save / load round trip is exact -- through safetensors into a freshly
built model (different initial weights), and through a run folder
(``train.checkpoint.save_checkpoint`` + ``runs.load_model``) -- with bit-identical outputs,
state and ``architecture_signature``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from bastion.models import (
    MODELS,
    Normalize,
    architecture_signature,
    build,
    check_state_dict_matches,
    dataset_stats,
)

NUM_CLASSES = 3
BATCH = 4
# Size options only, so that the default suite stays fast; the default sizes are
# exercised by the slow test at the end.
TINY: dict[str, dict[str, Any]] = {
    "preact-resnet18": {"width": 4},
    "wide-resnet": {"depth": 10, "widen_factor": 1},
}
CASES = [("fashion-mnist", 1, 28), ("cifar10", 3, (16, 20))]
NAMES = sorted(MODELS)


def _build(name: str, dataset: str, channels: int, size: Any, seed: int,
           **opts: Any) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    kwargs = {**TINY.get(name, {}), **opts}
    return build(name, num_classes=NUM_CLASSES, in_channels=channels, input_size=size,
                 dataset=dataset, **kwargs)


def _images(channels: int, size: Any, n: int = BATCH, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(seed))


def _as_if_trained(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Move every parameter and BatchNorm statistic away from its initial value.

    (Zero-initialised layers, e.g. small-cnn's last one, would otherwise make the
    outputs of two differently seeded models equal.)
    """
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.train()
        for _ in range(2):
            model(x)
    model.eval()


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"state {k} differs"


@pytest.mark.parametrize(("dataset", "channels", "size"), CASES)
@pytest.mark.parametrize("name", NAMES)
def test_normalize_first_and_logits_shape(name, dataset, channels, size):
    model = _build(name, dataset, channels, size, seed=0)
    first_name, first = next(iter(model.named_children()))
    assert isinstance(first, Normalize), f"{name}: first layer is {type(first).__name__}"
    assert first_name == "normalize"
    stats = dataset_stats(dataset)  # a (mean, std) pair, or a record with .mean / .std
    mean, std = (stats.mean, stats.std) if hasattr(stats, "mean") else stats
    torch.testing.assert_close(first.mean.flatten(), torch.tensor(mean), rtol=0, atol=0)
    torch.testing.assert_close(first.std.flatten(), torch.tensor(std), rtol=0, atol=0)
    assert first.num_channels == channels
    # Nothing before the Normalize layer: the very first module to see the input is it.
    seen: list[torch.nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(m))
             for m in model.modules() if not list(m.children())]
    x = _images(channels, size)
    try:
        for mode in (True, False):
            model.train(mode)
            out = model(x)
            assert out.shape == (BATCH, NUM_CLASSES), f"{name}: output {tuple(out.shape)}"
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
    finally:
        for h in hooks:
            h.remove()
    assert seen and seen[0] is first


@pytest.mark.parametrize(("dataset", "channels", "size"), CASES)
@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip_is_exact(name, dataset, channels, size, tmp_path):
    x = _images(channels, size)
    model = _build(name, dataset, channels, size, seed=0)
    _as_if_trained(model, _images(channels, size, n=8, seed=1))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))

    fresh = _build(name, dataset, channels, size, seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x)), "the round trip would prove nothing"
    loaded = load_file(str(path))
    check_state_dict_matches(fresh, loaded)
    fresh.load_state_dict(loaded)

    assert architecture_signature(fresh) == architecture_signature(model)
    _assert_same_state(fresh, model)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x)), f"{name}: outputs differ after loading"


@pytest.mark.parametrize("name", NAMES)
def test_run_folder_round_trip_is_exact(name, tmp_path):
    """``save_checkpoint`` + ``model.json`` + ``runs.load_model``, the user-facing path."""
    from bastion.runs import load_model
    from bastion.train.checkpoint import save_checkpoint

    dataset, channels, size = CASES[1]
    x = _images(channels, size)
    model = _build(name, dataset, channels, size, seed=0)
    _as_if_trained(model, _images(channels, size, n=8, seed=1))
    meta = {
        "architecture": name,
        "build": {"num_classes": NUM_CLASSES, "in_channels": channels,
                  "input_size": list(size), "dataset": dataset, **TINY.get(name, {})},
    }
    (tmp_path / "model.json").write_text(json.dumps(meta))
    save_checkpoint(tmp_path, 1, model, {"epoch": 1}, is_best=True)
    for which in ("last", "best"):
        loaded = load_model(tmp_path, which)
        assert not any(m.training for m in loaded.modules()), "load_model: not in eval mode"
        assert architecture_signature(loaded) == architecture_signature(model)
        _assert_same_state(loaded, model)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), f"{name}: outputs differ after load_model"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_size_round_trip_is_exact(name, tmp_path):
    dataset, channels, size = "cifar10", 3, 32
    torch.manual_seed(0)
    model = build(name, num_classes=10, in_channels=channels, input_size=size,
                  dataset=dataset)
    x = _images(channels, size, n=2)
    _as_if_trained(model, x)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    fresh = build(name, num_classes=10, in_channels=channels, input_size=size,
                  dataset=dataset).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    assert isinstance(fresh[0], Normalize)
    assert architecture_signature(fresh) == architecture_signature(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.equal(fresh(x), out)
