"""Dataset certification: resume, sharding, batching independence, any certifier, CLI."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from bastion.certify.pipeline import (
    Certifier,
    Shard,
    certify_dataset,
    certify_shard,
    dist_info,
    input_seed,
    selected_indices,
)
from bastion.certify.registry import CERTIFIERS, certify_smoothing, smoothing_certifier
from bastion.certify.rowstore import (
    RowStore,
    lock_path,
    merge_shards,
    read_header,
    read_rows,
    shard_path,
)
from bastion.certify.smoothing_certifiers import CohenCertifier, SequentialCertifier
from bastion.cli import main
from bastion.config import EvalConfig, TrainConfig
from bastion.data import load_dataset
from bastion.errors import RunLockedError
from bastion.models import build
from bastion.noise import Gaussian
from bastion.records import Certificate, CertificationRow
from bastion.runs import train_from_config

OPTS = dict(n0=16, n=256, alpha=0.01, skip=2, max_inputs=12, seed=5, batch_size=128,
            memory_format="contiguous")
RUN = dict(skip=2, max_inputs=12, seed=5)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=()).eval()
    with torch.no_grad():
        model[1].layers.out.weight.mul_(6.0)
    return model, test.images[:40], test.labels[:40]


def cohen(model: torch.nn.Module, sigma: float = 0.25, batch_size: int = 128) -> CohenCertifier:
    c = smoothing_certifier(model, Gaussian(sigma=sigma), num_classes=10, n0=16, n=256,
                            alpha=0.01, batch_size=batch_size, memory_format="contiguous")
    assert isinstance(c, CohenCertifier)
    return c


def strip_seconds(text: str) -> str:
    return re.sub(r'"seconds": [0-9.e-]+', '"seconds": X', text)


def no_seconds(rows: Sequence[CertificationRow]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in rows]


def test_rows_file_and_fields(setup, tmp_path: Path) -> None:
    model, x, y = setup
    seen: list[tuple[int, int]] = []
    rows = certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "c.jsonl",
                             progress=lambda d, t: seen.append((d, t)), **OPTS)
    assert [r.index for r in rows] == list(range(0, 24, 2))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 13 and json.loads(lines[0])["bastion-certify"] == 1
    header = read_header(tmp_path / "c.jsonl")
    assert header["sigma"] == 0.25 and header["n"] == 256 and header["mode"] == "certify"
    assert header["seed"] == 5 and header["skip"] == 2 and header["num_images"] == 40
    r = rows[0].to_json()
    assert list(r) == ["index", "label", "prediction", "radius", "correct", "abstained",
                       "counts", "p_lower", "seconds"]
    assert r["counts"]["n"] == 256 and 0 <= r["counts"]["nA"] <= 256
    for row in rows:
        assert row.correct == (not row.abstained and row.prediction == row.label)
        assert (row.radius == 0) or not row.abstained
    assert read_rows(tmp_path / "c.jsonl") == rows
    assert [json.loads(line) for line in lines[1:]] == [row.to_json() for row in rows]


def test_resume_after_interruption_gives_the_same_rows(setup, tmp_path: Path) -> None:
    model, x, y = setup
    full = tmp_path / "full.jsonl"
    rows = certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=full,
                             inputs_per_call=4, **OPTS)
    # an interrupted run: 5 complete rows, then half of the sixth line
    cut = tmp_path / "cut.jsonl"
    lines = full.read_bytes().split(b"\n")
    cut.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][: len(lines[6]) // 2])
    assert len(read_rows(cut)) == 5
    calls: list[int] = []
    resumed = certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=cut,
                                inputs_per_call=3, progress=lambda d, t: calls.append(d),
                                **OPTS)
    assert calls[0] == 5  # started after the last complete row
    assert no_seconds(resumed) == no_seconds(rows)
    assert strip_seconds(cut.read_text()) == strip_seconds(full.read_text())
    # a finished file resumes to the same rows without new work
    again = certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=full, **OPTS)
    assert again == rows


def test_sharded_equals_single_process(setup, tmp_path: Path) -> None:
    model, x, y = setup
    single = tmp_path / "single.jsonl"
    certify_dataset(cohen(model), x, y, out_path=single, inputs_per_call=5, **RUN)
    merged = tmp_path / "merged.jsonl"
    for rank in (0, 1):  # two ranks, run here one after the other
        certify_shard(cohen(model), x, y, rank=rank, world_size=2,
                      out_path=shard_path(merged, rank, 2), inputs_per_call=2, **RUN)
    assert [r.index for r in read_rows(shard_path(merged, 1, 2))] == list(range(2, 24, 4))
    rows = merge_shards(merged, 2)
    assert [r.index for r in rows] == list(range(0, 24, 2))
    assert strip_seconds(merged.read_text()) == strip_seconds(single.read_text())
    assert rows == read_rows(merged)


def test_merge_refuses_missing_mismatched_or_overlapping_shards(setup, tmp_path: Path) -> None:
    model, x, y = setup
    out = tmp_path / "m.jsonl"
    certify_shard(cohen(model), x, y, rank=0, world_size=2, out_path=shard_path(out, 0, 2),
                  **RUN)
    with pytest.raises(FileNotFoundError, match="missing shard"):
        merge_shards(out, 2)
    certify_shard(cohen(model, sigma=0.5), x, y, rank=1, world_size=2,
                  out_path=shard_path(out, 1, 2), **RUN)
    with pytest.raises(ValueError, match="other parameters"):
        merge_shards(out, 2)
    shard_path(out, 1, 2).write_bytes(shard_path(out, 0, 2).read_bytes())
    with pytest.raises(ValueError, match="overlap"):
        merge_shards(out, 2)
    assert not out.exists()  # nothing merged


def test_results_do_not_depend_on_grouping_and_resume_refuses_other_settings(
    setup, tmp_path: Path
) -> None:
    model, x, y = setup
    a = certify_dataset(cohen(model, 0.5, batch_size=64), x, y, out_path=tmp_path / "a.jsonl",
                        inputs_per_call=1, **RUN)
    b = certify_dataset(cohen(model, 0.5), x, y, out_path=tmp_path / "b.jsonl",
                        inputs_per_call=12, **RUN)
    assert [r.details["counts"] for r in a] == [r.details["counts"] for r in b]
    before = (tmp_path / "a.jsonl").read_bytes()
    with pytest.raises(ValueError, match="other parameters"):
        certify_dataset(cohen(model), x, y, out_path=tmp_path / "a.jsonl", **RUN)
    with pytest.raises(ValueError, match="not this run's"):
        certify_shard(cohen(model, 0.5), x, y, rank=1, world_size=2,
                      out_path=tmp_path / "a.jsonl", **RUN)
    assert (tmp_path / "a.jsonl").read_bytes() == before
    # bad settings are refused before any file is written
    with pytest.raises(ValueError, match="skip"):
        certify_dataset(cohen(model), x, y, out_path=tmp_path / "new.jsonl", skip=0)
    with pytest.raises(ValueError, match="inputs_per_call"):
        certify_dataset(cohen(model), x, y, out_path=tmp_path / "new.jsonl", inputs_per_call=0)
    assert not (tmp_path / "new.jsonl").exists()


def test_a_file_without_a_header_or_with_a_bad_row_is_refused(setup, tmp_path: Path) -> None:
    model, x, y = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0}\n')
    with pytest.raises(ValueError, match="no header"):
        certify_dataset(cohen(model), x, y, out_path=bad, **RUN)
    good = tmp_path / "good.jsonl"
    certify_dataset(cohen(model), x, y, out_path=good, **RUN)
    lines = good.read_text().splitlines()
    good.write_text("\n".join([lines[0], lines[1].replace('"index": 0', '"index": -1')]) + "\n")
    with pytest.raises(ValueError, match="bad row"):
        read_rows(good)
    with pytest.raises(FileNotFoundError):
        read_rows(tmp_path / "absent.jsonl")


def test_one_writer_per_certification_file(setup, tmp_path: Path) -> None:
    """The row store's lock: a second writer is refused before it reads or writes anything;
    the lock goes with the store (close, ``with``, the end of a certification); each shard
    file has its own; merging takes the output's. (tests/test_fault_injection.py kills
    real processes.)"""
    model, x, y = setup
    out = tmp_path / "c.jsonl"
    rows = certify_dataset(cohen(model), x, y, out_path=out, **RUN)  # released on return
    assert lock_path(out) == tmp_path / "c.jsonl.lock"
    assert lock_path(out).read_text().strip() == str(os.getpid())
    params = read_header(out)
    cut = out.read_bytes()[:-7]  # a half-written last line, which only the writer may cut
    out.write_bytes(cut)
    (tmp_path / ".c.jsonl.x1y2.tmp").write_bytes(b"left by a killed writer")
    store = RowStore.open(out, params)
    assert out.read_bytes() == cut[: cut.rfind(b"\n") + 1] and len(store.done) == len(rows) - 1
    assert not (tmp_path / ".c.jsonl.x1y2.tmp").exists()  # stale temporary file removed
    out.write_bytes(cut)
    with pytest.raises(RunLockedError, match=re.escape(str(out))) as err:
        RowStore.open(out, params)
    assert f"process {os.getpid()}" in str(err.value) and isinstance(err.value, ValueError)
    with pytest.raises(RunLockedError):
        certify_dataset(cohen(model), x, y, out_path=out, **RUN)
    assert out.read_bytes() == cut  # the refused writers changed nothing
    store.close()
    store.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        store.append(rows[:1])
    with RowStore.open(out, params) as again:
        assert again.done == rows[:-1]
    assert again.closed
    assert no_seconds(certify_dataset(cohen(model), x, y, out_path=out, **RUN)) == \
        no_seconds(rows)
    # a refused open of another certification (other params) releases the lock at once
    with pytest.raises(ValueError, match="other parameters"):
        RowStore.open(out, {**params, "seed": 6})
    RowStore.open(out, params).close()

    # shards: one lock each, and merging holds the output's
    merged = tmp_path / "m.jsonl"
    s0 = RowStore.open(shard_path(merged, 0, 2), params)
    s1 = RowStore.open(shard_path(merged, 1, 2), params)  # the other rank: not blocked
    with pytest.raises(RunLockedError, match="rank0-of-2"):
        RowStore.open(shard_path(merged, 0, 2), params)
    s0.close()
    s1.close()
    for rank in (0, 1):
        certify_shard(cohen(model), x, y, rank=rank, world_size=2,
                      out_path=shard_path(merged, rank, 2), **RUN)
    with RowStore.open(merged, params), pytest.raises(RunLockedError, match="m.jsonl"):
        merge_shards(merged, 2)
    assert not merged.read_bytes().count(b"\n") > 1  # only the header the holder wrote
    merged.unlink()
    assert no_seconds(merge_shards(merged, 2)) == no_seconds(rows)


def test_sequential_mode_rows(setup, tmp_path: Path) -> None:
    model, x, y = setup
    rows = certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "s.jsonl",
                             radius=0.1, n_first=32, **OPTS)
    header = read_header(tmp_path / "s.jsonl")
    assert header["mode"] == "sequential" and header["radius"] == 0.1
    assert header["n_first"] == 32
    assert all(r.radius in (0.0, 0.1) for r in rows)
    assert all("looks" in r.details["counts"] and r.details["counts"]["n"] <= 256 for r in rows)
    with pytest.raises(ValueError, match="two_class"):
        certify_smoothing(model, x, y, Gaussian(sigma=0.25), out_path=tmp_path / "t.jsonl",
                          radius=0.1, two_class=True, **OPTS)
    assert not (tmp_path / "t.jsonl").exists()


class _Threshold:
    """A deterministic toy certifier (not smoothing): class 1 iff the mean pixel > 0.5,
    radius |mean - 0.5| in l-inf, abstaining within 0.01 of the threshold. Only to show
    that the pipeline needs nothing of smoothing."""

    device = torch.device("cpu")
    inputs_per_call = 3

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        return {"certifier": "threshold", "norm": "linf", **run}

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate:
        m = x.flatten(1).mean(1).double()
        abst = (m - 0.5).abs() < 0.01
        return Certificate(prediction=(m > 0.5).long(),
                           radius=torch.where(abst, 0.0, (m - 0.5).abs()), abstained=abst,
                           norm="linf", method="threshold", extra={"mean": m})

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        return {"mean": float(cert.extra["mean"][j])}


def test_any_certifier_object_works(setup, tmp_path: Path) -> None:
    _, x, _ = setup
    y = (x.flatten(1).mean(1) > 0.1).long()
    toy = _Threshold()
    assert isinstance(toy, Certifier)
    rows = certify_dataset(toy, x, y, out_path=tmp_path / "t.jsonl", skip=3)
    assert [r.index for r in rows] == list(range(0, 40, 3))
    assert list(rows[0].to_json()) == ["index", "label", "prediction", "radius", "correct",
                                       "abstained", "mean", "seconds"]
    assert read_header(tmp_path / "t.jsonl") == {"certifier": "threshold", "norm": "linf",
                                                 "seed": 0, "skip": 3, "num_images": 40}
    assert read_rows(tmp_path / "t.jsonl") == rows

    class Meddling(_Threshold):
        def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
            return {**run, "seed": 99}

    with pytest.raises(ValueError, match="pipeline's entries"):
        certify_dataset(Meddling(), x, y, out_path=tmp_path / "m.jsonl")


def test_every_registered_certifier_runs_through_the_pipeline(setup, tmp_path: Path) -> None:
    model, x, y = setup
    for name, cls in CERTIFIERS.items():
        if getattr(cls, "norm", None) == "l0":  # sub-sampling: its base model reads masks
            from tests.contracts._tiny import tiny_subsampling_model

            certifier = cls.small(tiny_subsampling_model(1, (8, 8), 10).eval(), 10)
        else:
            certifier = cls.small(model, 10)
        assert isinstance(certifier, Certifier), name
        rows = certify_dataset(certifier, x[:8], y[:8], out_path=tmp_path / f"{name}.jsonl",
                               skip=2, seed=1)
        assert len(rows) == 4, name
        assert all(r.radius == 0 for r in rows if r.abstained), name
        # the smoothing certifiers' rows hold their vote counts, the Lipschitz margin's its
        # logit margin (it draws nothing)
        key = "margin" if getattr(cls, "NOISE_FREE", False) else "counts"
        assert key in rows[0].details, name
    assert CERTIFIERS["smoothing-sequential"] is SequentialCertifier
    assert read_header(tmp_path / "smoothing-predict.jsonl")["mode"] == "predict"


def test_helpers(monkeypatch) -> None:
    assert selected_indices(10, 3) == [0, 3, 6, 9]
    assert selected_indices(10, 3, 2) == [0, 3]
    assert input_seed(0, 1) != input_seed(0, 2) != input_seed(1, 1)
    assert 0 <= input_seed(2**40, 2**40) < 2**63
    assert shard_path("a/b.jsonl", 1, 4) == Path("a/b.rank1-of-4.jsonl")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dist_info(None, None) == Shard(rank=2, world_size=3)
    assert dist_info(0, 1) == Shard(rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank"):
        dist_info(3, 2)
    with pytest.raises(ValueError, match="skip"):
        selected_indices(10, 0)
    with pytest.raises(ValueError, match="max_inputs"):
        selected_indices(10, 1, 0)


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
    rows_file = (run / "certify" /
                 "gaussian-sigma0.25-n0_10-n200-alpha0.001-seed0-skip3-inputs6-fp32-last.jsonl")
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
    # invalid settings fail with a message naming the range, and write nothing
    before = sorted(p.name for p in (run / "certify").iterdir())
    for bad, words in ((["--n0", "0"], "n0 must be an int >= 1"),
                       (["--alpha", "1.5"], "alpha must be a number in (0, 1)"),
                       (["--radius", "-0.1"], "radius must be a finite number > 0"),
                       (["--radius", "0.1", "--two-class"], "exclude each other")):
        assert main([*args, *bad]) == 2
        assert words in capsys.readouterr().err
    assert sorted(p.name for p in (run / "certify").iterdir()) == before


def test_cli_compare_takes_several_files_after_one_flag_or_repeated() -> None:
    from bastion.cli import build_parser

    p = build_parser()
    one = p.parse_args(["certify", "run", "--compare", "a.jsonl", "b.jsonl", "--n", "10"])
    assert one.compare == ["a.jsonl", "b.jsonl"] and one.n == 10
    rep = p.parse_args(["certify", "run", "--compare", "a.jsonl", "--compare", "b.jsonl"])
    assert rep.compare == ["a.jsonl", "b.jsonl"]
