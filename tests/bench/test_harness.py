"""``bastion bench``: a tiny suite on the digits data trains, evaluates, certifies, checks,
writes a leaderboard, resumes after an interruption and recomputes only what changed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bastion.bench.harness import BenchHooks, run_suite
from bastion.bench.leaderboard import leaderboard_columns, to_markdown
from bastion.bench.suite import load_suite
from bastion.errors import ConfigError, InputError, MissingFileError

RECIPE = """\
dataset: digits
model: mlp
model_options: {{hidden: [32]}}
method: {method}
method_options: {options}
epochs: 2
batch_size: 50
optim: {{lr: 0.1}}
device: cpu
eval: {{attack: null, n_test: 100}}
"""

SUITE = """\
name: tiny
protocol:
  n_test: 120
  batch_size: 50
  empirical:
    - norm: linf
      eps: 0.1
      curve: [0.05, 0.2]
      attacks: [{name: pgd, steps: 5}, {name: pgd, steps: 10, restarts: 2}]
      large_eps: 0.5
      minimal: {attack: fmn, steps: 20}
      examples: 4
  certified: {n0: 20, n: 200, alpha: 0.01, n_inputs: 30, radii: [0.0, 0.25]}
defenses:
  - {name: standard, recipe: std.yaml}
  - {name: pgd-at, recipe: pgd.yaml}
  - {name: gauss, recipe: gauss.yaml}
