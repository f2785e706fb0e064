"""``bastion bench`` with MMCert: a model trained on sub-samples of two-view Fashion-MNIST gets
the sub-sampling certificate (l0 budgets per modality), the row carries it, a rerun reads it
back, and the report draws the l0 curve; the shipped suite loads."""

from __future__ import annotations

import pytest

from bastion.bench.harness import run_suite
from bastion.bench.suite import load_suite
from bastion.errors import ConfigError

RECIPE = """\
dataset: fashion-mnist-pairs
model: mm-small-cnn
model_options: {channels: [1, 1], embedding: 16}
method: subsample
method_options: {keep: [60, 60]}
epochs: 1
batch_size: 64
train_subset: 256
channels_last: false
optim: {name: adam, lr: 0.002}
device: cpu
eval: {attack: null, n_test: 50}
"""

SUITE = """\
name: mm
protocol:
  n_test: 6
  batch_size: 6
  empirical: []
  certified: null
  mmcert: {n0: 10, n: 200, alpha: 0.01, n_inputs: 6, budgets: [0, 1, 2], batch_size: 210}
  checks: false
defenses:
  - {name: mm, recipe: mm.yaml}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from bastion.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    folder = tmp_path_factory.mktemp("mm")
    (folder / "mm.yaml").write_text(RECIPE)
    (folder / "suite.yaml").write_text(SUITE)
    result = run_suite(folder / "suite.yaml", folder / "out")
    return result.rows[0], folder


def test_a_subsampling_defense_gets_mmcert(bench):
    row, folder = bench
    assert row["certificate"] == "mmcert"
    assert {"certified_acc/l0/0", "certified_acc/l0/1", "certified_acc/l0/2"} <= set(row)
    assert row["certified_acc/l0/2"] <= row["certified_acc/l0/1"] <= row["certified_acc/l0/0"]
    assert row["certified_n"] == 6
    assert (folder / "out" / "mm" / "bench" / "certify-mmcert.jsonl").is_file()


def test_rerun_reads_it_back_and_the_report_draws_l0(bench):
    row, folder = bench
    again = run_suite(folder / "suite.yaml", folder / "out")
    assert again.rows[0]["certified_acc/l0/1"] == row["certified_acc/l0/1"]
    from bastion.bench.collect import collect
    from bastion.bench.report import write_report

    title, entries, columns, notes = collect(folder / "out")
    assert entries[0].certificate is not None and entries[0].certificate.norm == "l0"
    path = write_report(folder / "out" / "report.html", entries, title=title,
                        columns=columns, notes=notes)
    html = path.read_text()
    assert "L0 (l0)" in html and "certified accuracy against radius (l0)" in html


def test_protocol_is_checked_and_the_shipped_suite_loads(tmp_path):
    (tmp_path / "mm.yaml").write_text(RECIPE)
    (tmp_path / "suite.yaml").write_text(SUITE.replace("n_inputs: 6", "n_inputs: 60"))
    with pytest.raises(ConfigError, match="n_inputs"):
        load_suite(tmp_path / "suite.yaml")
    (tmp_path / "suite.yaml").write_text(SUITE.replace("budgets: [0, 1, 2]", "budgets: [-1]"))
    with pytest.raises(ConfigError, match="budgets"):
        load_suite(tmp_path / "suite.yaml")
    suite, defenses = load_suite("benchmarks/suites/mmcert.yaml")
    assert suite.protocol.mmcert is not None
    assert [d.config.method_options["keep"] for d in defenses] == [[25, 25], [50, 50],
                                                                   [100, 100]]
