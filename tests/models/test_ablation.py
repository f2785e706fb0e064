"""Sub-sampled inputs (``models.ablation``), the mask-aware Normalize and ``mm-small-cnn``."""

from __future__ import annotations

import pytest
import torch

from bastion.errors import InputError
from bastion.models import Normalize
from bastion.models.ablation import ModalityLayout, ablate, draw_keep_masks, layout_of
from bastion.models.multimodal_cnn import MultiModalCNN
from bastion.models.registry import build
from bastion.models.small_cnn import SmallCNN


def test_masks_keep_exactly_k_uniformly_and_independently():
    layout = ModalityLayout((1, 2))
    g = torch.Generator().manual_seed(0)
    masks = draw_keep_masks(4000, layout, (3, 4), (2, 5), g)
    assert masks.shape == (4000, 2, 3, 4) and masks.dtype == torch.bool
    kept = masks.flatten(2).sum(dim=2)
    assert (kept[:, 0] == 2).all() and (kept[:, 1] == 5).all()
    freq = masks.double().mean(dim=0).flatten(1)  # each position kept with prob k / n
    assert torch.allclose(freq[0], torch.full((12,), 2 / 12, dtype=torch.float64), atol=0.02)
    assert torch.allclose(freq[1], torch.full((12,), 5 / 12, dtype=torch.float64), atol=0.025)
    # pairs of positions: P(both kept) = k (k - 1) / (n (n - 1)) (without replacement)
    m0 = masks[:, 0].flatten(1).double()
    both = (m0[:, 0] * m0[:, 1]).mean()
    assert abs(float(both) - 2 / 132) < 0.006
    # modalities independent: correlation of one position of each is ~0
    a, b = m0[:, 0], masks[:, 1].flatten(1).double()[:, 0]
    assert abs(float(((a - a.mean()) * (b - b.mean())).mean())) < 0.01
    again = draw_keep_masks(4000, layout, (3, 4), (2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_ablate_sets_dropped_values_to_zero_and_appends_masks():
    layout = ModalityLayout((1, 2), ("a", "b"))
    x = torch.rand(3, 3, 2, 2) * 0.5 + 0.5  # no zeros
    masks = draw_keep_masks(3, layout, (2, 2), (1, 3), torch.Generator().manual_seed(1))
    out = ablate(x, masks, layout)
    assert out.shape == (3, 5, 2, 2)
    assert torch.equal(out[:, 3:], masks.float())
    assert torch.equal(out[:, 0], x[:, 0] * masks[:, 0])
    assert torch.equal(out[:, 1:3], x[:, 1:3] * masks[:, 1:2])
    one = ablate(x[0], masks, layout)  # one input broadcast over the masks
    assert torch.equal(one[0], out[0])
    with pytest.raises(InputError, match="channel"):
        ablate(torch.rand(3, 2, 2, 2), masks, layout)


def test_layout_checks():
    assert ModalityLayout((3,)).names == ("image",)
    assert ModalityLayout((1, 1)).names == ("m1", "m2")
    with pytest.raises(InputError, match="channels"):
        ModalityLayout(())
    with pytest.raises(InputError, match="distinct"):
        ModalityLayout((1, 1), ("a", "a"))
    with pytest.raises(InputError, match="keep"):
        ModalityLayout((1, 1)).check_keep((5,), (2, 2))
    with pytest.raises(InputError, match=r"\[1, 4\]"):
        ModalityLayout((1,)).check_keep((5,), (2, 2))
    with pytest.raises(InputError, match="mm-small-cnn"):
        layout_of(torch.nn.Linear(2, 2))


def test_normalize_with_mask_channels():
    norm = Normalize((0.5,), (0.25,), mask_channels=1)
    x = torch.rand(2, 1, 3, 3)
    complete = norm(x)
    assert complete.shape == (2, 2, 3, 3)
    assert torch.equal(complete[:, 1], torch.ones(2, 3, 3))
    assert torch.allclose(complete[:, 0], (x[:, 0] - 0.5) / 0.25)
    mask = (torch.rand(2, 1, 3, 3) > 0.5).float()
    out = norm(torch.cat([x * mask, mask], dim=1))
    assert torch.equal(out[:, 1:], mask)
    with pytest.raises(InputError, match=r"\[N, 1 or 2, H, W\]"):
        norm(torch.rand(2, 3, 3, 3))
    with pytest.raises(InputError, match="mask_channels"):
        Normalize((0.5,), (0.25,), mask_channels=-1)


def test_one_modality_is_the_small_cnn_with_a_mask_channel():
    torch.manual_seed(0)
    net = MultiModalCNN(10, in_channels=1)
    torch.manual_seed(0)
    ref = SmallCNN(10, in_channels=2)
    assert isinstance(net.encoders[0], SmallCNN)
    net.encoders[0].load_state_dict(ref.state_dict())
    x = torch.rand(4, 2, 28, 28)
    net.eval()
    ref.eval()
    assert torch.equal(net(x), ref(x))


def test_two_modalities_fuse_separate_encoders():
    torch.manual_seed(0)
    model = build("mm-small-cnn", in_channels=2, channels=[1, 1], names=["left", "right"],
                  dataset="fashion-mnist-pairs").eval()
    assert layout_of(model).names == ("left", "right")
    x = torch.rand(3, 2, 28, 28)
    full = model(x)  # complete input: every mask 1
    ones = torch.ones(3, 2, 28, 28)
    assert torch.allclose(full, model(torch.cat([x, ones], dim=1)))
    # modality 2's values reach only the second encoder: changing them changes the logits
    # through it alone
    y = x.clone()
    y[:, 1] = torch.rand(3, 28, 28)
    enc = model[1].encoders
    norm = model[0]
    a, b = norm(x), norm(y)
    assert torch.equal(enc[0](a[:, [0, 2]]), enc[0](b[:, [0, 2]]))
    assert not torch.equal(model(x), model(y))
    with pytest.raises(InputError, match="add up"):
        build("mm-small-cnn", in_channels=3, channels=[1, 1])
