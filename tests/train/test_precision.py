"""bf16 autocast training: ``fit(precision=...)`` and ``TrainConfig.precision``.

Under ``precision="bf16"`` the method's step (inner PGD and training forward) runs under
bf16 autocast while the parameters, gradients, optimizer state, losses and the attack's
perturbation stay fp32; the perturbation stays in its eps-ball and in [0, 1]; the
precision is saved with the checkpoints and a resume in another precision is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.threat import ThreatModel
from bastion.config import TrainConfig, dump_config, from_dict, to_dict, validate
from bastion.data import load_dataset
from bastion.errors import ConfigError, InputError, RunFolderError
from bastion.records import StepContext, StepOutput
from bastion.runs import train_from_config
from bastion.train import PGDAT, fit
from bastion.train.checkpoint import checkpoint_dir
from bastion.train.loop import PRECISIONS, check_precision
from bastion.train.registry import METHODS, build_method

EPS = 0.1


def _conv_net(seed: int = 0) -> nn.Module:
    """A tiny convolutional classifier of the 8x8 digits (non-zero last layer)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 10))


class _Recorder:
    """A method that runs PGD-AT and records, per step, the clean batch, the adversarial
    batch the training forward saw (the model's last input), whether autocast was on and
    the dtype of the logits."""

    def __init__(self, method: PGDAT, model: nn.Module) -> None:
        self.method = method
        self.steps: list[dict[str, Any]] = []
        self._last: list[torch.Tensor] = []
        self._dtypes: list[torch.dtype] = []
        model.register_forward_pre_hook(lambda m, args: self._last.append(args[0].detach()))
        model.register_forward_hook(lambda m, args, out: self._dtypes.append(out.dtype))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> StepOutput:
        self._last.clear()
        self._dtypes.clear()
        out = self.method(model, x, y, ctx=ctx)
        self.steps.append({
            "x": x.detach().clone(), "x_adv": self._last[-1].clone(),
            "autocast": torch.is_autocast_enabled(x.device.type),
            "logits_dtype": self._dtypes[-1], "loss_dtype": out.loss.dtype,
        })
        return out


def _fit(model: nn.Module, method: Callable[..., StepOutput], *, precision: str,
         channels_last: bool = False, epochs: int = 1, run_dir: Any = None,
         subset: int | None = 256, lr: float = 0.05) -> torch.optim.Optimizer:
    data = load_dataset("digits", "train")
    if subset is not None:
        data = data.subset(subset)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    fit(model, method, data, opt, epochs=epochs, batch_size=64, seed=3, run_dir=run_dir,
        channels_last=channels_last, precision=precision)  # type: ignore[arg-type]
    return opt


# ---------------------------------------------------------------------------- fit in bf16


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_fit_trains_with_fp32_parameters_and_perturbations_in_the_ball(
    channels_last: bool,
) -> None:
    model = _conv_net()
    before = [p.detach().clone() for p in model.parameters()]
    rec = _Recorder(PGDAT(threat=ThreatModel(eps=EPS, steps=3), clean_weight=0.0), model)
    opt = _fit(model, rec, precision="bf16", channels_last=channels_last)

    assert len(rec.steps) == 4  # 256 digits, batch 64
    for s in rec.steps:
        assert s["autocast"] and s["logits_dtype"] == torch.bfloat16
        assert s["loss_dtype"] == torch.float32
        x, x_adv = s["x"], s["x_adv"]
        assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
        assert float((x_adv - x).abs().max()) <= EPS + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float((x_adv - x).abs().max()) > EPS / 2  # PGD moved the inputs
    # parameters, their gradients and the optimizer state stay fp32; training moved them
    for p in model.parameters():
        assert p.dtype == torch.float32
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert opt.state[p]["momentum_buffer"].dtype == torch.float32
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before, strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert next(model.parameters()).is_contiguous()  # the layout is restored after fit


def test_fp32_fit_runs_no_autocast() -> None:
    model = _conv_net()
    rec = _Recorder(PGDAT(threat=ThreatModel(eps=EPS, steps=2)), model)
    _fit(model, rec, precision="fp32", subset=128)
    assert rec.steps and all(not s["autocast"] and s["logits_dtype"] == torch.float32
                             for s in rec.steps)


def test_bf16_training_learns_like_fp32() -> None:
    """Five epochs of PGD-AT on the digits reach about the same clean accuracy."""
    test = load_dataset("digits", "test")
    acc = {}
    for precision in PRECISIONS:
        model = _conv_net()
        _fit(model, PGDAT(threat=ThreatModel(eps=EPS, steps=3), clean_weight=0.3),
             precision=precision, epochs=5, subset=None, lr=0.1)
        with torch.no_grad():
            acc[precision] = float((model.eval()(test.images).argmax(1) == test.labels)
                                   .double().mean())
    assert acc["fp32"] > 0.85, acc
    assert abs(acc["bf16"] - acc["fp32"]) < 0.05, acc


