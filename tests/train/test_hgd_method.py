"""HGD training (Liao et al. 2018, arXiv 1712.02976): the loss against hand-computed L1
distances, where gradients go, how attacks and radii are drawn, bad input, bf16, DDP, and
a short ``fit`` that makes a frozen classifier robust to transferred attacks."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.pgd import pgd
from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Defended, Preprocessor
from bastion.preprocess.hgd import GuidedDenoiser
from bastion.records import StepContext
from bastion.train.hgd import HGD
from bastion.train.loop import fit
from bastion.train.registry import METHODS, build_method


@dataclass
class _Data:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _cnn(seed: int = 0, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 4, 3, padding=1)), ("relu", nn.ReLU()), ("pool", nn.AvgPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, classes)),
    ]))


def _defended(seed: int = 0, head_scale: float = 0.0, **den_options) -> Defended:
    """The tiny CNN behind a width-4 denoiser (its head random when ``head_scale > 0``)."""
    clf = _cnn(seed)
    torch.manual_seed(seed + 1)
    den = GuidedDenoiser(in_channels=1, width=4, depth=2, **den_options)
    if head_scale:
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            den.head.weight.copy_(head_scale * torch.randn(den.head.weight.shape, generator=g))
            den.head.bias.copy_(head_scale * torch.randn(den.head.bias.shape, generator=g))
    return Defended(den, clf, frozen_model=True)


def _batch(n: int = 8, seed: int = 3, lo: float = 0.0, hi: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 1, 8, 8, generator=g)
    return x, torch.arange(n) % 3


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed))


def _inputs_seen(model: Defended) -> list[torch.Tensor]:
    """Records what the denoiser is fed (the training inputs x*)."""
    seen: list[torch.Tensor] = []
    model.preprocessor.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return seen


def _fgsm_by_hand(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(clf(xr), y, reduction="sum"), xr)
    return (x + eps * g.sign()).clamp(0, 1)


# ------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("guidance", ["logits", "features", "pixel"])
def test_loss_equals_the_hand_computed_l1(guidance):
    model = _defended(head_scale=0.05).eval()  # eval: BatchNorm uses running statistics
    clf, den = model.model, model.preprocessor
    x, y = _batch()
    layer = "relu" if guidance == "features" else None
    method = HGD(guidance=guidance, layer=layer, attacks=["fgsm"], eps=[0.1])
    seen = _inputs_seen(model)
    out = method(model, x, y, ctx=_ctx())

    x_adv = _fgsm_by_hand(clf, x, y, 0.1)
    torch.testing.assert_close(seen[0], x_adv, rtol=0, atol=1e-6)
    with torch.no_grad():
        x_hat = den(x_adv)
        if guidance == "logits":
            a, b = clf(x_hat), clf(x)
        elif guidance == "features":
            a, b = clf.relu(clf.conv(x_hat)), clf.relu(clf.conv(x))
        else:
            a, b = x_hat, x
        hand = sum(float((a[i] - b[i]).abs().sum()) for i in range(len(x))) / len(x)
    assert hand > 0
    assert float(out.loss.detach()) == pytest.approx(hand, rel=1e-5)
    assert out.loss.dtype == torch.float32

    acc = lambda logits: float((logits.argmax(1) == y).float().mean())  # noqa: E731
    with torch.no_grad():
        assert float(out.logs["nat_acc"]) == acc(clf(x))
        assert float(out.logs["adv_acc"]) == acc(clf(x_adv))
        assert float(out.logs["denoised_adv_acc"]) == acc(clf(x_hat))


def test_untrained_denoiser_loss_is_the_undefended_distance():
    """At initialisation D is the identity, so the LGD loss is ||f(x*) - f(x)||_1."""
    model = _defended()
    x, y = _batch()
    out = HGD(attacks=["fgsm"], eps=[0.1])(model, x, y, ctx=_ctx())
    x_adv = _fgsm_by_hand(model.model, x, y, 0.1)
    with torch.no_grad():
        hand = (model.model(x_adv) - model.model(x)).abs().sum(1).mean()
    assert float(out.loss.detach()) == pytest.approx(float(hand), rel=1e-5)
    assert float(out.logs["adv_acc"]) == float(out.logs["denoised_adv_acc"])


def test_gradients_reach_the_denoiser_only():
    model = _defended(head_scale=0.05)
    x, y = _batch()
    out = HGD()(model, x, y, ctx=_ctx())
    out.loss.backward()
    assert all(p.grad is None for p in model.model.parameters())
    assert all(not p.requires_grad for p in model.model.parameters())
    grads = {n: p.grad for n, p in model.preprocessor.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(int(bool(g.abs().sum() > 0)) for g in grads.values()) == len(grads)
    assert not model.model.training and model.preprocessor.training  # modes unchanged
    assert x.grad is None and not x.requires_grad


# -------------------------------------------------------------------- attacks and draws


def _radii(method: HGD, n: int = 48, seed: int = 0) -> torch.Tensor:
    model = _defended()
    x, y = _batch(n, lo=0.2, hi=0.8)  # inside the box: FGSM moves every pixel by eps
    seen = _inputs_seen(model)
    method(model, x, y, ctx=_ctx(seed))
    return (seen[0] - x).abs().flatten(1).amax(1)


def test_radii_are_drawn_per_example_or_per_batch():
    eps = [0.05, 0.1, 0.15]
    per_example = _radii(HGD(attacks=["fgsm"], eps=eps))
    values = torch.tensor(eps)
    nearest = (per_example[:, None] - values[None]).abs().min(1).values
    assert float(nearest.max()) < 1e-6  # FGSM: exactly one of the radii
    assert len({round(float(r), 4) for r in per_example}) == 3
    per_batch = _radii(HGD(attacks=["fgsm"], eps=eps, draw="batch"))
    assert len({round(float(r), 4) for r in per_batch}) == 1
    assert min(abs(float(per_batch[0]) - e) for e in eps) < 1e-6


def test_both_attacks_are_used_and_stay_in_their_ball():
    # PGD's random start and steps of 2.5 eps / steps leave most pixels inside the ball;
    # FGSM puts every pixel on its boundary. Both stay within the largest radius.
    radii = _radii(HGD(attacks=["fgsm", "pgd"], eps=[0.1], steps=3), n=64)
    assert float(radii.max()) <= 0.1 + 1e-6
    model = _defended()
    x, y = _batch(64, lo=0.2, hi=0.8)
    seen = _inputs_seen(model)
    HGD(attacks=["fgsm", "pgd"], eps=[0.1], steps=3)(model, x, y, ctx=_ctx())
    on_boundary = ((seen[0] - x).abs() > 0.1 - 1e-6).flatten(1).float().mean(1)
    assert bool((on_boundary == 1).any()) and bool((on_boundary < 1).any())


def test_clean_fraction_leaves_examples_unattacked():
    model = _defended()
    x, y = _batch(64, lo=0.2, hi=0.8)
    seen = _inputs_seen(model)
    HGD(attacks=["fgsm"], eps=[0.1], clean_fraction=0.5)(model, x, y, ctx=_ctx())
    clean = (seen[0] == x).flatten(1).all(1)
    assert 10 < int(clean.sum()) < 54


def test_same_generator_same_step_and_the_global_rng_is_untouched():
    x, y = _batch(16)
    method = HGD(clean_fraction=0.3)
    state = torch.get_rng_state()
    a = method(_defended(), x, y, ctx=_ctx(5))
    b = method(_defended(), x, y, ctx=_ctx(5))
    c = method(_defended(), x, y, ctx=_ctx(6))
    assert torch.equal(a.loss, b.loss) and not torch.equal(a.loss, c.loss)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- bad input


class _Blur(Preprocessor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1)


def test_the_model_must_be_a_defended_guided_denoiser_with_a_frozen_classifier():
    x, y = _batch()
    with pytest.raises(InputError, match=r"Defended\(GuidedDenoiser.*got Sequential"):
        HGD()(_cnn(), x, y, ctx=_ctx())
    with pytest.raises(InputError, match=r"got Defended\(_Blur"):
        HGD()(Defended(_Blur(), _cnn(), frozen_model=True), x, y, ctx=_ctx())
    loose = Defended(GuidedDenoiser(width=4), _cnn(), frozen_model=False)
    with pytest.raises(InputError, match="frozen_model=True"):
        HGD()(loose, x, y, ctx=_ctx())


def test_unknown_layer_lists_the_valid_ones():
    x, y = _batch()
    with pytest.raises(InputError, match="unknown layer 'fc2'.*valid choices: conv, relu, "
                                         "pool, flatten, fc"):
        HGD(guidance="features", layer="fc2")(_defended(), x, y, ctx=_ctx())


def test_a_layer_that_runs_twice_is_refused():
    torch.manual_seed(0)
    relu = nn.ReLU()
    clf = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), relu, nn.Conv2d(2, 2, 3, padding=1),
                        relu, nn.Flatten(), nn.Linear(128, 3))
    model = Defended(GuidedDenoiser(width=4), clf, frozen_model=True)
    x, y = _batch()
    with pytest.raises(InputError, match="runs 2 times"):
        HGD(guidance="features", layer="1")(model, x, y, ctx=_ctx())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"guidance": "labels"}, "valid choices: features, logits, pixel"),
    ({"guidance": "features"}, "needs layer"),
    ({"layer": "fc"}, "only used with guidance 'features'"),
    ({"attacks": ["cw"]}, "valid choices: fgsm, pgd"),
    ({"attacks": []}, "must not be empty"),
    ({"attacks": ["pgd", "pgd"]}, "twice"),
    ({"eps": [0.0]}, r"\(0, 1\]"),
    ({"eps": [0.1, 8]}, r"\(0, 1\]"),
    ({"eps": ["0.1"]}, r"\(0, 1\]"),
    ({"steps": 0}, "steps"),
    ({"clean_fraction": 1.0}, r"\[0, 1\)"),
    ({"clean_fraction": -0.1}, r"\[0, 1\)"),
    ({"draw": "epoch"}, "valid choices: batch, example"),
])
def test_bad_options_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        HGD(**kwargs)


def test_option_types():
    with pytest.raises(InputTypeError, match="attacks must be a list"):
        HGD(attacks="fgsm")  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="eps must be a list"):
        HGD(eps=0.1)  # type: ignore[arg-type]


def test_registry_builds_it_from_yaml_lists():
    assert METHODS["hgd"] is HGD
    opts = {"guidance": "features", "layer": "features", "attacks": ["pgd"],
            "eps": [0.05, 0.1], "steps": 7, "clean_fraction": 0.2}
    method = build_method("hgd", **json.loads(json.dumps(opts)))
    assert method == HGD(guidance="features", layer="features", attacks=("pgd",),
                         eps=(0.05, 0.1), steps=7, clean_fraction=0.2)
    assert dataclasses.replace(method) == method
    with pytest.raises(InputError, match="unknown option"):
        build_method("hgd", threat={"eps": 0.1})


# ------------------------------------------------------------------------- bf16 and DDP


@pytest.mark.parametrize("guidance", ["logits", "features", "pixel"])
def test_bf16_autocast_gives_an_fp32_loss_and_denoiser_gradients(guidance):
    model = _defended(head_scale=0.05)
    x, y = _batch()
    layer = "relu" if guidance == "features" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = HGD(guidance=guidance, layer=layer, steps=2)(model, x, y, ctx=_ctx())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.preprocessor.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.parameters())


def test_works_through_a_ddp_wrapper(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():  # pragma: no cover - another test left a group behind
        pytest.fail("a process group is already initialised in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        model = _defended(head_scale=0.05)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = _batch()
        out = HGD(steps=2)(ddp, x, y, ctx=_ctx())
        out.loss.backward()
        assert model.preprocessor.head.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------- it works: a short fit


def _blocky(n: int, seed: int) -> _Data:
    """8x8 images constant on 2x2 blocks: one bright quadrant (0.7 on 0.3, +-0.1 noise per
    block) says the class, of 4."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    blocks = torch.full((n, 1, 4, 4), 0.3)
    for k in range(4):
        r, c = divmod(k, 2)
        blocks[y == k, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 0.7
    blocks = blocks + 0.1 * (2 * torch.rand(blocks.shape, generator=g) - 1)
    return _Data(F.interpolate(blocks, scale_factor=2, mode="nearest"), y)


def _non_robust_classifier(train: _Data) -> nn.Sequential:
    """A linear classifier trained on ``train`` from an initialisation with a large
    component off the data's manifold: a +-1 checkerboard inside every 2x2 block, which
    the blocky images are orthogonal to. Training never moves it (its gradient is
    blockwise constant, and so is Adam's step), and clean predictions ignore it, but an
    L-inf attack follows it: the picture of adversarial examples leaving the data manifold
    that motivates denoisers."""
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)
    g = torch.Generator().manual_seed(2)
    signs = (2 * torch.randint(0, 2, (4, 1, 4, 4), generator=g) - 1).float()
    with torch.no_grad():
        clf[1].weight.copy_((F.interpolate(signs, scale_factor=2)[:, 0] * checker).flatten(1))
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(clf(train.images), train.labels).backward()
        opt.step()
    return clf.eval()


