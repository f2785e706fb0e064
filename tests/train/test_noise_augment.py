"""Noise augmentation: the loss is CE at x + eta with eta drawn from the smoothing noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.noise import from_std
from bastion.records import StepContext
from bastion.train import GaussianNoise, NoiseAugmentation, build_method


@pytest.mark.parametrize("noise", ["gaussian", "laplace", "uniform"])
def test_loss_is_ce_at_the_noise_the_certifier_draws(noise, tiny_model, tiny_batch):
    x, y = tiny_batch
    method = NoiseAugmentation(sigma=0.3, noise=noise)
    out = method(tiny_model, x, y, ctx=StepContext(generator=torch.Generator().manual_seed(4)))
    eta = from_std(noise, 0.3).sample(x.shape, torch.Generator().manual_seed(4), x.device)
    expected = F.cross_entropy(tiny_model(x + eta), y)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in tiny_model.parameters())


def test_noise_has_the_requested_std():
    for noise in ("gaussian", "laplace", "uniform"):
        eta = from_std(noise, 0.25).sample((200_000,), torch.Generator().manual_seed(0))
        assert float(eta.std()) == pytest.approx(0.25, rel=0.02)


def test_registry_and_bad_options():
    assert isinstance(build_method("noise-augment", noise="laplace", sigma=0.1),
                      NoiseAugmentation)
    assert GaussianNoise(sigma=0.1).noise == "gaussian"
    with pytest.raises(ValueError, match="valid choices: gaussian, laplace, uniform"):
        NoiseAugmentation(noise="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma must be > 0"):
        NoiseAugmentation(sigma=0.0)


def test_model_not_put_in_eval(tiny_batch):
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(108, 5)).train()
    x, y = tiny_batch
    NoiseAugmentation(sigma=0.1)(model, x, y)
    assert model.training