class _LossDtypes:
    """Wraps a registered method (its hooks delegated) and records its losses' dtypes."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.dtypes: list[torch.dtype] = []

    def __getattr__(self, name: str) -> Any:  # init_state, on_epoch_start
        return getattr(self.method, name)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> StepOutput:
        out = self.method(model, x, y, ctx=ctx)
        self.dtypes.append(out.loss.dtype)
        return out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_in_bf16_with_an_fp32_loss(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if name == "hgd":  # trains a denoiser in front of a frozen classifier
        from bastion.preprocess import Defended
        from bastion.preprocess.hgd import GuidedDenoiser

        model = Defended(GuidedDenoiser(in_channels=1, width=4, depth=1), model,
                         frozen_model=True)
    if name == "subsample":  # its model reads the kept values and a keep-mask channel
        from tests.contracts._tiny import tiny_subsampling_model

        model = tiny_subsampling_model(1, (8, 8), 10)
    opts = {"threat": {"steps": 2}} if "threat" in METHODS[name].__dataclass_fields__ else {}
    rec = _LossDtypes(build_method(name, **opts))
    _fit(model, rec, precision="bf16", subset=128)
    assert rec.dtypes and all(d == torch.float32 for d in rec.dtypes), rec.dtypes
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- PGD under bf16 autocast


def _interior_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits squeezed into [0.2, 0.8], so a step of eps = 0.1 never meets the [0, 1] box."""
    data = load_dataset("digits", "test")
    return 0.2 + 0.6 * data.images[:128], data.labels[:128]


def test_pgd_steps_under_autocast_are_exact_fp32_sign_steps() -> None:
    """One signed step of length eps from x (FGSM) under bf16 autocast moves every pixel by
    exactly +-eps in fp32 (not a bf16-rounded amount), in the direction of the fp32 input
    gradient's sign wherever that gradient is not tiny."""
    model = _conv_net().eval()
    x, y = _interior_batch()
    fgsm = ThreatModel(eps=EPS, steps=1, step_size=EPS, random_init=False)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        x_lo = fgsm.attack(model, x, y).x_adv
    x_hi = fgsm.attack(model, x, y).x_adv
    d_lo, d_hi = x_lo - x, x_hi - x
    assert x_lo.dtype == torch.float32
    # every moved pixel moved by exactly eps (fp32 arithmetic; bf16 would be ~1e-3 off)
    moved = d_lo.abs() > 0
    assert moved.double().mean() > 0.9
    torch.testing.assert_close(d_lo.abs()[moved], torch.full_like(d_lo[moved], EPS),
                               rtol=0, atol=1e-6)
    # the bf16 input gradient points the same way as the fp32 one
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    clear = grad.abs() > 1e-2 * grad.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(d_hi.sign()[clear], grad.sign()[clear])
    agree = (d_lo.sign() == d_hi.sign())[clear].double().mean()
    assert agree > 0.97, float(agree)


def test_pgd_under_autocast_stays_in_the_ball_and_the_box() -> None:
    model = _conv_net().eval()
    data = load_dataset("digits", "test")
    x, y = data.images[:128], data.labels[:128]  # many pixels at 0 and 1: the box binds
    g = torch.Generator().manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        r = ThreatModel(eps=EPS, steps=7, step_size=0.025).attack(model, x, y, generator=g)
    d = r.x_adv - x
    assert r.x_adv.dtype == torch.float32
    assert float(d.abs().max()) <= EPS + 1e-6
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert float(d.abs().max()) > EPS - 1e-6  # it reached the edge of the ball somewhere
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------- bad precisions


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None, 16])
def test_bad_precision_is_refused_naming_the_choices(bad: Any) -> None:
    model = _conv_net()
    with pytest.raises(InputError, match=r"precision must be one of 'fp32', 'bf16'"):
        _fit(model, PGDAT(threat=ThreatModel(eps=EPS, steps=1)), precision=bad, subset=64)


def test_bf16_on_a_device_without_bf16_autocast_is_refused(tmp_path) -> None:
    """The meta device has no autocast: bf16 is refused before anything runs or is written."""
    model = nn.Linear(64, 10, device="meta")
    with pytest.raises(InputError, match=r"'bf16' is not supported on meta.*'fp32'"):
        fit(nn.Sequential(nn.Flatten(), model), PGDAT(), load_dataset("digits", "train"),
            torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, run_dir=tmp_path,
            precision="bf16")
    assert list(tmp_path.iterdir()) == []


def test_check_precision() -> None:
    assert check_precision("fp32", "meta") == "fp32"
    assert check_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(InputError, match="not supported on meta"):
        check_precision("bf16", "meta")