def test_fit_makes_the_frozen_classifier_robust_to_transferred_attacks():
    """Liao et al.'s transfer setting: adversarial test images of the undefended classifier
    (PGD-10, L-inf 0.1), classified behind the trained denoiser."""
    train, test = _blocky(512, 0), _blocky(256, 1)
    clf = _non_robust_classifier(train)
    eps = 0.1
    x_adv = pgd(clf, test.images, test.labels, eps=eps, steps=10).x_adv

    def acc(model: nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == test.labels).float().mean())

    assert acc(clf, test.images) == 1.0
    undefended = acc(clf, x_adv)
    assert undefended < 0.5

    torch.manual_seed(0)
    model = Defended(GuidedDenoiser(in_channels=1, width=8, depth=2), clf, frozen_model=True)
    method = HGD(attacks=["fgsm", "pgd"], eps=[eps / 2, eps], steps=5)
    opt = torch.optim.Adam(model.preprocessor.parameters(), lr=3e-3)
    history = fit(model, method, train, opt, epochs=10, batch_size=32, seed=0)  # 160 steps

    losses = [rec.train["train_loss"] for rec in history.epochs]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    defended = acc(model, x_adv)
    assert defended >= 0.9 and defended > undefended + 0.4
    assert acc(model, test.images) >= 0.95
    assert all(not p.requires_grad for p in clf.parameters())