"""


def write_suite(folder: Path, suite: str = SUITE) -> Path:
    (folder / "std.yaml").write_text(RECIPE.format(method="standard", options="{}"))
    (folder / "pgd.yaml").write_text(RECIPE.format(
        method="pgd-at", options="{threat: {eps: 0.1, steps: 2}}"))
    (folder / "gauss.yaml").write_text(RECIPE.format(method="gaussian-noise",
                                                     options="{sigma: 0.25}"))
    path = folder / "suite.yaml"
    path.write_text(suite)
    return path


class Recorder:
    def __init__(self, stop_at: tuple[str, str] | None = None) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.stop_at = stop_at

    def stage(self, defense: str, stage: str, status: str) -> None:
        self.events.append((defense, stage, status))
        if self.stop_at == (defense, stage) and status == "start":
            raise KeyboardInterrupt

    def hooks(self) -> BenchHooks:
        return BenchHooks(stage=self.stage)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    suite = write_suite(folder)
    res = run_suite(suite, folder / "out")
    return folder, suite, res


def test_rows_hold_the_protocol_numbers(bench):
    _folder, _suite, res = bench
    names = [r["name"] for r in res.rows]
    assert names == ["standard", "pgd-at", "gauss"]
    for row in res.rows:
        w = row["robust_acc/linf/0.1/worst"]
        # a point is robust only if every attack failed: the worst case is below each
        assert w <= row["robust_acc/linf/0.1/PGD-5"] + 1e-12
        assert w <= row["robust_acc/linf/0.1/PGD-10x2"] + 1e-12
        assert w <= row["clean_acc"]
        assert row["asr/linf/0.1"] == pytest.approx(1 - w)
        curve = [row["curve/linf"][k] for k in sorted(row["curve/linf"], key=float)]
        assert curve == sorted(curve, reverse=True)  # falls as eps grows
        assert row["curve/linf"]["0"] == pytest.approx(row["clean_acc"])
        assert row["avg_perturbation/linf"] >= 0
        assert len(row["config_hash"]) == 16 and len(row["weights_hash"]) == 16
        assert row["seeds"] == {"train": 0, "eval": 0}
        assert row["versions"]["torch"]
        assert row["robustbench"]["threat_model"] == "Linf"
        assert row["robustbench"]["eps"] == "0.1"
    gauss = res.rows[2]
    assert "certified_acc/l2/0.25" in gauss and "acr" in gauss
    assert gauss["certified_acc/l2/0.25"] <= gauss["certified_acc/l2/0"]
    assert "acr" not in res.rows[0]  # not a smoothing model: not certified
    # the smoothed classifier attacked at the certified radius: no contradiction
    emp = gauss["smoothed_robust_acc/l2/0.25"]
    assert gauss["certified_acc/l2/0.25"] <= emp + 1e-12
    assert "certified-above-empirical" not in gauss["flags"]


def test_leaderboard_files(bench):
    _folder, _suite, res = bench
    out = res.out
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["suite"] == "tiny" and len(doc["rows"]) == 3
    table = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert [r["name"] for r in table] == ["standard", "pgd-at", "gauss"]
    assert float(table[1]["clean_acc"]) == pytest.approx(res.rows[1]["clean_acc"])
    md = (out / "leaderboard.md").read_text()
    for _key, header in leaderboard_columns(res.rows):
        assert header in md
    assert f"{100 * res.rows[0]['clean_acc']:.1f}" in md
    cards = json.loads((out / "robustbench.json").read_text())
    assert {"clean_acc", "autoattack_acc", "eps", "threat_model"} <= set(cards[0])
    assert to_markdown(res.rows).count("\n") == 2 + 3


def test_rerun_loads_every_stage(bench):
    _folder, suite, res = bench
    rec = Recorder()
    again = run_suite(suite, res.out, hooks=rec.hooks())
    statuses = {s for _d, st, s in rec.events if st != "train"}
    assert statuses == {"cached"}
    for a, b in zip(res.rows, again.rows, strict=True):
        assert a["robust_acc/linf/0.1/worst"] == b["robust_acc/linf/0.1/worst"]
        assert a.get("acr") == b.get("acr")


def test_interrupted_bench_resumes_where_it_stopped(tmp_path):
    suite = write_suite(tmp_path)
    rec = Recorder(stop_at=("pgd-at", "minimal-linf"))
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "out", hooks=rec.hooks())
    assert (tmp_path / "out" / "standard" / "bench" / "outcome.json").is_file()
    rec2 = Recorder()
    res = run_suite(suite, tmp_path / "out", hooks=rec2.hooks())
    done = {(d, st) for d, st, s in rec2.events if s == "start" and st != "train"}
    cached = {(d, st) for d, st, s in rec2.events if s == "cached"}
    assert ("standard", "attacks-linf") in cached and ("pgd-at", "attacks-linf") in cached
    assert ("pgd-at", "minimal-linf") in done and ("gauss", "certify") in done
    assert len(res.rows) == 3


def test_changed_protocol_redoes_only_what_it_affects(bench, tmp_path):
    folder, _suite, res = bench
    changed = SUITE.replace("minimal: {attack: fmn, steps: 20}",
                            "minimal: {attack: fmn, steps: 30}")
    path = folder / "suite2.yaml"
    path.write_text(changed)
    rec = Recorder()
    run_suite(path, res.out, hooks=rec.hooks(), only=["standard"])
    started = {st for d, st, s in rec.events if s == "start" and st != "train"}
    cached = {st for d, st, s in rec.events if s == "cached"}
    assert started == {"minimal-linf"} and "attacks-linf" in cached


def test_suite_errors_are_early_and_name_the_problem(tmp_path):
    write_suite(tmp_path)
    bad = {
        "name: tiny\ndefenses: []\n": "at least one defense",
        SUITE.replace("recipe: std.yaml", "recipe: nope.yaml"): "nope.yaml",
        SUITE.replace("name: gauss", "name: pgd-at"): "unique",
        SUITE.replace("norm: linf", "norm: l3"): "l3",
        SUITE.replace("n_test: 120", "n_tset: 120"): "n_tset",
        SUITE.replace("{name: gauss, recipe: gauss.yaml}",
                      "{name: gauss, recipe: gauss.yaml, run: x}"): "exactly one of",
        SUITE.replace("n_inputs: 30", "n_inputs: 500"): "n_inputs",
    }
    for i, (text, needle) in enumerate(bad.items()):
        p = tmp_path / f"bad{i}.yaml"
        p.write_text(text)
        with pytest.raises((ConfigError, MissingFileError, InputError)) as err:
            load_suite(p)
        assert needle in str(err.value), (needle, str(err.value))
    assert not (tmp_path / "runs").exists()
