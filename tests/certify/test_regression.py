"""The certification pipeline reproduces, line for line, rows made before its refactoring.

The fixtures in ``tests/certify/data`` (see its README) were written by ``certify_dataset``
at commit bb9d346, before certification was made generic over certifiers. Re-certifying
with today's pipeline must give the same header line and the same rows, except the
``seconds`` value (wall time).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bastion.certify.registry import certify_smoothing
from bastion.data import load_dataset
from bastion.models import build
from bastion.noise import Gaussian, Laplace, Uniform

DATA = Path(__file__).parent / "data"
CASES = {
    "gaussian": dict(noise=Gaussian(sigma=0.25)),
    "gaussian-2class": dict(noise=Gaussian(sigma=0.25), two_class=True),
    "laplace": dict(noise=Laplace(lam=0.2)),
    "uniform-linf": dict(noise=Uniform(lam=0.3, norm="linf")),
    "sequential": dict(noise=Gaussian(sigma=0.25), radius=0.3),
}
SECONDS = re.compile(r', "seconds": [0-9.e+-]+\}$')


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
    model.load_state_dict(load_file(DATA / "regression_mlp.safetensors"))
    test = load_dataset("digits", "test")
    return model.eval(), test.images[:60], test.labels[:60]


def _strip(line: str) -> str:
    stripped, count = SECONDS.subn("}", line)
    assert count == 1, line  # every row ends with its seconds field
    return stripped


@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_match_the_stored_ones(setup, tmp_path: Path, name: str) -> None:
    model, x, y = setup
    kw = dict(CASES[name])
    out = tmp_path / f"{name}.jsonl"
    certify_smoothing(model, x, y, kw.pop("noise"), out_path=out, n0=32, n=2000, alpha=0.01,
                      skip=3, max_inputs=20, seed=11, batch_size=256,
                      memory_format="contiguous", num_classes=10, **kw)
    stored = (DATA / f"regression_{name}.jsonl").read_text().splitlines()
    new = out.read_text().splitlines()
    assert len(new) == len(stored) == 21
    assert new[0] == stored[0]  # header line, byte for byte
    for got, want in zip(new[1:], stored[1:], strict=True):
        assert _strip(got) == _strip(want)
