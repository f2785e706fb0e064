"""Every shipped suite (benchmarks/suites/*.yaml) loads: its keys, values, recipes and
references are checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.bench.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "suites").glob("*.yaml"))


def test_the_suites_are_there():
    assert {"quick.yaml", "full.yaml", "preprocess.yaml", "lipschitz.yaml"} <= {
        p.name for p in SUITES}


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_loads(path):
    suite, defenses = load_suite(path)
    assert defenses and suite.name == path.stem
    if path.stem in ("full", "lipschitz"):
        assert suite.protocol.lipschitz is not None
        names = {d.entry.name for d in defenses}
        assert {"gloro", "gloro-top2", "gloro-lls", "hkr"} <= names
