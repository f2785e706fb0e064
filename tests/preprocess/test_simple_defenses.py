"""The three simple pre-processing defenses on real numbers.

``RandomResizePad`` (Xie et al. 2018, arXiv 1711.01991), ``BitDepthReduction`` (Xu, Evans
and Qi 2018, arXiv 1704.01155) and ``JPEGCompression`` (Guo et al. 2018, arXiv
1711.00117): the values they compute, their declared randomness and gradients, their
option checks, and the JSON round trip of their options. The contract shared with every
registered defense is in ``tests/contracts/test_preprocess_contracts.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bastion.errors import BastionError, InputError
from bastion.preprocess import Defended
from bastion.preprocess.bit_depth import BitDepthReduction
from bastion.preprocess.jpeg import JPEGCompression
from bastion.preprocess.resize_pad import RandomResizePad, ResizePadDraw

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _smooth(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Low-frequency images in [0.1, 0.9] (what JPEG keeps well at high quality)."""
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    imgs = []
    for i in range(n):
        chans = [0.5 + 0.4 * torch.sin(2.0 * (xx + (i + 1) * 0.7 * yy) + k) for k in range(c)]
        imgs.append(torch.stack(chans))
    return torch.stack(imgs)


def _input_grad(pre: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    xx = x.clone().requires_grad_(True)
    out = pre(xx)
    if not out.requires_grad:
        return None
    w = _rand(*out.shape, seed=5, dtype=out.dtype)
    (g,) = torch.autograd.grad((out * w).sum(), xx, allow_unused=True)
    return g


# ------------------------------------------------------------------ bit-depth reduction


def test_bit_depth_one_bit_thresholds_at_one_half():
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.51, 0.8, 1.0]).view(1, 1, 1, 7)
    out = BitDepthReduction(bits=1)(x)
    # round half to even: 0.5 -> 0
    assert out.flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_bit_depth_levels():
    x = torch.linspace(0, 1, 1001).view(1, 1, 7, 143)
    for bits in (1, 2, 3, 5):
        out = BitDepthReduction(bits)(x)
        top = 2 ** bits - 1
        levels = torch.unique(out)
        assert levels.numel() == 2 ** bits
        assert torch.allclose(levels, torch.arange(top + 1) / top)
        assert (out - x).abs().max() <= 0.5 / top + 1e-6
    two = BitDepthReduction(2)(torch.tensor([0.1, 0.2, 0.4, 0.6, 0.9]).view(1, 1, 1, 5))
    assert torch.allclose(two.flatten(), torch.tensor([0.0, 1 / 3, 1 / 3, 2 / 3, 1.0]))


def test_bit_depth_eight_bits_keeps_8_bit_images():
    x = torch.randint(0, 256, (2, 3, 9, 9), generator=torch.Generator().manual_seed(0)) / 255
    assert torch.equal(BitDepthReduction(8)(x), x)


def test_bit_depth_keeps_dtype_and_gives_exactly_zero_gradient():
    x = _rand(3, 1, 6, 6, dtype=torch.float64)
    pre = BitDepthReduction(3)
    assert pre(x).dtype == torch.float64
    g = _input_grad(pre, x)
    assert g is not None and torch.equal(g, torch.zeros_like(x))  # graph kept, gradient 0
    assert (pre.randomized, pre.differentiable, pre.costly) == (False, False, False)
    assert isinstance(pre.bpda_standin(), torch.nn.Identity)


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bit_depth_rejects_out_of_range(bits):
    with pytest.raises(InputError, match=rf"bits must be an int in 1\.\.8.*got {bits}"):
        BitDepthReduction(bits)


@pytest.mark.parametrize("bits", [2.5, True, "4"])
def test_bit_depth_rejects_non_ints(bits):
    with pytest.raises(BastionError, match="bits"):
        BitDepthReduction(bits)  # type: ignore[arg-type]


# ------------------------------------------------------------------ JPEG


# Largest absolute error at quality 100 on the smooth images: measured 0.0059 (grey) and
# 0.036 (RGB: libjpeg's default 4:2:0 chroma subsampling averages colour over 2 x 2 pixels
# at any quality); at quality 10, 0.081 and 0.18.
@pytest.mark.parametrize(("channels", "bound"), [(1, 0.01), (3, 0.05)])
def test_jpeg_quality_100_is_close_and_quality_10_is_not(channels, bound):
    x = _smooth(2, channels, 32, 32)
    err100 = (JPEGCompression(100)(x) - x).abs()
    err10 = (JPEGCompression(10)(x) - x).abs()
    assert err100.max() < bound and err100.mean() < 0.005
    assert err10.max() > 2 * bound and err10.mean() > 3 * err100.mean()


def test_jpeg_quality_100_keeps_grey_noise():
    x = _rand(2, 1, 16, 16)
    assert (JPEGCompression(100)(x) - x).abs().max() < 0.01


