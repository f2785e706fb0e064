"""Defended runs end to end: a ``preprocess`` section in a run config, the guided denoiser
trained in front of a frozen classifier, ``load_model`` returning the composition, a
defense added at evaluation time (library and CLI), and the checks that compare a
defense's declarations with its behaviour.

Every run is the tiny digits MLP (8x8 images, 2 epochs, well under a second each)."""

from __future__ import annotations

import json

import pytest
import torch

from bastion.checks import run_checks
from bastion.cli import main
from bastion.config import TrainConfig, from_dict
from bastion.errors import ConfigError, InputError
from bastion.preprocess import Defended, Preprocessor
from bastion.preprocess.bit_depth import BitDepthReduction
from bastion.preprocess.hgd import GuidedDenoiser
from bastion.runs import (
    DefenseChoice,
    eval_record_path,
    evaluate_run,
    load_model,
    train_from_config,
)

BASE = {
    "dataset": "digits", "model": "mlp", "model_options": {"hidden": [32]},
    "method": "standard", "epochs": 2, "batch_size": 50, "optim": {"lr": 0.1},
    "device": "cpu", "eval": {"attack": None, "n_test": 100},
}


def cfg(**changes) -> TrainConfig:
    return from_dict(TrainConfig, {**json.loads(json.dumps(BASE)), **changes})


