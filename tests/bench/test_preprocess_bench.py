"""``bastion bench`` with pre-processing defenses: a ``base`` entry puts an earlier defense's
trained model behind a defense without training; the declarations switch on BPDA / EOT and
judging over draws; the row shows the plain and the adaptive attack side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.bench.harness import run_suite
from bastion.bench.suite import load_suite
from bastion.errors import ConfigError, MissingFileError
from tests.bench.test_harness import RECIPE

SUITE = """\
name: pre
protocol:
  n_test: 100
  batch_size: 50
  empirical:
    - norm: linf
      eps: 0.2
      attacks: [{name: pgd, steps: 10}]
      large_eps: 0.6
      minimal: {attack: fmn, steps: 20}
      examples: 2
      eot_samples: 3
      draws: 4
  certified: null
defenses:
  - {name: standard, recipe: std.yaml}
  - {name: standard+bits, base: standard, preprocess: {name: bit-depth, options: {bits: 2}}}
  - name: standard+rp
    base: standard
    preprocess: {name: resize-pad, options: {min_size: 8, max_size: 10, pad_size: 10}}
"""


def write(folder: Path, suite: str = SUITE) -> Path:
    (folder / "std.yaml").write_text(RECIPE.format(method="standard", options="{}"))
    path = folder / "suite.yaml"
    path.write_text(suite)
    return path


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    result = run_suite(write(folder), folder / "out")
    return {r["name"]: r for r in result.rows}, folder / "out"


def test_base_entries_train_nothing_and_reuse_the_base_weights(rows):
    by_name, out = rows
    assert not (out / "standard+bits" / "checkpoints").exists()
    assert by_name["standard+bits"]["weights_hash"] == by_name["standard"]["weights_hash"]
    assert by_name["standard+bits"]["defense_hash"] != by_name["standard+rp"]["defense_hash"]
    assert by_name["standard+bits"]["source"] == "standard behind bit-depth"


def test_plain_and_adaptive_attacks_side_by_side(rows):
    by_name, _ = rows
    std, bits, rp = by_name["standard"], by_name["standard+bits"], by_name["standard+rp"]
    key = "robust_acc/linf/0.2"
    assert f"{key}/BPDA-PGD-10" not in std and f"{key}/EOT-PGD-10" not in std
    # the quantiser: plain PGD is stopped by its zero gradient, BPDA is not
    assert bits[f"{key}/PGD-10"] >= bits["clean_acc"] - 0.05
    assert bits[f"{key}/BPDA-PGD-10"] < bits[f"{key}/PGD-10"] - 0.2
    assert "zero-gradients" in bits["flags"]
    # resize-pad: randomized, so EOT-PGD, both judged over 4 draws, with the spread
    assert f"{key}/EOT-PGD-10" in rp and f"{key}/PGD-10" in rp
    spread = rp["draw_spread/linf/0.2/EOT-PGD-10"]
    assert spread["draws"] == 4 and spread["all"] <= spread["mean"] <= spread["any"]
    assert "randomized-outputs" in rp["flags"]
    for row in (bits, rp):
        attacks = [k for k in row if k.startswith(key + "/") and not k.endswith("/worst")]
        assert row[f"{key}/worst"] <= min(row[k] for k in attacks) + 1e-12


def test_base_entries_are_checked_before_anything_runs(tmp_path):
    bad_base = SUITE.replace("base: standard, preprocess: {name: bit-depth",
                             "base: later, preprocess: {name: bit-depth")
    with pytest.raises(ConfigError, match="base 'later' must name an earlier defense"):
        load_suite(write(tmp_path, bad_base))
    no_pre = SUITE.replace(", preprocess: {name: bit-depth, options: {bits: 2}}", "")
    with pytest.raises(ConfigError, match="base .* needs preprocess"):
        load_suite(write(tmp_path, no_pre))
    bad_opt = SUITE.replace("{bits: 2}", "{bitz: 2}")
    with pytest.raises(ConfigError, match="no option 'bitz'; valid options: bits"):
        load_suite(write(tmp_path, bad_opt))
    assert not (tmp_path / "out").exists()


def test_a_base_entry_alone_names_the_run_it_needs(tmp_path):
    with pytest.raises(MissingFileError, match="needs the trained run .*standard"):
        run_suite(write(tmp_path), tmp_path / "out", only=["standard+bits"])
