"""Vote counting over a randomisation: the noise stream, counts and a custom randomisation."""

from __future__ import annotations

import torch
from torch import nn

from bastion.certify.votes import NOISE_BLOCK, AdditiveNoise, Randomization, VoteCounter
from bastion.noise import Gaussian, Laplace, Uniform


class _FirstPixel(nn.Module):
    """Logits (x_0 - 0.5, 0): class 0 iff the first pixel exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, 0] - 0.5
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def test_additive_noise_draws_are_the_noise_samples_plus_the_input() -> None:
    x = torch.rand(1, 3, 4)
    for noise in (Gaussian(sigma=0.3), Laplace(lam=0.2), Uniform(lam=0.4)):
        rand = AdditiveNoise(noise)
        assert isinstance(rand, Randomization)
        got = rand.draw(x, 7, torch.Generator().manual_seed(3))
        want = noise.sample((7, 1, 3, 4), torch.Generator().manual_seed(3), "cpu",
                            torch.float32) + x
        assert torch.equal(got, want) and got.dtype == x.dtype
        assert rand.params() == noise.params()


def test_counts_do_not_depend_on_the_forward_batch_size() -> None:
    model = _FirstPixel()
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    num = 2 * NOISE_BLOCK + 17  # several blocks per input, the last one short
    results = []
    for bs in (5, 256, 10_000):
        counter = VoteCounter(model, AdditiveNoise(Gaussian(sigma=0.25)), 2,
                              memory_format="contiguous", batch_size=bs, precision="fp32")
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        counts = counter.counts(x, gens, num)
        assert counts.dtype == torch.int64 and counts.shape == (3, 2)
        assert (counts.sum(1) == num).all() and counter.forward_passes == 3 * num
        results.append(counts)
    assert all(torch.equal(r, results[0]) for r in results)
    # by hand: the same blocks drawn directly
    g = torch.Generator().manual_seed(10)
    first = torch.cat([Gaussian(sigma=0.25).sample((m, 1, 2, 2), g) + x[0]
                       for m in (NOISE_BLOCK, NOISE_BLOCK, 17)])
    assert int(results[0][0, 0]) == int((first.flatten(1)[:, 0] > 0.5).sum())
    empty = VoteCounter(model, AdditiveNoise(Gaussian()), 2, memory_format="contiguous",
                        batch_size=8, precision="fp32").counts(x, gens, 0)
    assert torch.equal(empty, torch.zeros(3, 2, dtype=torch.int64))


class _Ablate:
    """A non-additive randomisation: keep each pixel with probability 1/2, else 0."""

    def draw(self, x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
        keep = torch.rand((m, *x.shape), generator=generator) < 0.5
        return x * keep

    def params(self) -> dict[str, float]:
        return {"keep": 0.5}


def test_a_custom_randomization_plugs_in() -> None:
    assert isinstance(_Ablate(), Randomization)
    x = torch.ones(2, 1, 1, 1)
    counter = VoteCounter(_FirstPixel(), _Ablate(), 2, memory_format="contiguous",
                          batch_size=64, precision="fp32")
    counts = counter.counts(x, [torch.Generator().manual_seed(i) for i in range(2)], 4000)
    frac = counts[:, 0].double() / 4000  # class 0 iff the pixel was kept
    assert ((frac - 0.5).abs() < 0.05).all()