def hgd_cfg(classifier_run) -> TrainConfig:
    """One epoch of the guided denoiser in front of ``classifier_run``'s frozen model."""
    return cfg(
        method="hgd", init_from=str(classifier_run), epochs=1,
        optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        method_options={"eps": [0.1], "attacks": ["fgsm"]},
        preprocess={"name": "hgd", "options": {"width": 4, "depth": 1}, "freeze_model": True})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A standard classifier run and an HGD run trained in front of it."""
    root = tmp_path_factory.mktemp("defended")
    std = root / "standard"
    train_from_config(cfg(), std)
    hgd = root / "hgd"
    train_from_config(hgd_cfg(std), hgd)
    return std, hgd


def test_preprocess_section_errors_name_the_key_and_choices():
    with pytest.raises(ConfigError, match=r"preprocess.name.*valid choices: bit-depth, hgd"):
        cfg(preprocess={"name": "nope"})
    with pytest.raises(ConfigError, match=r"preprocess.options.*no option 'bogus'.*keep_prob"):
        cfg(preprocess={"name": "tv", "options": {"bogus": 1}})
    with pytest.raises(ConfigError, match="no weights to train"):
        cfg(preprocess={"name": "jpeg", "freeze_model": True})
    with pytest.raises(ConfigError, match="method 'hgd'.*freeze_model: true"):
        cfg(method="hgd")
    # an undefended config keeps its dict (and hash) as before the key existed
    from bastion.config import to_dict

    assert "preprocess" not in to_dict(cfg())
    assert to_dict(cfg(preprocess={"name": "jpeg"}))["preprocess"]["name"] == "jpeg"


def test_hgd_run_trains_only_the_denoiser_and_loads_as_the_composition(runs):
    std, hgd = runs
    classifier = load_model(std)
    defended = load_model(hgd)
    assert isinstance(defended, Defended) and isinstance(defended.preprocessor, GuidedDenoiser)
    assert not defended.training and not defended.model.training
    # the classifier is the init_from run's, untouched by training
    for a, b in zip(classifier.state_dict().values(), defended.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # the denoiser moved away from its zero-initialised identity
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (defended.preprocessor(x) - x).abs().max() > 1e-4
        assert torch.equal(defended(x), defended.model(defended.preprocessor(x)))
    meta = json.loads((hgd / "model.json").read_text())
    assert meta["preprocess"] == {"name": "hgd", "freeze_model": True,
                                  "options": {"width": 4, "depth": 1, "in_channels": 1}}


def test_resuming_a_finished_defended_run_trains_nothing(runs):
    std, hgd = runs
    before = (hgd / "checkpoints" / "last.json").read_text()
    train_from_config(hgd_cfg(std), hgd)
    assert (hgd / "checkpoints" / "last.json").read_text() == before


def test_defense_at_evaluation_time_is_recorded_in_its_own_folder(runs):
    std, _ = runs
    from bastion.attacks.spec import AttackSpec

    choice = DefenseChoice(name="bit-depth", options={"bits": 2})
    plain = AttackSpec(name="pgd", threat={"eps": 0.2, "steps": 10})
    bpda = AttackSpec(name="bpda-pgd", threat={"eps": 0.2, "steps": 10})
    r_plain = evaluate_run(std, plain, n=100, device="cpu", defense=choice)
    r_bpda = evaluate_run(std, bpda, n=100, device="cpu", defense=choice)
    path = eval_record_path(std, bpda, 100, defense=choice)
    assert path.parent.name.startswith("bit-depth-") and path.is_file()
    assert r_bpda.params["preprocessor"] == {"class": "BitDepthReduction", "randomized": False,
                                             "differentiable": False, "costly": False}
    # the quantiser's zero gradient stops plain PGD; BPDA sees through it
    acc_plain = float(r_plain.adv_correct().double().mean())
    acc_bpda = float(r_bpda.adv_correct().double().mean())
    clean = float(r_plain.clean_correct.double().mean())
    assert acc_plain >= clean - 0.05
    assert acc_bpda < acc_plain - 0.2


def test_a_defended_run_refuses_a_second_defense(runs):
    from bastion.attacks.spec import AttackSpec

    _, hgd = runs
    with pytest.raises(InputError, match="already a defended run"):
        evaluate_run(hgd, AttackSpec(threat={"steps": 2}), n=10, device="cpu",
                     defense=DefenseChoice(name="jpeg"))
    with pytest.raises(InputError, match="exactly one"):
        DefenseChoice(name="jpeg", from_run=str(hgd))


def test_cli_eval_with_defenses(runs, capsys):
    std, hgd = runs
    assert main(["eval", str(std), "--defense", "bit-depth", "--defense-option", "bits=2",
                 "--attack", "bpda-pgd", "--steps", "5", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "BitDepthReduction (deterministic, non-differentiable)" in out
    assert "robust accuracy (bpda-pgd-5, linf eps 0.1)" in out
    # a randomized defense is judged over 10 draws by default, and says so
    assert main(["eval", str(std), "--defense", "resize-pad", "--defense-option", "min_size=8",
                 "--defense-option", "max_size=10", "--defense-option", "pad_size=10",
                 "--attack", "eot-pgd", "--eot-samples", "2", "--steps", "3",
                 "--n", "30"]) == 0
    out = capsys.readouterr().out
    assert "robust on all 10 draws" in out and "one draw: mean (std)" in out
    # the trained denoiser of the HGD run in front of the standard classifier
    assert main(["eval", str(std), "--defense-from", str(hgd), "--steps", "3",
                 "--n", "30"]) == 0
    assert "GuidedDenoiser (deterministic, differentiable)" in capsys.readouterr().out
    assert main(["eval", str(std), "--defense", "jpeg", "--attack", "ddn", "--norm", "l2",
                 "--steps", "10", "--n", "20"]) == 0
    assert "average perturbation (ddn-10, l2, eq. 3)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--defense", "hgd"], "has trained weights.*--defense-from"),
    (["--defense", "tv", "--defense-option", "bogus=1"], "no option 'bogus'; valid options"),
    (["--defense", "tv", "--defense-option", "lam"], "expected KEY=VALUE"),
    (["--defense-option", "bits=2"], "--defense-option needs --defense"),
    (["--attack", "ddn"], "ddn is an L2 attack"),
    (["--attack", "pgd", "--eot-samples", "3"], "--eot-samples applies to --attack eot-pgd"),
])
def test_cli_eval_defense_errors_are_one_line(runs, capsys, argv, message):
    std, _ = runs
    assert main(["eval", str(std), "--n", "10", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


class _LyingQuantiser(Preprocessor):
    """Rounds (zero gradient) but declares itself differentiable."""

    differentiable = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 3) / 3


class _LyingNoise(Preprocessor):
    """Adds noise but declares itself deterministic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("defense, expected, absent", [
    (BitDepthReduction(bits=2), {"zero-gradients"}, {"undeclared-gradient-masking"}),
    (_LyingQuantiser(), {"zero-gradients", "undeclared-gradient-masking"}, set()),
    (_LyingNoise(), {"randomized-outputs", "undeclared-randomness"}, set()),
])
def test_checks_compare_declarations_with_behaviour(defense, expected, absent):
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 10
    names = {f.name for f in run_checks(Defended(defense, _mlp()), x, y, warn=False)}
    assert expected <= names and not (absent & names)
    # the undefended classifier raises none of them
    assert not {f.name for f in run_checks(_mlp(), x, y, warn=False)} & expected