# -------------------------------------------------------------- checkpoints and resume


def test_checkpoints_record_the_precision_and_resume_checks_it(tmp_path) -> None:
    method = PGDAT(threat=ThreatModel(eps=EPS, steps=2))
    straight = _conv_net()
    _fit(straight, method, precision="bf16", epochs=2, run_dir=tmp_path / "a", subset=128)

    b = tmp_path / "b"
    _fit(_conv_net(), method, precision="bf16", epochs=1, run_dir=b, subset=128)
    ck = checkpoint_dir(b, "last")
    assert ck is not None
    assert json.loads((ck / "train_state.json").read_text())["precision"] == "bf16"
    with pytest.raises(RunFolderError, match=r"precision 'bf16', not 'fp32'"):
        _fit(_conv_net(), method, precision="fp32", epochs=2, run_dir=b, subset=128)
    resumed = _conv_net()
    _fit(resumed, method, precision="bf16", epochs=2, run_dir=b, subset=128)
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)  # exact resume also under autocast


def test_a_checkpoint_without_a_precision_is_fp32(tmp_path) -> None:
    method = PGDAT(threat=ThreatModel(eps=EPS, steps=1))
    _fit(_conv_net(), method, precision="fp32", epochs=1, run_dir=tmp_path, subset=64)
    ck = checkpoint_dir(tmp_path, "last")
    assert ck is not None
    state = json.loads((ck / "train_state.json").read_text())
    assert state.pop("precision") == "fp32"
    (ck / "train_state.json").write_text(json.dumps(state))  # as an older bastion wrote it
    with pytest.raises(RunFolderError, match=r"precision 'fp32', not 'bf16'"):
        _fit(_conv_net(), method, precision="bf16", epochs=2, run_dir=tmp_path, subset=64)
    _fit(_conv_net(), method, precision="fp32", epochs=2, run_dir=tmp_path, subset=64)


# ------------------------------------------------------------------------------- config

TINY = {"dataset": "digits", "model": "mlp", "model_options": {"hidden": [16]},
        "method": "pgd-at", "method_options": {"threat": {"eps": 0.1, "steps": 2}},
        "epochs": 1, "batch_size": 50, "train_subset": 200, "device": "cpu",
        "eval": {"attack": None, "n_test": 20}}


def test_config_precision_default_and_round_trip() -> None:
    assert TrainConfig().precision == "fp32"
    cfg = from_dict(TrainConfig, {**TINY, "precision": "bf16"})
    assert cfg.precision == "bf16" and to_dict(cfg)["precision"] == "bf16"
    assert "precision: bf16" in dump_config(cfg)
    assert validate(cfg) is cfg  # bf16 autocast runs on the CPU


@pytest.mark.parametrize("bad", ["fp16", "float32", "", None, 1])
def test_config_bad_precision_names_the_key_and_the_choices(bad: Any) -> None:
    with pytest.raises((ConfigError, TypeError),
                       match=r"config\.precision: .*'fp32', 'bf16'"):
        from_dict(TrainConfig, {**TINY, "precision": bad})
    with pytest.raises(ConfigError, match=r"config\.precision: .*'fp32', 'bf16'"):
        TrainConfig(precision=bad)


def test_config_bf16_where_torch_has_no_bf16_autocast(monkeypatch) -> None:
    import bastion.train.loop as loop

    monkeypatch.setattr(loop, "_bf16_unsupported", lambda device: "no bf16 here")
    cfg = from_dict(TrainConfig, {**TINY, "precision": "bf16"})  # builds on any machine
    with pytest.raises(ConfigError, match=r"config\.precision: .*no bf16 here.*'fp32'"):
        validate(cfg)
    validate(from_dict(TrainConfig, TINY))  # fp32 is not affected


def test_train_from_config_passes_and_records_the_precision(tmp_path, monkeypatch) -> None:
    import bastion.runs as runs

    seen: dict[str, Any] = {}
    real_fit = runs.fit

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["precision"] = kwargs.get("precision")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runs, "fit", spy)
    cfg = from_dict(TrainConfig, {**TINY, "precision": "bf16"})
    train_from_config(cfg, tmp_path)
    assert seen["precision"] == "bf16"
    ck = checkpoint_dir(tmp_path, "last")
    assert ck is not None
    assert json.loads((ck / "run_config.json").read_text())["precision"] == "bf16"
    assert "precision: bf16" in (tmp_path / "config.yaml").read_text()
    # the precision is part of the run: the same folder does not resume in fp32
    with pytest.raises(RunFolderError, match=r"precision: 'bf16' there, 'fp32' now"):
        train_from_config(from_dict(TrainConfig, {**TINY, "epochs": 2}), tmp_path)
