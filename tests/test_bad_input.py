"""Every public entry point rejects bad input early, with a message naming the problem.

The table (``CLI_CASES`` and ``LIBRARY_CASES``) is the promise of issue 16: a user mistake
on the command line exits with code 2 and one ``bastion: error: ...`` message that names
the offending key, value or file, never a ``Traceback``, and writes nothing (the run folder
and the output folder are compared before and after); in the library it is a
``bastion.errors.BastionError`` with the same kind of message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bastion.attacks import pgd
from bastion.attacks.evaluate import evaluate_attack, evaluate_attacks
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.certify.config import CertificationWarning, CertifyConfig
from bastion.cli import main
from bastion.config import TrainConfig, load_config
from bastion.data import load_dataset
from bastion.errors import BastionError
from bastion.models import build
from bastion.runs import load_model
from bastion.train import build_method

# ------------------------------------------------------------------ the classic unit checks


def test_unknown_names_list_valid_choices():
    with pytest.raises(ValueError, match="valid names: .*small-cnn"):
        build("vgg")
    with pytest.raises(ValueError, match="valid choices: .*pgd-at"):
        build_method("madry")
    with pytest.raises(ValueError, match="valid choices: .*autoattack.*fgsm.*pgd"):
        AttackSpec(name="cw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset("imagenet", "train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.rand(4, 64), ValueError, "4 dimensions"),
        (torch.rand(4, 1, 8, 8).double() * 2, ValueError, r"\[0, 1\]"),
        (torch.full((4, 1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_evaluate_rejects_bad_images(images, error, match):
    model = build("mlp", input_size=8, hidden=(4,))
    with pytest.raises(error, match=match):
        evaluate_attack(model, images, torch.zeros(4, dtype=torch.int64), AttackSpec())


def test_evaluate_rejects_bad_labels():
    model = build("mlp", input_size=8, hidden=(4,))
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="3 labels but the batch has 4"):
        evaluate_attack(model, x, torch.zeros(3, dtype=torch.int64), AttackSpec())
    with pytest.raises(TypeError, match="int64"):
        evaluate_attack(model, x, torch.zeros(4), AttackSpec())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threat": {"eps": -0.01}}, ">= 0"),
        ({"threat": {"eps": 25.5}}, "pixel units, not in 0-255"),
        ({"threat": {"eps": float("inf")}}, "finite"),
        ({"threat": {"norm": "l1"}}, "valid choices: l2, linf"),
        ({"threat": {"steps": 0}}, ">= 1"),
        ({"threat": {"epsilon": 0.1}}, "unknown threat key.*valid keys"),
        ({"restarts": 0}, "restarts must be an int >= 1"),
        ({"objective": "kl"}, "valid choices: ce, dlr, margin"),
    ],
)
def test_attack_spec_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackSpec(**kwargs)
    if "threat" in kwargs:  # the same message from the threat model on its own
        with pytest.raises(ValueError, match=match):
            ThreatModel.from_dict(kwargs["threat"])


def test_attack_spec_takes_the_attack_settings_only_through_its_threat():
    with pytest.raises(TypeError, match="eps"):
        AttackSpec(eps=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="mapping"):
        AttackSpec(threat=[0.1, "linf"])  # type: ignore[arg-type]


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "empty")


# ------------------------------------------------------------------------ the shared run

TINY = {
    "dataset": "digits", "model": "mlp", "model_options": {"hidden": [16]},
    "method": "standard", "epochs": 1, "batch_size": 100, "device": "cpu",
    "eval": {"attack": None, "n_test": 50},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One tiny run folder (digits, mlp, 1 epoch) for every eval and certify case."""
    root = tmp_path_factory.mktemp("bad-input")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    run = root / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    plain = root / "plain.txt"
    plain.write_text("not a run folder\n")
    (root / "empty-folder").mkdir()
    return {"recipe": recipe, "run": run, "file": plain, "empty": root / "empty-folder"}


