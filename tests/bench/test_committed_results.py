"""The committed full-suite results (``results/full``) are current, not stale numbers.

``results/README.md`` says why the folder is tracked. Every committed leaderboard row must
belong to a defense of today's ``benchmarks/suites/full.yaml``, carry the hash of today's
protocol, of the defense's resolved recipe and of the weights committed beside it; the
committed leaderboard files must be exactly what those rows produce. A recipe or protocol
change fails here until the affected defenses are rerun or their folders removed.
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
OUT = Path("results/full")  # as the documented command names it, relative to the root
SUITE = ROOT / "benchmarks/suites/full.yaml"


def _rows() -> list[dict]:
    folder = ROOT / OUT
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*/{BENCH}/{OUTCOME}"))]


ROWS = _rows()
pytestmark = pytest.mark.skipif(not ROWS, reason="no committed full-suite results")


@pytest.fixture(scope="module")
def suite():
    cwd = os.getcwd()
    os.chdir(ROOT)  # the suite's relative paths and the rows' run folders are root-relative
    try:
        yield load_suite(SUITE)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_committed_row_matches_the_current_suite(row, suite):
    s, resolved = suite
    by_name = {d.name: d for d in resolved}
    assert row["name"] in by_name, f"{row['name']} is no longer a defense of full.yaml"
    defense = by_name[row["name"]]
    assert row["protocol_hash"] == stable_hash(protocol_dict(s.protocol)), (
        f"{row['name']}: full.yaml's protocol changed since this row was measured; rerun it")
    assert row["config_hash"] == config_hash(defense_config(defense, OUT)), (
        f"{row['name']}: its recipe changed since this row was measured; rerun it")
    run_dir = ROOT / row["run_dir"]
    assert run_dir.is_dir(), f"{row['name']}: its run folder {row['run_dir']} is not committed"
    assert row["weights_hash"] == weights_hash(run_dir), (
        f"{row['name']}: the committed weights are not the ones this row evaluated")


def test_committed_leaderboard_is_what_the_rows_produce(suite):
    s, _ = suite
    saved = json.loads((ROOT / OUT / "leaderboard.json").read_text())
    assert saved["protocol"] == protocol_dict(s.protocol)
    assert {r["name"] for r in saved["rows"]} == {r["name"] for r in ROWS}
    committed = {r["name"]: r for r in ROWS}
    for r in saved["rows"]:
        assert r == committed[r["name"]], f"leaderboard.json's {r['name']} is not its outcome"
    assert (ROOT / OUT / "leaderboard.md").read_text() == to_markdown(saved["rows"])
