"""`bastion train` with the GloRo and hinge-KR recipes and `bastion certify-lipschitz` on the
tiny digits set: rows, table, plot, resume, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bastion.certify.rowstore import read_rows
from bastion.cli import main
from bastion.config import load_config
from bastion.runs import certify_lipschitz_run

GLORO = {
    "dataset": "digits", "model": "lipschitz-cnn",
    "model_options": {"channels": [8, 16], "hidden": [32]},
    "method": "gloro", "method_options": {"eps": 0.3, "warmup_epochs": 2},
    "epochs": 3, "batch_size": 64, "optim": {"name": "adam", "lr": 0.003},
    "eval": {"attack": "pgd", "threat": {"eps": 0.3, "norm": "l2", "steps": 5},
             "n_test": 100},
}


@pytest.fixture(scope="module")
def gloro_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gloro")
    recipe = root / "gloro.yaml"
    recipe.write_text(yaml.safe_dump(GLORO))
    out = root / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    return out


def test_certify_lipschitz_prints_the_table_and_resumes(gloro_run, capsys):
    assert main(["certify-lipschitz", str(gloro_run), "--n-inputs", "50"]) == 0
    out = capsys.readouterr().out
    assert "certified accuracy at r=0.25" in out and "gram, sound" in out
    files = sorted((gloro_run / "certify").glob("lipschitz-*.jsonl"))
    assert [f.name for f in files] == ["lipschitz-gram-last-skip1-n50.jsonl"]
    rows = read_rows(files[0])
    assert len(rows) == 50 and files[0].with_suffix(".png").is_file()
    assert any(r.radius > 0 for r in rows)
    again = certify_lipschitz_run(gloro_run, n_inputs=50)  # resumed: the same rows
    assert [r.radius for r in again.rows] == [r.radius for r in rows]
    summary = again.summary
    assert summary is not None and 0.0 < summary["certified_accuracy"][0] <= 1.0


def test_certify_lipschitz_bad_input_is_one_line(gloro_run, tmp_path, capsys):
    assert main(["certify-lipschitz", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["certify-lipschitz", str(gloro_run), "--radii", "-1"]) == 2
    assert "radii" in capsys.readouterr().err


def test_shipped_lipschitz_recipes_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name, method in [("gloro", "gloro"), ("gloro-top2", "gloro"), ("gloro-lls", "gloro"),
                         ("hkr", "hkr")]:
        cfg = load_config(root / f"{name}.yaml")
        assert cfg.method == method and cfg.model == "lipschitz-cnn"