def _listing(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``folder`` with its size and modification time (None: no folder)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ the CLI table

_CUDA = torch.cuda.is_available()
# a device this machine does not have: cuda where there is no GPU, else an index past the last
_NO_SUCH_GPU = f"cuda:{torch.cuda.device_count()}" if _CUDA else "cuda"


@dataclass(frozen=True)
class Cli:
    """One command line that must fail cleanly.

    ``argv`` and ``words`` may name ``{recipe}``, ``{run}``, ``{file}``, ``{empty}`` (the
    shared run's paths) and ``{tmp}`` (this case's own folder, where ``files`` are written
    and where a train case writes ``{tmp}/out``, which must not appear).
    """

    argv: tuple[str, ...]
    words: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    run_copy: Callable[[Path], None] | None = None  # damage a copy of the run: {run} is it


def _truncate_weights(run: Path) -> None:
    (weights,) = run.glob("checkpoints/*/model.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])


def _train(*sets: str) -> tuple[str, ...]:
    out: list[str] = ["train", "{recipe}", "--out", "{tmp}/out"]
    for s in sets:
        out += ["--set", s]
    return tuple(out)


def _bad_file(text: str | bytes, *extra: str) -> dict[str, Any]:
    return {"argv": ("train", "{tmp}/bad.yaml", "--out", "{tmp}/out", *extra),
            "files": {"bad.yaml": text}}


CLI_CASES: dict[str, Cli] = {
    # --- config files
    "malformed-yaml": Cli(**_bad_file("epochs: [1\n"),
                          words=("{tmp}/bad.yaml", "not a valid YAML config", "line 2")),
    "yaml-tab": Cli(**_bad_file("epochs:\t3\n"), words=("{tmp}/bad.yaml", "'\\t'")),
    "python-tag": Cli(**_bad_file('x: !!python/object/apply:os.system ["touch {tmp}/pwned"]\n'),
                      words=("{tmp}/bad.yaml", "'!!python/object/apply:os.system' is not "
                             "allowed")),
    "empty-file": Cli(**_bad_file(""), words=("{tmp}/bad.yaml", "the config file is empty")),
    "non-mapping": Cli(**_bad_file("- epochs\n- 3\n"),
                       words=("{tmp}/bad.yaml", "must be a mapping", "got a list")),
    "binary-file": Cli(**_bad_file(b"\xff\xfe\x81" * 20), words=("{tmp}/bad.yaml", "UTF-8")),
    "missing-config": Cli(("train", "{tmp}/nope.yaml", "--out", "{tmp}/out"),
                          ("'{tmp}/nope.yaml'", "does not exist")),
    "unknown-key": Cli(_train("optm.lr=0.1"), ("unknown key(s) ['optm']", "valid keys",
                                               "--set optm.lr=0.1")),
    "unknown-nested-key": Cli(_train("optim.learning_rate=0.1"),
                              ("config.optim: unknown key(s) ['learning_rate']",)),
    "wrong-type-int": Cli(_train("epochs=ten"), ("config.epochs", "expected an integer",
                                                 "'ten'")),
    "wrong-type-float": Cli(_train("optim.lr=fast"), ("config.optim.lr", "'fast'")),
    "wrong-type-mapping": Cli(_train("model_options=5"), ("config.model_options", "mapping")),
    "set-without-value": Cli(_train("batch_size"), ("--set expects key=value", "'batch_size'")),
    "set-bad-yaml-value": Cli(_train("optim.lr=["), ("--set optim.lr", "'['")),
    "batch-size-0": Cli(_train("batch_size=0"), ("config.batch_size", "got 0", "{recipe}")),
    "epochs-0": Cli(_train("epochs=0"), ("config.epochs", "got 0")),
    "train-subset-0": Cli(_train("train_subset=0"), ("config.train_subset", "got 0")),
    "lr-nan": Cli(_train("optim.lr=.nan"), ("config.optim.lr", "finite", "nan")),
    "lr-inf": Cli(_train("optim.lr=.inf"), ("config.optim.lr", "finite", "inf")),
    "lr-negative": Cli(_train("optim.lr=-0.1"), ("config.optim.lr", "-0.1")),
    "milestone-outside": Cli(_train("schedule.milestones=[0.5,1.5]"),
                             ("config.schedule.milestones[1]", "1.5")),
    "patience-0": Cli(_train("patience=0"), ("config.patience", "got 0")),
    "eval-n-test-0": Cli(_train("eval.n_test=0"), ("config.eval.n_test", "got 0")),
    "device-foo": Cli(_train("device=foo"), ("config.device", "'foo'", "'auto', 'cpu'")),
    "device-missing-gpu": Cli(_train(f"device={_NO_SUCH_GPU}"),
                              ("config.device", repr(_NO_SUCH_GPU), "'auto', 'cpu'")),
    "unknown-method": Cli(_train("method=madry"), ("config.method", "'madry'", "pgd-at")),
    "unknown-model": Cli(_train("model=vgg"), ("config.model", "'vgg'", "small-cnn")),
    "unknown-dataset": Cli(_train("dataset=imagenet"),
                           ("config.dataset", "'imagenet'", "'fashion-mnist'")),
    "bad-method-option": Cli(_train("method_options.beta=1"),
                             ("config.method_options", "'beta'", "'standard'")),
    "bad-method-value": Cli(_train("method=pgd-at", "method_options.threat.steps=0"),
                            ("config.method_options", "steps must be an int >= 1")),
    "bad-model-option": Cli(_train("model_options.depth=3"),
                            ("config.model_options", "depth", "valid options: hidden")),
    "model-too-big-for-images": Cli(_train("model=small-cnn", "model_options={{}}"),
                                    ("config.model", "'small-cnn'", "1x8x8", "too small")),
    "config-eval-eps-2-linf": Cli(_train("eval.attack=pgd", "eval.threat.eps=2"),
                           ("config.eval.threat", "eps=2", "larger than 1")),
    # --- bastion eval
    "eval-batch-size-0": Cli(("eval", "{run}", "--batch-size", "0"), ("--batch-size", "got 0")),
    "eval-n-0": Cli(("eval", "{run}", "--n", "0"), ("--n", "got 0")),
    "eval-n-beyond-test-set": Cli(("eval", "{run}", "--n", "100000"),
                                  ("n must be in [1, 297]", "100000")),
    "eval-eps-negative": Cli(("eval", "{run}", "--eps", "-1"), ("eps must be >= 0", "-1")),
    "eval-eps-2-linf": Cli(("eval", "{run}", "--eps", "2"), ("eps=2", "larger than 1")),
    "eval-steps-0": Cli(("eval", "{run}", "--steps", "0"), ("steps", "got 0")),
    "eval-restarts-0": Cli(("eval", "{run}", "--restarts", "0"), ("restarts", "got 0")),
    "eval-seed-negative": Cli(("eval", "{run}", "--seed", "-3"), ("--seed", "-3")),
    "eval-norm-l3": Cli(("eval", "{run}", "--norm", "l3"), ("invalid choice", "'l3'")),
    "eval-attack-unknown": Cli(("eval", "{run}", "--attack", "deepfool"),
                               ("invalid choice", "'deepfool'")),
    "eval-missing-run": Cli(("eval", "{tmp}/nope"), ("'{tmp}/nope'", "does not exist")),
    "eval-run-is-a-file": Cli(("eval", "{file}"), ("'{file}'", "is a file")),
    "eval-not-a-run-folder": Cli(("eval", "{empty}"), ("{empty}", "config.yaml")),
    "eval-truncated-weights": Cli(("eval", "{run}", "--n", "10"),
                                  ("model.safetensors", "truncated or corrupt"),
                                  run_copy=_truncate_weights),
    # --- bastion certify
    "certify-n0-0": Cli(("certify", "{run}", "--n0", "0"), ("n0 must be an int >= 1", "got 0")),
    "certify-n-0": Cli(("certify", "{run}", "--n", "0"), ("n must be an int >= 1", "got 0")),
    "certify-alpha-0": Cli(("certify", "{run}", "--alpha", "0"), ("alpha", "(0, 1)", "0.0")),
    "certify-alpha-1": Cli(("certify", "{run}", "--alpha", "1"), ("alpha", "(0, 1)", "1.0")),
    "certify-n-inputs-0": Cli(("certify", "{run}", "--n-inputs", "0"), ("n_inputs", "got 0")),
    "certify-skip-0": Cli(("certify", "{run}", "--skip", "0"), ("skip", "got 0")),
    "certify-radius-negative": Cli(("certify", "{run}", "--radius", "-1"), ("radius", "-1.0")),
    "certify-batch-size-0": Cli(("certify", "{run}", "--batch-size", "0"),
                                ("batch_size", "got 0")),
    "certify-sigma-0": Cli(("certify", "{run}", "--sigma", "0"), ("sigma", "0.0")),
    "certify-two-class-with-radius": Cli(("certify", "{run}", "--two-class", "--radius", "0.5"),
                                         ("two_class and radius exclude each other",)),
    "certify-sequential-n-below-first-look": Cli(("certify", "{run}", "--radius", "0.5", "--n",
                                                  "50"), ("n must be >= 100 with radius",)),
    "certify-seed-too-big": Cli(("certify", "{run}", "--seed", str(2**32)), ("seed", "2^32")),
    "certify-device-foo": Cli(("certify", "{run}", "--device", "foo"), ("device", "'foo'")),
    "certify-noise-unknown": Cli(("certify", "{run}", "--noise", "cauchy"),
                                 ("invalid choice", "'cauchy'")),
    "certify-compare-missing": Cli(("certify", "{run}", "--compare", "{tmp}/other.jsonl"),
                                   ("--compare", "'{tmp}/other.jsonl'", "does not exist")),
    "certify-missing-run": Cli(("certify", "{tmp}/nope"), ("'{tmp}/nope'", "does not exist")),
    "certify-run-is-a-file": Cli(("certify", "{file}"), ("'{file}'", "is a file")),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_user_mistake_exits_2_with_a_message_and_writes_nothing(
        name, trained, tmp_path, capsys, monkeypatch):
    case = CLI_CASES[name]
    monkeypatch.delenv("BASTION_DEBUG", raising=False)
    run = trained["run"]
    if case.run_copy is not None:
        run = tmp_path / "run-copy"
        shutil.copytree(trained["run"], run)
        case.run_copy(run)
    env = {"recipe": trained["recipe"], "run": run, "file": trained["file"],
           "empty": trained["empty"], "tmp": tmp_path}
    for file_name, content in case.files.items():
        path = tmp_path / file_name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.format(**env))
    argv = [a.format(**env) for a in case.argv]
    before = {k: _listing(Path(env[k])) for k in ("run", "empty")}
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: bad choices exit 2 as well
        code = stop.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2, text
    assert "Traceback" not in text
    for word in case.words:
        assert word.format(**env) in text, (word, text)
    if "invalid choice" not in case.words:
        assert "bastion: error: " in out.err
        assert len(out.err.strip().splitlines()) <= 2, out.err  # one or two lines
    # nothing written: not the run folder, not the output folder, no file the YAML named
    assert {k: _listing(Path(env[k])) for k in ("run", "empty")} == before
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "pwned").exists()


def test_the_table_is_at_least_forty_cases():
    assert len(CLI_CASES) + len(LIBRARY_CASES) >= 40
    assert len(CLI_CASES) >= 40


# -------------------------------------------------------------------- the library table


def _mlp8() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("mlp", input_size=8, hidden=(4,)).eval()


def _x(n: int = 4, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def _y(n: int = 4) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)


def _empty_config(tmp: Path) -> Any:
    (tmp / "empty.yaml").write_text("")
    return load_config(tmp / "empty.yaml")


@dataclass(frozen=True)
class Lib:
    """One library call that must raise a ``BastionError`` of ``kind`` whose message holds
    every one of ``words``; ``call`` gets this case's folder and the shared run's paths."""

    call: Callable[[Path, dict[str, Path]], Any]
    kind: type[Exception]
    words: tuple[str, ...]


LIBRARY_CASES: dict[str, Lib] = {
    "pgd-labels-as-a-list": Lib(lambda t, r: pgd(_mlp8(), _x(), [0, 1, 2, 3], eps=0.1),
                                TypeError, ("target must be a torch.Tensor", "int64 labels of "
                                            "shape [4]", "got list")),
    "pgd-labels-out-of-range": Lib(lambda t, r: pgd(_mlp8(), _x(), _y() + 10, eps=0.1),
                                   ValueError, ("class indices in [0, 9]", "[10, 10]")),
    "pgd-wrong-image-size": Lib(lambda t, r: pgd(_mlp8(), _x(size=28), _y(), eps=0.1),
                                ValueError, ("[N, 1, 8, 8]", "(4, 1, 28, 28)")),
    "small-cnn-32-into-28": Lib(lambda t, r: build("small-cnn")(torch.rand(2, 1, 32, 32)),
                                ValueError, ("[N, 1, 28, 28]", "built for 28x28",
                                             "(2, 1, 32, 32)")),
    "wrong-channel-count": Lib(lambda t, r: _mlp8()(torch.rand(2, 3, 8, 8)),
                               ValueError, ("[N, 1, 8, 8]", "(2, 3, 8, 8)")),
    "pgd-nan-input": Lib(lambda t, r: pgd(_mlp8(), torch.full((4, 1, 8, 8), float("nan")),
                                          _y(), eps=0.1), ValueError, ("contains NaN",)),
    "pgd-values-outside-0-1": Lib(lambda t, r: pgd(_mlp8(), _x() * 255, _y(), eps=0.1),
                                  ValueError, ("[0, 1]", "normalisation inside the model")),
    "evaluate-batch-size-0": Lib(lambda t, r: evaluate_attack(_mlp8(), _x(), _y(), AttackSpec(),
                                                              batch_size=0),
                                 ValueError, ("batch_size", "got 0")),
    "evaluate-not-an-attack": Lib(lambda t, r: evaluate_attacks(_mlp8(), _x(), _y(), ["pgd"]),
                                  TypeError, ("AttackSpec", "str")),
    "evaluate-labels-out-of-range": Lib(
        lambda t, r: evaluate_attack(_mlp8(), _x(), _y() - 1, AttackSpec()),
        ValueError, ("class indices", "[-1, -1]")),
    "load-model-of-a-file": Lib(lambda t, r: load_model(r["file"]), ValueError,
                                ("is a file",)),
    "load-model-missing": Lib(lambda t, r: load_model(t / "nope"), FileNotFoundError,
                              ("does not exist",)),
    "load-config-empty-file": Lib(lambda t, r: _empty_config(t), ValueError,
                                  ("empty.yaml", "the config file is empty")),
    "train-config-batch-size-0": Lib(lambda t, r: TrainConfig(batch_size=0), ValueError,
                                     ("config.batch_size", "got 0")),
    "certify-config-n-0": Lib(lambda t, r: CertifyConfig(n=0), ValueError, ("n must be", "0")),
    "certify-config-device": Lib(lambda t, r: CertifyConfig(device=_NO_SUCH_GPU), ValueError,
                                 ("device", repr(_NO_SUCH_GPU), "'auto', 'cpu'")),
}


@pytest.mark.parametrize("name", list(LIBRARY_CASES))
def test_library_user_mistake_is_a_bastion_error_naming_it(name, trained, tmp_path):
    case = LIBRARY_CASES[name]
    with pytest.raises(BastionError) as err:
        case.call(tmp_path, trained)
    assert isinstance(err.value, case.kind)  # also the built-in a Python caller expects
    for word in case.words:
        assert word in str(err.value), (word, str(err.value))


# --------------------------------------------------- debug, bugs, interrupts, subprocesses


def test_debug_flag_and_environment_variable_show_the_traceback(trained, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.delenv("BASTION_DEBUG", raising=False)
    argv = ["train", str(trained["recipe"]), "--out", str(tmp_path / "out"), "--set",
            "batch_size=0"]
    for full in (["--debug", *argv], [*argv, "--debug"]):  # before or after the command
        assert main(full) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "ConfigError" in err
        assert err.rstrip().endswith("(config file {}, with --set batch_size=0)".format(
            trained["recipe"]))
    monkeypatch.setenv("BASTION_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_anything_else_is_a_bug_and_keeps_its_traceback(trained, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in bastion")

    monkeypatch.setattr("bastion.cli.evaluate_run", broken)
    with pytest.raises(RuntimeError, match="a bug in bastion"):
        main(["eval", str(trained["run"]), "--n", "10"])


def test_keyboard_interrupt_says_how_to_resume(trained, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bastion.cli.evaluate_run", interrupted)
    assert main(["eval", str(trained["run"]), "--n", "10"]) == 130
    assert "rerun the same command" in capsys.readouterr().err


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DEBUG"}
    cmd = [sys.executable, "-m", "bastion.cli", "train", str(bad), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"bastion: error: {bad}: not a valid YAML config: line 2, column 1: expected ',' or "
        "']', but got '<stream end>' (while parsing a flow sequence)"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**env, "BASTION_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------- certificates that n and alpha rule out


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"n": 9, "alpha": 0.001}, ("cannot certify any input", "0.4642", "use n >= 10")),
    ({"n": 10, "alpha": 0.001}, ("only if all 10 draws", "at most radius 0.000744",
                                 "sigma * Phi^-1(alpha^(1/n))")),
    ({"n": 10, "alpha": 0.001, "two_class": True}, ("cannot certify any input",
                                                    "(alpha/2)^(1/n)")),
    ({"n": 100, "alpha": 0.001, "radius": 0.5}, ("radius=0.5 cannot be certified",
                                                 "0.3751", "n >= 331")),
    ({"n": 1000, "alpha": 0.001, "radius": 2.0}, ("0.6072", "(alpha/2)^(1/n)",
                                                  "no n up to 10^8")),
])
def test_settings_that_rule_out_the_certificate_warn_before_any_draw(kwargs, words):
    with pytest.warns(CertificationWarning) as record:
        CertifyConfig(**kwargs)
    message = str(record[0].message)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("kwargs", [{}, {"n": 100}, {"n": 14}, {"radius": 0.25, "n": 1000},
                                    {"n": 100, "two_class": True}])
