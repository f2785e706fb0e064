"""The committed suite results (``results/full``, ``results/mmcert``) are current.

``results/README.md`` says why the folder is tracked. Every committed leaderboard row must
belong to a defense of today's suite file (``benchmarks/suites/<suite>.yaml``), carry the
hash of today's protocol, of the defense's resolved recipe and of the weights committed
beside it; the committed leaderboard files must be exactly what those rows produce. A
recipe or protocol change fails here until the affected defenses are rerun or their
folders removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bastion.bench.harness import BENCH, OUTCOME, defense_config, weights_hash
from bastion.bench.leaderboard import to_markdown
from bastion.bench.suite import config_hash, load_suite, protocol_dict, stable_hash

ROOT = Path(__file__).resolve().parents[2]
# bench folder (as the documented command names it, relative to the root) -> suite file
SUITES = {Path("results/full"): ROOT / "benchmarks/suites/full.yaml",
          Path("results/mmcert"): ROOT / "benchmarks/suites/mmcert.yaml"}


def _rows(out: Path) -> list[dict]:
    folder = ROOT / out
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*/{BENCH}/{OUTCOME}"))]


ROWS = [(out, row) for out in SUITES for row in _rows(out)]
FOLDERS = sorted({out for out, _ in ROWS})
pytestmark = pytest.mark.skipif(not ROWS, reason="no committed suite results")


@pytest.fixture(scope="module")
def suites():
    cwd = os.getcwd()
    os.chdir(ROOT)  # the suites' relative paths and the rows' run folders are root-relative
    try:
        yield {out: load_suite(path) for out, path in SUITES.items()}
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(("out", "row"), ROWS, ids=[f"{o.name}/{r['name']}" for o, r in ROWS])
def test_committed_row_matches_the_current_suite(out, row, suites):
    s, resolved = suites[out]
    by_name = {d.name: d for d in resolved}
    assert row["name"] in by_name, f"{row['name']} is no longer a defense of {SUITES[out]}"
    defense = by_name[row["name"]]
    assert row["protocol_hash"] == stable_hash(protocol_dict(s.protocol)), (
        f"{row['name']}: the suite's protocol changed since this row was measured; rerun it")
    assert row["config_hash"] == config_hash(defense_config(defense, out)), (
        f"{row['name']}: its recipe changed since this row was measured; rerun it")
    run_dir = ROOT / row["run_dir"]
    assert run_dir.is_dir(), f"{row['name']}: its run folder {row['run_dir']} is not committed"
    assert row["weights_hash"] == weights_hash(run_dir), (
        f"{row['name']}: the committed weights are not the ones this row evaluated")


@pytest.mark.parametrize("out", FOLDERS, ids=[o.name for o in FOLDERS])
def test_committed_leaderboard_is_what_the_rows_produce(out, suites):
    s, _ = suites[out]
    saved = json.loads((ROOT / out / "leaderboard.json").read_text())
    assert saved["protocol"] == protocol_dict(s.protocol)
    committed = {r["name"]: r for o, r in ROWS if o == out}
    assert {r["name"] for r in saved["rows"]} == set(committed)
    for r in saved["rows"]:
        assert r == committed[r["name"]], f"leaderboard.json's {r['name']} is not its outcome"
    assert (ROOT / out / "leaderboard.md").read_text() == to_markdown(saved["rows"])
