"""Tests for bastion.models: Normalize, the architectures, the registry and checkpoint checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bastion.models import (
    DATASET_STATS,
    MODELS,
    ChannelStats,
    LeNet,
    Normalize,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    architecture_signature,
    build,
    check_state_dict_matches,
    dataset_stats,
)

# Small variants of each registered architecture, so every test stays cheap on a 2-core CPU.
FAST_KWARGS: dict[str, dict[str, object]] = {
    "small-cnn": {"zero_init_last": False},
    "lenet": {},
    "preact-resnet18": {"width": 8},
    "wide-resnet": {"depth": 10, "widen_factor": 1},
    "mlp": {"hidden": (16,)},
    "lipschitz-cnn": {"channels": (8, 8), "hidden": (16,)},
    "lipschitz-mlp": {"hidden": (16,)},
    "mm-small-cnn": {"embedding": 16, "zero_init_last": False},
}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def images(gen: torch.Generator, n: int, c: int, s: int) -> torch.Tensor:
    return torch.rand(n, c, s, s, generator=gen)


def fast_model(name: str, c: int, s: int, num_classes: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    return build(name, num_classes=num_classes, in_channels=c, input_size=s, **FAST_KWARGS[name])


def test_fast_kwargs_cover_registry() -> None:
    assert (
        set(FAST_KWARGS)
        == set(MODELS)
        == {
            "small-cnn",
            "lenet",
            "preact-resnet18",
            "wide-resnet",
            "mlp",
            "lipschitz-cnn",
            "lipschitz-mlp",
            "mm-small-cnn",
        }
    )


# --------------------------------------------------------------------------------- Normalize


def test_normalize_by_hand() -> None:
    norm = Normalize((0.5, 0.25), (0.5, 0.125))
    x = torch.tensor([0.0, 1.0, 0.5, 0.75]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    out = norm(x)
    expected_c0 = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(2, 2)
    expected_c1 = torch.tensor([-2.0, 6.0, 2.0, 4.0]).view(2, 2)
    torch.testing.assert_close(out[0, 0], expected_c0)
    torch.testing.assert_close(out[0, 1], expected_c1)
    assert norm.mean.shape == (1, 2, 1, 1) and norm.std.shape == (1, 2, 1, 1)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.num_channels == 2
    assert "mean=(0.5, 0.25)" in repr(norm) and "std=(0.5, 0.125)" in repr(norm)


def test_normalize_channels_last_keeps_format_and_values(gen: torch.Generator) -> None:
    norm = Normalize((0.1, 0.2, 0.3), (0.2, 0.3, 0.4))
    x = images(gen, 2, 3, 5)
    xcl = x.contiguous(memory_format=torch.channels_last)
    out = norm(xcl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, norm(x))


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ((0.5,), (0.0,), "std"),
        ((0.5,), (-1.0,), "std"),
        ((0.5, 0.5), (1.0,), "same length"),
        ((), (), "at least one"),
        ((float("nan"),), (1.0,), "mean must be finite"),
    ],
)
def test_normalize_rejects_bad_stats(mean: tuple, std: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Normalize(mean, std)


def test_normalize_rejects_wrong_channel_count(gen: torch.Generator) -> None:
    norm = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    # Without the check, [N,1,H,W] - [1,3,1,1] would broadcast silently to 3 channels.
    with pytest.raises(ValueError, match="3 channel"):
        norm(images(gen, 2, 1, 4))
    with pytest.raises(ValueError, match="NCHW"):
        norm(torch.rand(3, 4, 4))


# ----------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_puts_normalize_first(name: str) -> None:
    model = fast_model(name, 1, 28)
    names = [n for n, _ in model.named_children()]
    assert names == ["normalize", "net"]
    assert isinstance(model[0], Normalize)
    assert isinstance(model.normalize, Normalize)
    # identity normalisation by default
    assert model.normalize.mean.flatten().tolist() == [0.0]
    assert model.normalize.std.flatten().tolist() == [1.0]


def test_build_dataset_stats_and_explicit_stats() -> None:
    model = build("lenet", in_channels=3, input_size=32, dataset="cifar10")
    stats = DATASET_STATS["cifar10"]
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(stats.mean))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(stats.std))
    model = build("lenet", mean=(0.25,), std=(0.5,))
    assert model.normalize.mean.item() == 0.25 and model.normalize.std.item() == 0.5
    assert dataset_stats("mnist") == ChannelStats(mean=(0.1307,), std=(0.3081,))
    assert dataset_stats("fashion-mnist") == ChannelStats(mean=(0.2860,), std=(0.3530,))
    assert set(DATASET_STATS) == {"fashion-mnist", "mnist", "cifar10", "digits",
                                  "fashion-mnist-pairs", "fashion-mnist-pairs-wide"}


def test_build_stats_errors() -> None:
    with pytest.raises(ValueError, match="cifar10"):
        dataset_stats("imagenet")
    with pytest.raises(ValueError, match="in_channels=1"):
        build("lenet", dataset="cifar10")  # 3-channel stats, 1-channel model
    with pytest.raises(ValueError, match="both"):
        build("lenet", mean=(0.5,))
    with pytest.raises(ValueError, match="not both"):
        build("lenet", dataset="mnist", mean=(0.5,), std=(0.5,))


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        build("resnet-1000")
    msg = str(info.value)
    assert "resnet-1000" in msg
    for name in MODELS:
        assert name in msg


def test_unknown_architecture_kwarg_names_valid_ones() -> None:
    with pytest.raises(TypeError) as info:
        build("wide-resnet", in_channels=3, depht=28)
    msg = str(info.value)
    assert "depht" in msg
    for kw in ("depth", "widen_factor", "dropout", "num_classes", "in_channels"):
        assert kw in msg
    with pytest.raises(TypeError, match="width"):
        build("preact-resnet18", depth=18)


@pytest.mark.parametrize("depth", [8, 11, 33, 4, 0, -2])
def test_wide_resnet_rejects_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=depth, widen_factor=1)
    with pytest.raises(ValueError, match="6n"):
        build("wide-resnet", in_channels=3, depth=depth, widen_factor=1)


def test_architecture_arguments_validated() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        SmallCNN(num_classes=0)
    with pytest.raises(TypeError, match="in_channels"):
        LeNet(in_channels=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        WideResNet(depth=10, widen_factor=1, dropout=1.0)
    with pytest.raises(ValueError, match="input_size"):
        SmallCNN(input_size=(28, 28, 28))


# ------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("c", "s"), [(1, 28), (3, 32)])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(name: str, c: int, s: int, batch: int, gen: torch.Generator) -> None:
    model = fast_model(name, c, s, num_classes=7).eval()
    with torch.no_grad():
        out = model(images(gen, batch, c, s))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


def test_non_square_input(gen: torch.Generator) -> None:
    for name in ("small-cnn", "lenet"):
        model = build(name, input_size=(28, 36), **FAST_KWARGS[name]).eval()
        assert model(torch.rand(2, 1, 28, 36, generator=gen)).shape == (2, 10)


def small_cnn_param_count(c: int, flat_side: int, k: int) -> int:
    conv = (c * 9 + 1) * 32 + (32 * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 9 + 1) * 64
    fc = (64 * flat_side * flat_side + 1) * 200 + (200 + 1) * 200 + (200 + 1) * k
    return conv + fc


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_small_cnn_parameter_count_and_flatten_size() -> None:
    # 28 -> conv 26 -> conv 24 -> pool 12 -> conv 10 -> conv 8 -> pool 4
    assert n_params(SmallCNN(10, 1, 28)) == small_cnn_param_count(1, 4, 10) == 312_202
    # 32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5
    m32 = SmallCNN(10, 3, 32)
    assert m32.classifier.fc1.in_features == 64 * 5 * 5
    assert n_params(m32) == small_cnn_param_count(3, 5, 10)
    assert n_params(build("small-cnn")) == 312_202  # Normalize has buffers only


def test_small_cnn_layer_names_pickable() -> None:
    model = build("small-cnn")
    names = dict(model.named_modules())
    for key in (
        "net.features.conv1",
        "net.features.relu4",
        "net.features.maxpool2",
        "net.classifier.fc1",
        "net.classifier.drop",
        "net.classifier.fc2",
        "net.classifier.fc3",
    ):
        assert key in names
    assert isinstance(model.get_submodule("net.classifier.fc2"), nn.Linear)
    # state-dict keys as TRADES' models/small_cnn.py, with feature_extractor -> features
    assert "net.features.conv4.weight" in model.state_dict()
    assert "net.classifier.fc3.bias" in model.state_dict()


def test_small_cnn_trades_init() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    fc3 = model.classifier.fc3
    assert torch.count_nonzero(fc3.weight) == 0 and torch.count_nonzero(fc3.bias) == 0
    for conv in (model.features.conv1, model.features.conv2, model.features.conv3):
        assert torch.count_nonzero(conv.bias) == 0
    # kaiming_normal_ with defaults: std = sqrt(2 / fan_in), fan_in = in_channels * 3 * 3
    w = model.features.conv4.weight  # 36,864 samples
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert w.mean().abs().item() < 0.01
    # zero last layer -> all logits are zero before training
    out = model.eval()(torch.rand(2, 1, 28, 28))
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(SmallCNN(zero_init_last=False).classifier.fc3.weight) > 0


def test_wide_resnet_init() -> None:
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=4)
    w = model.block2.layer[0].conv2.weight  # 128 out channels: std sqrt(2 / (9 * 128))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)
    assert torch.count_nonzero(model.fc.bias) == 0
    assert torch.all(model.bn1.weight == 1) and torch.count_nonzero(model.bn1.bias) == 0


def test_too_small_input_errors() -> None:
    with pytest.raises(ValueError, match="too small.*16 pixels"):
        SmallCNN(input_size=15)
    SmallCNN(input_size=16)
    with pytest.raises(ValueError, match="too small"):
        LeNet(input_size=8)
    with pytest.raises(ValueError, match="too small"):
        build("small-cnn", input_size=8, dataset="digits")


def test_wrong_input_size_at_forward_is_clear(gen: torch.Generator) -> None:
    with pytest.raises(ValueError, match="built for 28x28"):
        SmallCNN()(images(gen, 2, 1, 32))
    with pytest.raises(ValueError, match="built for 28x28"):
        LeNet()(images(gen, 2, 1, 32))


def test_big_models_parameter_counts_and_keys() -> None:
    # Built on the meta device: shapes only, no memory and no init work.
    with torch.device("meta"):
        wrn = WideResNet(num_classes=10, in_channels=3, depth=34, widen_factor=10)
        prn = PreActResNet18(num_classes=10, in_channels=3)
    assert n_params(wrn) == 46_160_474  # WRN-34-10, as reported in the TRADES/Rice code bases
    assert n_params(prn) == 11_172_170  # PreAct-ResNet-18 (counted by hand layer by layer)
    assert len(wrn.block1.layer) == 5 and len(wrn.block3.layer) == 5
    sd = wrn.state_dict()
    assert "block1.layer.0.convShortcut.weight" in sd  # 16 -> 160 channels
    assert "block1.layer.1.convShortcut.weight" not in sd
    assert list(sd["fc.weight"].shape) == [10, 640]
    keys = prn.state_dict()
    assert {"conv1.weight", "bn.weight", "linear.weight", "layer2.0.shortcut.0.weight"} <= set(keys)
    assert "layer1.0.shortcut.0.weight" not in keys


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_flow_to_input(name: str, gen: torch.Generator) -> None:
    model = fast_model(name, 3, 32).eval()
    x = images(gen, 2, 3, 32).requires_grad_(True)
    y = torch.tensor([1, 4])
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    # every parameter receives a gradient in train mode
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_matches_nchw(name: str, gen: torch.Generator) -> None:
    c = 3
    model = fast_model(name, c, 32).eval()
    x = images(gen, 2, c, 32)
    with torch.no_grad():
        ref = model(x)
        out_input_cl = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_both_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert ref.abs().max() > 0
    torch.testing.assert_close(out_input_cl, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_both_cl, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: build("small-cnn", zero_init_last=False),
        lambda: build("wide-resnet", depth=10, widen_factor=1, dropout=0.3),
    ],
    ids=["small-cnn", "wide-resnet-dropout"],
)
def test_eval_is_deterministic_and_train_uses_dropout(
    make: Callable[[], nn.Module], gen: torch.Generator
) -> None:
    torch.manual_seed(0)
    model = make()
    x = images(gen, 3, 1, 28)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c, d)  # dropout active in train mode


# ------------------------------------------------------------------------ checkpoint checking


def test_architecture_signature() -> None:
    sig = architecture_signature(build("small-cnn", num_classes=2))
    assert sig["normalize.mean"] == [1, 1, 1, 1]
    assert sig["net.features.conv1.weight"] == [32, 1, 3, 3]
    assert sig["net.classifier.fc1.weight"] == [200, 1024]
    assert sig["net.classifier.fc3.weight"] == [2, 200]
    assert all(isinstance(v, list) for v in sig.values())
    # buffers (BatchNorm running stats) are included
    assert "net.bn1.running_mean" in architecture_signature(
        build("wide-resnet", depth=10, widen_factor=1)
    )


def test_check_state_dict_matches() -> None:
    ten = build("small-cnn", num_classes=10)
    two = build("small-cnn", num_classes=2)
    check_state_dict_matches(ten, build("small-cnn", num_classes=10).state_dict())
    with pytest.raises(ValueError) as info:
        check_state_dict_matches(ten, two.state_dict())
    msg = str(info.value)
    assert "2 shape mismatch" in msg
    assert "net.classifier.fc3.weight (model [10, 200], checkpoint [2, 200])" in msg
    assert "net.classifier.fc3.bias" in msg

    sd = dict(ten.state_dict())
    sd.pop("net.features.conv1.bias")
    sd["net.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        check_state_dict_matches(ten, sd)
    msg = str(info.value)
    assert "1 missing key(s): net.features.conv1.bias" in msg
    assert "1 unexpected key(s): net.extra.weight" in msg

    # a different architecture: many missing / unexpected keys, only the first few shown
    with pytest.raises(ValueError, match=r"more\)"):
        check_state_dict_matches(ten, build("lenet").state_dict())
    # a bare checkpoint (no normalize/net prefix) fails too
    with pytest.raises(ValueError, match="missing"):
        check_state_dict_matches(ten, ten.net.state_dict())