def test_settings_that_allow_the_certificate_do_not_warn(kwargs, recwarn):
    cfg = CertifyConfig(**kwargs)
    assert not [w for w in recwarn if issubclass(w.category, CertificationWarning)]
    assert cfg.max_radius() > 0


def test_the_cap_is_the_gaussian_formula():
    """sigma Phi^-1(alpha^(1/n)): the radius when all n draws land on the top class."""
    from scipy.stats import norm

    cfg = CertifyConfig(sigma=0.5, n=1000, alpha=0.01)
    assert cfg.max_radius() == pytest.approx(0.5 * norm.ppf(0.01 ** (1 / 1000)), rel=1e-9)
    seq = CertifyConfig(sigma=0.5, n=1000, alpha=0.01, radius=0.1)
    assert seq.max_radius() == pytest.approx(0.5 * norm.ppf(0.005 ** (1 / 1000)), rel=1e-9)


def test_cli_prints_the_warning_and_still_certifies(trained, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    code = main(["certify", str(trained["run"]), "--n", "10", "--n0", "5", "--n-inputs", "2",
                 "--skip", "50", "--batch-size", "16", "--device", "cpu", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "bastion: warning: n=10 at alpha=0.001 certifies an input only if all 10" in err
    assert "Traceback" not in err and "warnings.warn" not in err
    assert out.is_file()


def _deny_writes_under(monkeypatch, root: Path) -> None:
    """Make creating anything under ``root`` fail as an unwritable folder does (the tests run
    as root in CI, where chmod cannot make a folder unwritable)."""
    import pathlib
    import tempfile

    real_mkdir, real_mkstemp = pathlib.Path.mkdir, tempfile.mkstemp

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(root)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own name)
        if dir is not None and str(dir).startswith(str(root)):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("command", ["train", "eval", "certify"])
def test_an_unwritable_output_is_a_message_not_a_traceback(trained, tmp_path, monkeypatch,
                                                           capsys, command):
    denied = tmp_path / "denied"
    _deny_writes_under(monkeypatch, denied)
    if command == "train":
        argv = ["train", str(trained["recipe"]), "--out", str(denied / "run")]
    elif command == "eval":
        run = tmp_path / "copy"
        shutil.copytree(trained["run"], run)
        _deny_writes_under(monkeypatch, run / "eval")
        denied = run / "eval"
        argv = ["eval", str(run), "--n", "10"]
    else:
        argv = ["certify", str(trained["run"]), "--n0", "8", "--n", "100", "--alpha", "0.1",
                "--n-inputs", "2", "--out", str(denied / "rows.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot write" in err and str(denied) in err, err
