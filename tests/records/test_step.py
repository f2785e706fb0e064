"""StepOutput / StepContext: what a training method returns and receives."""

from __future__ import annotations

import pytest
import torch

from bastion.records import StepContext, StepOutput


def test_step_output_validation():
    out = StepOutput(loss=torch.tensor(1.5), logs={"acc": torch.tensor(0.5), "n": 3.0})
    assert float(out.loss) == 1.5 and set(out.logs) == {"acc", "n"}
    with pytest.raises(ValueError, match="scalar tensor"):
        StepOutput(loss=torch.ones(2))
    with pytest.raises(ValueError, match="scalar tensor"):
        StepOutput(loss=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be strings"):
        StepOutput(loss=torch.tensor(1.0), logs={1: 0.5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"logs\['acc'\] must be a scalar"):
        StepOutput(loss=torch.tensor(1.0), logs={"acc": torch.ones(3)})
    with pytest.raises(TypeError, match=r"logs\['acc'\] must be a scalar"):
        StepOutput(loss=torch.tensor(1.0), logs={"acc": "high"})  # type: ignore[dict-item]


def test_step_context_defaults():
    ctx = StepContext()
    assert (ctx.epoch, ctx.step, ctx.epochs, ctx.index, ctx.state) == (0, 0, 1, None, None)


@pytest.mark.parametrize("name", ["clean_acc", "robust_acc"])
def test_reserved_log_names_are_refused(name: str) -> None:
    """A batch log 'clean_acc' would land on 'train_clean_acc', the measured accuracy."""
    with pytest.raises(ValueError, match="reserved"):
        StepOutput(torch.tensor(1.0), {name: 0.5})