def test_jpeg_lower_quality_loses_more():
    x = _smooth(3, 3, 24, 24)
    mse = [float(((JPEGCompression(q)(x) - x) ** 2).mean()) for q in (95, 50, 5)]
    assert mse[0] < mse[1] < mse[2]


def test_jpeg_values_shape_dtype_and_determinism():
    for shape in [(3, 1, 12, 12), (2, 3, 13, 17)]:
        for dtype in (torch.float32, torch.float64):
            x = _rand(*shape, dtype=dtype)
            pre = JPEGCompression(50)
            out = pre(x)
            assert out.shape == x.shape and out.dtype == dtype
            assert out.min() >= 0 and out.max() <= 1
            assert torch.equal(out, pre(x))
            # decoded 8-bit values
            assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


def test_jpeg_each_image_is_coded_on_its_own():
    x = _rand(3, 3, 16, 16)
    pre = JPEGCompression(30)
    batch = pre(x)
    for i in range(3):
        assert torch.equal(batch[i:i + 1], pre(x[i:i + 1]))


def test_jpeg_gives_exactly_zero_gradient():
    x = _rand(2, 3, 8, 8)
    g = _input_grad(JPEGCompression(), x)
    assert g is not None and torch.equal(g, torch.zeros_like(x))
    pre = JPEGCompression()
    assert (pre.randomized, pre.differentiable, pre.costly) == (False, False, False)
    assert isinstance(pre.bpda_standin(), torch.nn.Identity)


@pytest.mark.parametrize("channels", [2, 4])
def test_jpeg_rejects_other_channel_counts(channels):
    with pytest.raises(InputError, match=f"channels, got {channels}"):
        JPEGCompression()(_rand(1, channels, 8, 8))


@pytest.mark.parametrize("quality", [0, 101])
def test_jpeg_rejects_out_of_range_quality(quality):
    with pytest.raises(InputError, match=rf"quality.*1\.\.100.*{quality}"):
        JPEGCompression(quality)


def test_jpeg_rejects_non_int_quality():
    with pytest.raises(BastionError, match="quality"):
        JPEGCompression(75.0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jpeg_on_cuda_matches_cpu():
    x = _rand(2, 3, 16, 16)
    pre = JPEGCompression(40)
    out = pre(x.cuda())
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), pre(x))


# ------------------------------------------------------------------ random resize and pad


def _reference(x: torch.Tensor, pre: RandomResizePad, d: ResizePadDraw) -> torch.Tensor:
    """One image at a time, with ``F.pad`` (what the batched transformation must equal)."""
    mode = {"mode": "bilinear", "align_corners": False} if pre.mode == "bilinear" else {
        "mode": "nearest"}
    h, w = x.shape[-2:]
    p = pre.pad_size
    outs = []
    for i in range(x.shape[0]):
        s, t, left = int(d.sizes[i]), int(d.tops[i]), int(d.lefts[i])
        r = F.interpolate(x[i:i + 1], size=(s, s), **mode)
        r = F.pad(r, (left, p - s - left, t, p - s - t))
        outs.append(F.interpolate(r, size=(h, w), **mode))
    return torch.cat(outs).clamp(0, 1)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_pad_equals_a_per_image_reference(mode):
    x = _rand(6, 3, 28, 28)
    pre = RandomResizePad(mode=mode)
    pre.generator = torch.Generator().manual_seed(3)
    d = pre.draw(6)
    assert torch.unique(d.sizes).numel() > 1  # several sizes in one batch
    assert torch.allclose(pre.transform(x, d), _reference(x, pre, d), atol=1e-6)
    pre.generator = torch.Generator().manual_seed(3)
    assert torch.equal(pre(x), pre.transform(x, d))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_pad_with_no_room_is_the_identity(mode):
    x = _rand(3, 1, 12, 12)
    pre = RandomResizePad(12, 12, 12, mode=mode)
    assert torch.equal(pre(x), x) if mode == "nearest" else torch.allclose(pre(x), x,
                                                                            atol=1e-6)


def test_resize_pad_fixed_size_with_padding_shifts_the_image():
    x = _rand(1, 1, 10, 10)
    pre = RandomResizePad(10, 10, 12)  # s = 10, offsets in {0, 1, 2}
    d = ResizePadDraw(torch.tensor([10]), torch.tensor([2]), torch.tensor([0]))
    canvas = F.pad(x, (0, 2, 2, 0))
    assert torch.equal(pre.transform(x, d), F.interpolate(canvas, size=(10, 10)))


