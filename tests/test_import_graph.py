"""The import graph runs downward only: import-linter's contracts hold, and a planted
wrong arrow breaks them; importing the package or the attack engine loads nothing heavy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
LOW = ("attacks", "models", "losses", "data", "train", "certify")


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold_on_the_tree() -> None:
    r = _lint(ROOT, ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Contracts: [5-9]\d* kept, 0 broken", r.stdout), r.stdout


@pytest.mark.parametrize(("victim", "planted", "arrow"), [
    ("train/loop.py", "import bastion.bench.plots", "bastion.train"),
    ("certify/smoothing.py", "import bastion.runs", "bastion.certify"),
    ("metrics.py", "import bastion.certify", "bastion.metrics"),
    ("train/schedules.py", "import bastion.config", "bastion.train"),
    ("attacks/pgd.py", "import bastion.train", "bastion.attacks"),
])
def test_a_planted_wrong_import_breaks_the_contracts(
    tmp_path: Path, victim: str, planted: str, arrow: str
) -> None:
    shutil.copytree(ROOT / "src" / "bastion", tmp_path / "src" / "bastion",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "bastion" / victim
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + planted + "  # planted\n" + rest)
    r = _lint(tmp_path, tmp_path / "src")
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and arrow in r.stdout


def test_no_upward_import_in_the_lower_layers() -> None:
    """What the issue greps for: no run-folder, config or benchmark import below them."""
    pattern = re.compile(r"^\s*(from|import)\s+bastion\.(runs|config|bench)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for d in LOW
                 for p in (ROOT / "src" / "bastion" / d).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_the_engine_loads_nothing_heavy() -> None:
    code = ("import sys, bastion, bastion.attacks, bastion.records; "
            "bad = [m for m in ('yaml', 'matplotlib', 'bastion.config', 'bastion.runs', "
            "'bastion.train', 'bastion.bench', 'bastion.certify') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", "import bastion; print(bastion.load_model)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "function load_model" in r.stdout, r.stderr
