"""CLI and run folders end to end on the tiny digits set, and bad input everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bastion.cli import main
from bastion.config import TrainConfig, from_dict, load_config
from bastion.runs import load_model

TINY = {
    "dataset": "digits", "model": "mlp", "model_options": {"hidden": [32]},
    "method": "pgd-at", "method_options": {"threat": {"eps": 0.1, "steps": 2}},
    "epochs": 2, "batch_size": 50, "optim": {"lr": 0.1},
    "eval": {"threat": {"eps": 0.1, "steps": 2}, "n_test": 100},
}
# TINY as configs were written before the threat model: flat attack keys.
TINY_FLAT = {**TINY, "method_options": {"eps": 0.1, "steps": 2},
             "eval": {"eps": 0.1, "steps": 2, "n_test": 100}}


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def run_dir(tmp_path, recipe) -> Path:
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    return out


def test_train_eval_and_load_model(run_dir, capsys):
    for name in ("config.yaml", "model.json", "history.jsonl", "checkpoints/last.json"):
        assert (run_dir / name).exists(), name
    assert main(["eval", str(run_dir), "--eps", "0.1", "--steps", "5", "--n", "100"]) == 0
    out = capsys.readouterr().out
    assert "robust accuracy" in out and "clean accuracy" in out
    records = list((run_dir / "eval").glob("*.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    assert data["record"] == "EvalResult" and len(data["labels"]["data"]) == 100
    model = load_model(run_dir)
    assert not model.training
    assert type(model[0]).__name__ == "Normalize"
    x = torch.rand(3, 1, 8, 8)
    assert model(x).shape == (3, 10)


def test_torchattacks_interop(run_dir):
    torchattacks = pytest.importorskip("torchattacks")
    from bastion.data import load_dataset

    test = load_dataset("digits", "test")
    model = load_model(run_dir)
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5)
    x_adv = atk(test.images[:20], test.labels[:20])
    assert (x_adv - test.images[:20]).abs().max() <= 0.1 + 1e-6


def test_resume_refuses_a_different_config(run_dir, recipe, capsys):
    code = main(["train", str(recipe), "--out", str(run_dir), "--set", "optim.lr=0.5"])
    assert code == 2
    assert "different config" in capsys.readouterr().err


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--eps" in out and "default: 0.1" in out and "default: 20" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=pgdat", "unknown method 'pgdat'; valid choices:"),
        ("model=resnet9000", "unknown model 'resnet9000'; valid names:"),
        ("dataset=imagenet", "is not one of"),
        ("optm.lr=0.1", "unknown key(s) ['optm']"),
        ("epochs=ten", "expected an integer"),
        ("method_options.epsilon=0.1", "unknown option(s) ['epsilon']"),
        ("method_options.threat.eps=-0.1", "eps must be >= 0"),
        ("method_options.threat.eps=8", "larger than"),
        ("method_options.threat.epsilon=0.1", "unknown threat key(s) ['epsilon']"),
        ("eval.threat.steps=0", "steps must be an int >= 1"),
        ("eval.threat.norm=l1", "is not one of"),
        ("method_options.eps=0.2", "given both as flat options and in threat"),
    ],
)
@pytest.mark.filterwarnings("ignore:method 'pgd-at'.*deprecated:DeprecationWarning")
def test_bad_config_errors(recipe, tmp_path, capsys, override, message):
    code = main(["train", str(recipe), "--out", str(tmp_path / "x"), "--set", override])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_eval_inputs(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--eps", "-1"]) == 2
    assert "eps must be >= 0" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--n", "100000"]) == 2
    assert "n must be in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--attack", "deepfool"])
    assert "invalid choice" in capsys.readouterr().err


def test_checkpoint_with_another_architecture_is_refused(run_dir):
    meta = json.loads((run_dir / "model.json").read_text())
    meta["build"]["hidden"] = [16]
    (run_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit|mismatch|shape"):
        load_model(run_dir)


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("no/such/file.yaml")


def test_shipped_recipes_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(root.glob("*.yaml"))
    assert {"standard.yaml", "pgd-at.yaml"} <= {p.name for p in recipes}
    for path in recipes:
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig)
        from bastion.train import build_method

        build_method(cfg.method, **cfg.method_options)


def test_config_round_trip():
    from bastion.config import dump_config

    cfg = from_dict(TrainConfig, TINY)
    assert from_dict(TrainConfig, yaml.safe_load(dump_config(cfg))) == cfg


def test_init_from_loads_the_weights_of_another_run(run_dir, tmp_path):
    cfg = {**TINY, "epochs": 1, "optim": {"lr": 0.0, "weight_decay": 0.0},
           "init_from": str(run_dir)}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "ft")]) == 0
    a, b = load_model(run_dir), load_model(tmp_path / "ft")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    cfg["init_from"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "ft2")]) == 2


def test_demo_suite_exists_and_parses():
    from bastion.bench.suite import load_suite
    from bastion.cli import DEMO_SUITE

    suite, defenses = load_suite(DEMO_SUITE)
    assert [d.name for d in defenses] == ["standard", "pgd-at", "gaussian-0.25"]
    assert defenses[1].config.epochs == 2  # the demo budget
    assert defenses[2].config.method in ("gaussian-noise", "noise-augment")
    assert suite.protocol.certified is not None


def test_demo_and_bench_print_the_leaderboard_and_write_the_report(tmp_path, capsys):
    from tests.bench.test_harness import write_suite

    suite = write_suite(tmp_path)
    out = tmp_path / "bench"
    assert main(["demo", "--suite", str(suite), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| defense |" in text and "| pgd-at |" in text
    assert f"report: {out / 'report.html'}" in text
    assert (out / "report.html").is_file() and (out / "leaderboard.md").is_file()
    html = (out / "report.html").read_text()
    assert "gauss" in html and "<table" in html
    # a run folder's own report
    assert main(["report", str(out / "pgd-at"), "--out", str(tmp_path / "one.html")]) == 0
    assert (tmp_path / "one.html").is_file()
    # several folders: one page, a part each; --out is required, a folder counts once
    assert main(["report", str(out), str(out / "pgd-at"), "--out", str(tmp_path / "two.html")]
                ) == 0
    two = (tmp_path / "two.html").read_text()
    assert two.count('<h2 class="suite">') == 2 and "bastion: " in two
    assert main(["report", str(out), str(out / "pgd-at")]) == 2
    assert main(["report", str(out), str(out), "--out", str(tmp_path / "x.html")]) == 2
    assert "--out" in capsys.readouterr().err
    # user errors: no traceback, exit 2
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 2
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["bench", str(suite), "--out", str(out), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nope" in err


def test_resume_accepts_a_config_saved_before_a_new_default_key(run_dir, recipe, capsys):
    """Resume compares the checkpoint's saved config, parsed: a key it lacks is at its
    default, so it equals the new config."""
    saved = run_dir / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["init_from"]  # as written by a version without this key
    saved.write_text(yaml.safe_dump(data))
    bound = list((run_dir / "checkpoints").glob("epoch-*/run_config.json"))
    assert bound
    for path in bound:  # the config bound to the weights, as that version wrote it
        data = json.loads(path.read_text())
        del data["init_from"]
        path.write_text(json.dumps(data))
    assert main(["train", str(recipe), "--out", str(run_dir)]) == 0
    assert "different config" not in capsys.readouterr().err


def test_a_run_folder_written_before_the_threat_model_loads_and_resumes(
        run_dir, recipe, tmp_path, capsys):
    """Its config.yaml has flat method_options and eval keys: it loads (with a warning),
    equals the nested recipe, resumes from it, and is evaluated as before. (Such a folder
    predates configs saved with checkpoints, so config.yaml is what resume compares.)"""
    for path in (run_dir / "checkpoints").glob("epoch-*/run_config.json"):
        path.unlink()
    saved = run_dir / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    data["method_options"] = {"eps": 0.1, "norm": "linf", "steps": 2, "step_size": None,
                              "random_init": True, "attack_train_mode": False}
    data["eval"] = {"attack": "pgd", "eps": 0.1, "norm": "linf", "steps": 2,
                    "step_size": None, "n_test": 100, "n_train": 0, "batch_size": 500}
    saved.write_text(yaml.safe_dump(data))
    from bastion.runs import load_config_of

    with pytest.warns(DeprecationWarning):
        old = load_config_of(run_dir)
    assert old == load_config(recipe)
    assert old.method_options["threat"]["steps"] == 2 and old.eval.threat.steps == 2
    with pytest.warns(DeprecationWarning):
        assert main(["train", str(recipe), "--out", str(run_dir)]) == 0  # resumed: done
    assert "different config" not in capsys.readouterr().err
    assert "threat" in yaml.safe_load(saved.read_text())["eval"]  # rewritten, resolved
    assert main(["eval", str(run_dir), "--steps", "3", "--n", "50"]) == 0
    assert "robust accuracy (pgd-3, linf eps 0.1)" in capsys.readouterr().out
    # and an old flat recipe still trains, and resumes a run written by the nested one
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(TINY_FLAT))
    with pytest.warns(DeprecationWarning, match="threat"):
        assert load_config(flat) == load_config(recipe)
    with pytest.warns(DeprecationWarning):
        assert main(["train", str(flat), "--out", str(run_dir)]) == 0


def test_eval_flags_build_the_threat(run_dir, capsys):
    assert main(["eval", str(run_dir), "--eps", "0.5", "--norm", "l2", "--steps", "4",
                 "--n", "50"]) == 0
    assert "robust accuracy (pgd-4, l2 eps 0.5)" in capsys.readouterr().out
    (record,) = (run_dir / "eval").glob("pgd-l2-eps0.5-steps4-*.json")
    params = json.loads(record.read_text())["outcomes"][0]["params"]
    assert params["threat"] == {"eps": 0.5, "norm": "l2", "steps": 4, "step_size": None,
                                "random_init": True, "train_mode": False}