def test_resize_pad_draws_cover_their_ranges_uniformly():
    pre = RandomResizePad()  # sizes 28, 29, 30; pad 31
    pre.generator = torch.Generator().manual_seed(0)
    n = 30000
    d = pre.draw(n)
    counts = torch.bincount(d.sizes - 28, minlength=3)
    assert counts.numel() == 3 and (counts - n / 3).abs().max() < 0.03 * n
    room = 31 - d.sizes
    assert (d.tops >= 0).all() and (d.tops <= room).all()
    assert (d.lefts >= 0).all() and (d.lefts <= room).all()
    for s in (28, 29, 30):
        sel = d.sizes == s
        tops = torch.bincount(d.tops[sel], minlength=31 - s + 1)
        assert tops.numel() == 31 - s + 1
        expect = sel.sum() / (31 - s + 1)
        assert (tops - expect).abs().max() < 0.1 * expect


def test_resize_pad_each_image_gets_its_own_draw():
    x = _rand(1, 1, 16, 16).expand(8, 1, 16, 16).contiguous()
    pre = RandomResizePad(mode="bilinear")
    pre.generator = torch.Generator().manual_seed(0)
    out = pre(x)
    distinct = {tuple(out[i].flatten().tolist()) for i in range(8)}
    assert len(distinct) > 1


def test_resize_pad_seeded_generator_and_global_rng_are_reproducible():
    x = _rand(4, 3, 14, 14)
    pre = RandomResizePad()
    pre.generator = torch.Generator().manual_seed(11)
    a, b = pre(x), pre(x)
    assert not torch.equal(a, b)
    pre.generator = torch.Generator().manual_seed(11)
    assert torch.equal(pre(x), a)
    pre.generator = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        c = pre(x)
        torch.manual_seed(5)
        assert torch.equal(pre(x), c)


def test_resize_pad_keeps_shape_dtype_and_range_for_any_input_size():
    pre = RandomResizePad(mode="bilinear")
    for shape in [(2, 1, 28, 28), (3, 3, 12, 20), (1, 3, 40, 33)]:
        for dtype in (torch.float32, torch.float64):
            x = (_rand(*shape, dtype=dtype) > 0.5).to(dtype)  # exact 0s and 1s
            out = pre(x)
            assert out.shape == x.shape and out.dtype == dtype
            assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_pad_gradient_is_exact_on_fixed_draws(mode):
    pre = RandomResizePad(9, 12, 12, mode=mode)
    pre.generator = torch.Generator().manual_seed(2)
    d = pre.draw(2)
    x = (0.1 + 0.8 * _rand(2, 2, 10, 10, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pre.transform(t, d), (x,))
    g = _input_grad(pre, x.detach())
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert (pre.randomized, pre.differentiable, pre.costly) == (True, True, False)


def test_resize_pad_paper_setting_on_imagenet_sized_input():
    pre = RandomResizePad(299, 331, 331)
    pre.generator = torch.Generator().manual_seed(0)
    x = _rand(2, 3, 299, 299)
    out = pre(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_size": 0}, r"min_size must be an int >= 1, got 0"),
        ({"min_size": 30, "max_size": 29}, r"max_size must be >= min_size=30.*got 29"),
        ({"min_size": 28, "max_size": 33, "pad_size": 31},
         r"pad_size must be >= the largest resized size 32.*got 31"),
        ({"min_size": 28, "max_size": 28, "pad_size": 27},
         r"pad_size must be >= the largest resized size 28.*got 27"),
        ({"mode": "bicubic"}, r"mode 'bicubic'; valid choices: bilinear, nearest"),
        ({"mode": 3}, r"mode must be one of"),
    ],
)
def test_resize_pad_rejects_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        RandomResizePad(**kwargs)


def test_resize_pad_rejects_non_int_sizes():
    with pytest.raises(BastionError, match="pad_size"):
        RandomResizePad(pad_size=31.0)  # type: ignore[arg-type]


def test_resize_pad_rejects_non_batches():
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        RandomResizePad()(_rand(3, 12, 12))


# ------------------------------------------------------------------ shared


@pytest.mark.parametrize("pre", [RandomResizePad(20, 25, 26, "bilinear"), BitDepthReduction(4),
                                 JPEGCompression(33)], ids=lambda p: type(p).__name__)
def test_options_round_trip_through_json(pre):
    cfg = json.loads(json.dumps(pre.config()))
    again = type(pre)(**cfg)
    assert again.config() == pre.config()
    assert type(pre)().config() != pre.config()  # not just the defaults


def test_defaults():
    assert RandomResizePad().config() == {"min_size": 28, "max_size": 31, "pad_size": 31,
                                          "mode": "nearest"}
    assert BitDepthReduction().config() == {"bits": 1}
    assert JPEGCompression().config() == {"quality": 75}


def test_defended_runs_the_defense():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3)).eval()
    x = _rand(2, 1, 28, 28)
    defended = Defended(BitDepthReduction(1), model)
    assert torch.equal(defended(x), model((x > 0.5).float()))
