"""`bastion train` with the sub-sampling method on two-view Fashion-MNIST and `bastion
certify-mmcert`: rows, table, plot, per-direction radii, resume, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bastion.certify.rowstore import read_rows
from bastion.certify.subsampling_bound import Subsampling, largest_budget
from bastion.cli import main

RECIPE = {
    "dataset": "fashion-mnist-pairs", "model": "mm-small-cnn",
    "model_options": {"channels": [1, 1], "names": ["view1", "view2"], "embedding": 32},
    "method": "subsample", "method_options": {"keep": [60, 60]},
    "epochs": 1, "batch_size": 64, "train_subset": 512, "channels_last": False,
    "optim": {"name": "adam", "lr": 0.002}, "eval": {"attack": None, "n_test": 100},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from bastion.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    root = tmp_path_factory.mktemp("mmcert")
    recipe = root / "mmcert.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = root / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    return out


def test_certify_mmcert_table_rows_and_resume(run, capsys):
    args = ["certify-mmcert", str(run), "--n0", "20", "--n", "300", "--n-inputs", "6",
            "--batch-size", "300", "--budgets", "0", "1", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "joint" in out and "view1" in out and "view2" in out and "r=1" in out
    files = sorted((run / "certify").glob("mmcert-k60x60-n300-*.jsonl"))
    assert len(files) == 1 and files[0].with_suffix(".png").is_file()
    rows = read_rows(files[0])
    assert len(rows) == 6
    setup = Subsampling((784, 784), (60, 60))
    for r in rows:  # every direction's radius is the condition's largest budget
        if r.abstained:
            assert r.radius == 0 and set(r.details["radii"].values()) == {0}
            continue
        for name, w in {"joint": (1, 1), "view1": (1, 0), "view2": (0, 1)}.items():
            assert r.details["radii"][name] == largest_budget(
                r.details["p_lower"], r.details["p_upper_b"], setup, w)
    before = files[0].read_text()
    assert main(args) == 0  # resumes: nothing left to do, the file unchanged
    assert files[0].read_text() == before


def test_certify_mmcert_errors_are_one_line(run, capsys):
    assert main(["certify-mmcert", str(run), "--keep", "60", "--n", "10", "--n0", "5",
                 "--n-inputs", "1", "--bound", "complement"]) == 0  # one keep for every view
    capsys.readouterr()
    assert main(["certify-mmcert", str(run), "--keep", "900", "--n-inputs", "1"]) != 0
    err = capsys.readouterr().err
    assert "keep" in err and "Traceback" not in err
    assert main(["certify-mmcert", str(run), "--budgets", "-1"]) != 0
    assert "Traceback" not in capsys.readouterr().err
    assert main(["certify-mmcert", str(run), "--directions", "ratio=1,x"]) != 0
    assert "NAME=W1,W2" in capsys.readouterr().err


def test_certify_mmcert_along_a_ratio(run, tmp_path, capsys):
    out = tmp_path / "ratio.jsonl"
    assert main(["certify-mmcert", str(run), "--n0", "20", "--n", "300", "--n-inputs", "3",
                 "--batch-size", "320", "--directions", "ratio=1,2", "--out", str(out)]) == 0
    assert "ratio" in capsys.readouterr().out
    setup = Subsampling((784, 784), (60, 60))
    for r in read_rows(out):
        t = 0 if r.abstained else largest_budget(r.details["p_lower"], r.details["p_upper_b"],
                                                 setup, (1, 2))
        assert r.radius == t and r.details["radii"] == {"ratio": t}


def test_randomized_ablation_on_the_side_by_side_views(tmp_path, capsys):
    """One modality of 28x56 (a non-square input: the run records both sides) certified
    with the complement bound."""
    from bastion.data import load_dataset
    from bastion.runs import load_model

    try:
        load_dataset("fashion-mnist", "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    recipe = {**RECIPE, "dataset": "fashion-mnist-pairs-wide", "model_options": {},
              "method_options": {"keep": [120]}}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "wide.yaml"), "--out", str(out)]) == 0
    model = load_model(out)
    assert model[0].input_size == (28, 56)
    assert main(["certify-mmcert", str(out), "--bound", "complement", "--n0", "10", "--n",
                 "100", "--n-inputs", "2", "--batch-size", "110"]) == 0
    assert "joint" in capsys.readouterr().out
    files = list((out / "certify").glob("ablation-k120-n100-*.jsonl"))
    assert len(files) == 1 and len(read_rows(files[0])) == 2


def test_per_epoch_evaluation_is_on_subsamples(run, tmp_path, capsys):
    """The history's test accuracy is the base classifier on fixed sub-samples (what it
    votes on), and an attack in the per-epoch evaluation is refused before anything is
    written."""
    from bastion.runs import read_history

    hist = read_history(run)
    assert hist is not None and 0 < hist.epochs[-1]["test_clean_acc"] <= 1
    bad = {**RECIPE, "eval": {"attack": "pgd", "n_test": 10}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "eval.attack: null" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_fixed_subsamples_are_reproducible():
    import torch

    from bastion.models.ablation import ModalityLayout
    from bastion.train.subsampling import FixedSubsamples, SubSampledTraining

    class Data:
        images = torch.rand(5, 2, 6, 6)
        labels = torch.arange(5)

    layout = ModalityLayout((1, 1))
    a = FixedSubsamples.of(Data, SubSampledTraining(keep=(4,)), layout, 3, seed=1)
    b = FixedSubsamples.of(Data, SubSampledTraining(keep=(4,)), layout, 3, seed=1)
    assert a.images.shape == (3, 4, 6, 6) and len(a) == 3
    assert torch.equal(a.images, b.images)
    assert (a.images[:, 2:].flatten(2).sum(2) == 4).all()
