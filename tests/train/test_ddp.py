"""fit() under torchrun with 2 CPU processes (gloo) trains a model as good as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.ddp_worker import train_digits


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "result.json").read_text())
    assert ddp["world_size"] == 2
    single = train_digits(str(tmp_path / "single"))
    assert ddp["clean"] > 0.85 and single["clean"] > 0.85
    assert abs(ddp["clean"] - single["clean"]) < 0.05
    assert abs(ddp["robust"] - single["robust"]) < 0.08
    assert (tmp_path / "run" / "checkpoints" / "last.json").exists()
