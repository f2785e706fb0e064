"""The HGD denoiser ``GuidedDenoiser`` (Liao et al. 2018, arXiv 1712.02976): an untrained
one is exactly the identity, it keeps shapes (odd ones too), its output stays in [0, 1]
with the declared clamp gradient, and bad options or inputs raise ``InputError``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Defended, Preprocessor
from bastion.preprocess.hgd import GuidedDenoiser


def _randomised(den: GuidedDenoiser, seed: int = 0, scale: float = 0.1) -> GuidedDenoiser:
    """``den`` with a random (non-zero) last layer, so that ``d(x) != 0``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        den.head.weight.copy_(scale * torch.randn(den.head.weight.shape, generator=g))
        den.head.bias.copy_(scale * torch.randn(den.head.bias.shape, generator=g))
    return den


@pytest.mark.parametrize(("channels", "size", "depth"), [
    (1, (28, 28), 2), (3, (32, 32), 2), (1, (32, 32), 3), (3, (28, 28), 2),
    (1, (27, 29), 2), (3, (31, 30), 3), (1, (8, 8), 2), (1, (1, 1), 2),
])
def test_untrained_denoiser_is_exactly_the_identity(channels, size, depth):
    torch.manual_seed(0)
    den = GuidedDenoiser(in_channels=channels, width=8, depth=depth)
    x = torch.rand(3, channels, *size, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, 0], x[0, 0, -1, -1] = 0.0, 1.0  # the box edges too
    for mode in (True, False):
        den.train(mode)
        out = den(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(out, x)
    assert torch.equal(den.perturbation(x), torch.zeros_like(x))


@pytest.mark.parametrize(("channels", "size", "depth"), [
    (1, (28, 28), 2), (3, (32, 32), 2), (1, (27, 29), 2), (3, (31, 30), 3), (1, (28, 28), 3),
])
def test_trained_shapes_and_range(channels, size, depth):
    torch.manual_seed(0)
    den = _randomised(GuidedDenoiser(in_channels=channels, width=8, depth=depth), scale=1.0)
    x = torch.rand(2, channels, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = den(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # padding to a multiple of 2**depth is cropped back, never leaks into the output
    with torch.no_grad():
        assert den.perturbation(x).shape == x.shape


def test_default_options_are_the_documented_ones():
    den = GuidedDenoiser()
    assert den.config() == {"in_channels": 1, "width": 32, "depth": 2, "batch_norm": True,
                             "clamp_gradient": "straight-through"}
    assert den.declaration() == {"randomized": False, "differentiable": True, "costly": False}
    assert isinstance(den, Preprocessor)
    # level widths 32, 64, 128; the head maps 32 channels to the image's
    assert den.encoder[-1][0].out_channels == 128 and den.head.in_channels == 32
    assert bool((den.head.weight == 0).all()) and bool((den.head.bias == 0).all())
    assert GuidedDenoiser(**den.config()).config() == den.config()
    GuidedDenoiser(**GuidedDenoiser.contract_kwargs)(torch.rand(4, 1, 8, 8))


def test_straight_through_clamp_passes_gradients_the_exact_one_does_not():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for mode, expected in (("straight-through", -x.numel()), ("exact", 0.0)):
        torch.manual_seed(0)
        den = GuidedDenoiser(width=4, clamp_gradient=mode).eval()
        with torch.no_grad():
            den.head.bias.fill_(-2.0)  # d(x) = -2: x - d(x) = x + 2, clamped to 1
        out = den(x)
        assert torch.equal(out, torch.ones_like(x))
        out.sum().backward()
        # d(out)/d(bias) = -1 per pixel through the identity backward, 0 through clamp's
        assert float(den.head.bias.grad.sum()) == pytest.approx(expected)
    x.requires_grad_(True)
    den.clamp_gradient = "straight-through"
    den(x).sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))  # d(x) is constant: gradient 1


def test_gradients_reach_every_denoiser_layer_once_trained():
    torch.manual_seed(0)
    den = _randomised(GuidedDenoiser(width=4, depth=2))
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    (den(x) - 0.5).abs().sum().backward()
    missing = [n for n, p in den.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_only_the_zero_head_gets_a_gradient_at_initialisation():
    """The zero head is the only layer with a non-zero gradient at step 0."""
    torch.manual_seed(0)
    den = GuidedDenoiser(width=4)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ((den(x) - 0.5) ** 2).sum().backward()
    assert den.head.weight.grad.abs().sum() > 0
    assert den.encoder[0][0].weight.grad.abs().sum() == 0


def test_defended_composes_and_bf16_autocast_keeps_the_identity():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    defended = Defended(GuidedDenoiser(width=4), clf, frozen_model=True).eval()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(defended(x), clf(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = defended.preprocessor(x)
    assert out.dtype == torch.float32 and torch.equal(out, x)
    cl = defended.preprocessor(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(cl, x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"in_channels": 0}, "in_channels"),
    ({"width": 0}, "width"),
    ({"depth": 0}, "depth"),
    ({"depth": 7}, "depth"),
    ({"clamp_gradient": "soft"}, "valid choices: exact, straight-through"),
])
def test_bad_options_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        GuidedDenoiser(**kwargs)


def test_bad_option_types_and_inputs():
    with pytest.raises(InputTypeError, match="width"):
        GuidedDenoiser(width=2.5)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="batch_norm"):
        GuidedDenoiser(batch_norm="yes")  # type: ignore[arg-type]
    den = GuidedDenoiser(in_channels=3, width=4)
    with pytest.raises(InputError, match=r"in_channels=3.*\(2, 1, 8, 8\)"):
        den(torch.rand(2, 1, 8, 8))
    with pytest.raises(InputError, match="shape"):
        den(torch.rand(3, 8, 8))
