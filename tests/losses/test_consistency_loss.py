"""Jensen-Shannon consistency term: zero, symmetry, scipy, temperature, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from bastion.losses import js_divergence


def _logits(seed: int, n: int = 6, k: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, k, generator=g, dtype=torch.float64)


def test_zero_for_identical_inputs() -> None:
    z = _logits(0)
    assert float(js_divergence(z, z)) == pytest.approx(0.0, abs=1e-15)
    assert float(js_divergence(z, z + 7.0, tau=0.5)) == pytest.approx(0.0, abs=1e-14)


def test_symmetric_and_bounded() -> None:
    p, q = _logits(1), _logits(2)
    per = js_divergence(p, q, reduction="none")
    torch.testing.assert_close(per, js_divergence(q, p, reduction="none"))
    assert ((per > 0) & (per <= math.log(2))).all()
    hard = torch.tensor([[50.0, 0.0], [0.0, 50.0]], dtype=torch.float64)
    assert float(js_divergence(hard, hard.flip(1))) == pytest.approx(math.log(2), abs=1e-12)


def test_equals_scipy_jensenshannon_squared() -> None:
    # scipy returns the JS *distance* sqrt(JS), natural log by default
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q = rng.dirichlet(np.ones(7), size=4), rng.dirichlet(np.ones(7), size=4)
        got = js_divergence(torch.tensor(np.log(p)), torch.tensor(np.log(q)), reduction="none")
        expected = [jensenshannon(pi, qi) ** 2 for pi, qi in zip(p, q, strict=True)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert float(js_divergence(torch.tensor(np.log(p)), torch.tensor(np.log(q)))) == \
        pytest.approx(float(np.mean(expected)), rel=1e-10)


def test_temperature_scales_logits() -> None:
    p, q = _logits(3), _logits(4)
    torch.testing.assert_close(js_divergence(p, q, tau=0.5), js_divergence(p / 0.5, q / 0.5))


def test_matches_reference_code() -> None:
    # alinlab/consistency-adversarial training/__init__.py: _jensen_shannon_div
    p_logits, q_logits, t = _logits(5), _logits(6), 0.5
    p, q = F.softmax(p_logits / t, 1), F.softmax(q_logits / t, 1)
    log_m = torch.log((0.5 * (p + q)).clamp(min=1e-8))
    ref = 0.5 * (F.kl_div(log_m, p, reduction="batchmean")
                 + F.kl_div(log_m, q, reduction="batchmean"))
    assert float(js_divergence(p_logits, q_logits, t)) == pytest.approx(float(ref), rel=1e-6)


def test_gradcheck() -> None:
    p, q = _logits(7, n=3).requires_grad_(True), _logits(8, n=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: js_divergence(a, b, tau=0.5), (p, q))


def test_errors() -> None:
    with pytest.raises(ValueError, match="tau"):
        js_divergence(_logits(0), _logits(1), tau=0.0)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        js_divergence(_logits(0, k=3), _logits(1, k=4))
    with pytest.raises(ValueError, match="reduction"):
        js_divergence(_logits(0), _logits(1), reduction="sum")  # type: ignore[arg-type]
