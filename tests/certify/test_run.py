"""Dataset certification: resume, sharding, batching independence, summary, plot and CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bastion.certify.run import (
    certify_dataset,
    certify_shard,
    default_radii,
    dist_info,
    input_seed,
    merge_shards,
    plot_certified_accuracy,
    read_header,
    read_rows,
    selected_indices,
    shard_path,
    summarize,
)
from bastion.cli import main
from bastion.config import EvalConfig, TrainConfig
from bastion.data import load_dataset
from bastion.models import build
from bastion.noise import Gaussian
from bastion.runs import train_from_config

OPTS = dict(n0=16, n=256, alpha=0.01, skip=2, max_inputs=12, seed=5, batch_size=128,
            memory_format="contiguous")


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=()).eval()
    with torch.no_grad():
        model[1].layers.out.weight.mul_(6.0)
    return model, test.images[:40], test.labels[:40]


def strip_seconds(text: str) -> str:
    return re.sub(r'"seconds": [0-9.e-]+', '"seconds": X', text)


def test_rows_file_and_fields(setup, tmp_path: Path) -> None:
    model, x, y = setup
    seen: list[tuple[int, int]] = []
    rows = certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "c.jsonl",
                           progress=lambda d, t: seen.append((d, t)), **OPTS)
    assert [r["index"] for r in rows] == list(range(0, 24, 2))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 13 and json.loads(lines[0])["bastion-certify"] == 1
    header = read_header(tmp_path / "c.jsonl")
    assert header["sigma"] == 0.25 and header["n"] == 256 and header["mode"] == "certify"
    r = rows[0]
    assert set(r) == {"index", "label", "prediction", "radius", "correct", "abstained",
                      "counts", "p_lower", "seconds"}
    assert r["counts"]["n"] == 256 and 0 <= r["counts"]["nA"] <= 256
    for row in rows:
        assert row["correct"] == (not row["abstained"] and row["prediction"] == row["label"])
        assert (row["radius"] == 0) or not row["abstained"]
    assert read_rows(tmp_path / "c.jsonl") == rows


def test_resume_after_interruption_gives_the_same_rows(setup, tmp_path: Path) -> None:
    model, x, y = setup
    full = tmp_path / "full.jsonl"
    rows = certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=full,
                           inputs_per_call=4, **OPTS)
    # an interrupted run: 5 complete rows, then half of the sixth line
    cut = tmp_path / "cut.jsonl"
    lines = full.read_bytes().split(b"\n")
    cut.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][: len(lines[6]) // 2])
    assert len(read_rows(cut)) == 5
    calls: list[int] = []
    resumed = certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=cut,
                              inputs_per_call=3, progress=lambda d, t: calls.append(d), **OPTS)
    assert calls[0] == 5  # started after the last complete row
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip
    assert strip_seconds(cut.read_text()) == strip_seconds(full.read_text())
    # a finished file resumes to the same rows without new work
    again = certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=full, **OPTS)
    assert again == rows


def test_sharded_equals_single_process(setup, tmp_path: Path) -> None:
    model, x, y = setup
    single = tmp_path / "single.jsonl"
    certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=single, inputs_per_call=5,
                    **OPTS)
    merged = tmp_path / "merged.jsonl"
    for rank in (0, 1):  # two ranks, run here one after the other
        certify_shard(model, x, y, Gaussian(sigma=0.25), rank=rank, world_size=2,
                      out_path=shard_path(merged, rank, 2), inputs_per_call=2, **OPTS)
    assert [r["index"] for r in read_rows(shard_path(merged, 1, 2))] == list(range(2, 24, 4))
    rows = merge_shards(merged, 2)
    assert [r["index"] for r in rows] == list(range(0, 24, 2))
    assert strip_seconds(merged.read_text()) == strip_seconds(single.read_text())


def test_results_do_not_depend_on_grouping_and_resume_refuses_other_settings(
    setup, tmp_path: Path
) -> None:
    model, x, y = setup
    a = certify_dataset(model, x, y, Gaussian(sigma=0.5), out_path=tmp_path / "a.jsonl",
                        inputs_per_call=1, **{**OPTS, "batch_size": 64})
    b = certify_dataset(model, x, y, Gaussian(sigma=0.5), out_path=tmp_path / "b.jsonl",
                        inputs_per_call=12, **OPTS)
    assert [r["counts"] for r in a] == [r["counts"] for r in b]
    with pytest.raises(ValueError, match="other parameters"):
        certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "a.jsonl",
                        **OPTS)
    with pytest.raises(ValueError, match="not this run's"):
        certify_shard(model, x, y, Gaussian(sigma=0.5), rank=1, world_size=2,
                      out_path=tmp_path / "a.jsonl", **OPTS)


def test_sequential_mode_rows(setup, tmp_path: Path) -> None:
    model, x, y = setup
    rows = certify_dataset(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "s.jsonl",
                           radius=0.1, n_first=32, **OPTS)
    assert read_header(tmp_path / "s.jsonl")["mode"] == "sequential"
    assert all(r["radius"] in (0.0, 0.1) for r in rows)
    assert all("looks" in r["counts"] and r["counts"]["n"] <= 256 for r in rows)


def test_summarize_by_hand() -> None:
    rows = [
        {"index": 0, "label": 1, "prediction": 1, "radius": 0.6, "abstained": False,
         "seconds": 1.0},
        {"index": 1, "label": 2, "prediction": 2, "radius": 0.2, "abstained": False,
         "seconds": 1.0},
        {"index": 2, "label": 0, "prediction": 3, "radius": 0.9, "abstained": False,
         "seconds": 1.0},
        {"index": 3, "label": 0, "prediction": 0, "radius": 0.0, "abstained": True,
         "seconds": 1.0},
    ]
    s = summarize(rows, radii=[0.0, 0.25, 0.5, 0.75])
    assert s["certified_accuracy"] == [0.5, 0.25, 0.25, 0.0]
    assert s["acr"] == pytest.approx((0.6 + 0.2) / 4)
    assert s["abstain_rate"] == 0.25 and s["n"] == 4 and s["seconds"] == 4.0
    assert default_radii(rows) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii([{"radius": 1.6}]) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    def fake(seed: int, scale: float) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        r = torch.rand(50, generator=g) * scale
        return [{"index": i, "label": 0, "prediction": 0,
                 "radius": float(r[i]) if r[i] >= 0.05 else 0.0,
                 "abstained": bool(r[i] < 0.05)} for i in range(50)]

    out = plot_certified_accuracy({"sigma=0.25": fake(0, 1.0), "sigma=0.5": fake(1, 2.0)},
                                  tmp_path / "plots" / "curve.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "plots").glob(".*tmp"))  # atomic write left nothing behind


def test_helpers(monkeypatch) -> None:
    assert selected_indices(10, 3) == [0, 3, 6, 9]
    assert selected_indices(10, 3, 2) == [0, 3]
    assert input_seed(0, 1) != input_seed(0, 2) != input_seed(1, 1)
    assert 0 <= input_seed(2**40, 2**40) < 2**63
    assert shard_path("a/b.jsonl", 1, 4) == Path("a/b.rank1-of-4.jsonl")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dist_info(None, None) == (2, 3)
    assert dist_info(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        dist_info(3, 2)
    with pytest.raises(ValueError, match="skip"):
        selected_indices(10, 0)


def test_cli_certify_on_a_trained_run(tmp_path: Path, capsys) -> None:
    cfg = TrainConfig(dataset="digits", model="mlp", model_options={"hidden": [16]},
                      method="gaussian-noise", method_options={"sigma": 0.25}, epochs=1,
                      batch_size=64, channels_last=False, device="cpu",
                      eval=EvalConfig(attack=None, n_test=50))
    run = tmp_path / "run"
    train_from_config(cfg, run)
    args = ["certify", str(run), "--sigma", "0.25", "--n0", "10", "--n", "200",
            "--n-inputs", "6", "--skip", "3", "--batch-size", "64", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ACR" in out and "certified accuracy at r=0.25" in out
    rows_file = run / "certify" / "gaussian-sigma0.25-n200-alpha0.001-last.jsonl"
    assert len(read_rows(rows_file)) == 6
    assert rows_file.with_suffix(".png").is_file()
    # sequential mode and a comparison curve on the same plot
    other = tmp_path / "seq.jsonl"
    assert main(args + ["--radius", "0.1", "--out", str(other),
                        "--compare", str(rows_file)]) == 0
    assert other.with_suffix(".png").is_file()
    seq_out = capsys.readouterr().out
    assert "certified accuracy at r=0.1 " in seq_out and "of at most 200" in seq_out
    assert "ACR" not in seq_out and "r=0.25" not in seq_out
    assert main(["certify", str(tmp_path / "missing")]) == 2


def test_cli_compare_takes_several_files_after_one_flag_or_repeated() -> None:
    from bastion.cli import build_parser

    p = build_parser()
    one = p.parse_args(["certify", "run", "--compare", "a.jsonl", "b.jsonl", "--n", "10"])
    assert one.compare == ["a.jsonl", "b.jsonl"] and one.n == 10
    rep = p.parse_args(["certify", "run", "--compare", "a.jsonl", "--compare", "b.jsonl"])
    assert rep.compare == ["a.jsonl", "b.jsonl"]
