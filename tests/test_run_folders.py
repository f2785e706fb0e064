"""A run folder is a transaction log: issue 16's reproductions 1, 2, 5, 6 and 7, the lock.

Each reproduction test says in its docstring what the code before the fix did. All runs are
the tiny digits MLP of ``tests/test_cli.py`` (2 epochs, well under a second each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from bastion.cli import main
from bastion.config import TrainConfig, from_dict, to_dict
from bastion.errors import BastionError, CheckpointError, RunFolderError, RunLockedError
from bastion.runs import load_config_of, load_model, train_from_config
from bastion.train.checkpoint import checkpoint_dir, load_train_state
from bastion.train.run_lock import LOCK_NAME, lock_holder, run_lock

TINY = {
    "dataset": "digits", "model": "mlp", "model_options": {"hidden": [32]},
    "method": "pgd-at", "method_options": {"threat": {"eps": 0.1, "steps": 2}},
    "epochs": 2, "batch_size": 50, "optim": {"lr": 0.1}, "device": "cpu",
    "eval": {"threat": {"eps": 0.1, "steps": 2}, "n_test": 100},
}


def tiny(**changes) -> TrainConfig:
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(TrainConfig, data)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def strip_times(history) -> list[dict]:
    return [{k: v for k, v in e.items() if "seconds" not in k} for e in history]


def history_lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def checkpoint_history(run_dir: Path) -> list[dict]:
    return load_train_state(checkpoint_dir(run_dir, "last"))["history"]


class Stop(Exception):
    """Stands for a kill: raised from a progress callback."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run of ``tiny()`` (trained once; tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train_from_config(tiny(), out)
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# ------------------------------------------------------------------ reproduction 1: --no-resume


def test_an_interrupted_start_over_never_resumes_the_old_weights(run, recipe, capsys):
    """Repro 1. Old code: ``--no-resume`` wrote the new config.yaml (lr 0.01, 3 epochs) at
    once but left the old checkpoints in place until the first new epoch finished; killed
    in between, the plain rerun found config.yaml equal to the new config and resumed the
    OLD run's epoch-2 weights ("resumed at epoch 2"), reporting them as the new run.

    Now ``--no-resume`` alone is refused on a folder that holds a run (and writes nothing);
    ``--overwrite`` moves the old run aside before writing the new config.yaml, so the
    rerun after the interruption starts from scratch under the new config."""
    old = snapshot(run)
    old_model = load_model(run)
    args = ["train", str(recipe), "--out", str(run), "--set", "optim.lr=0.01",
            "--set", "epochs=3"]
    assert main([*args, "--no-resume"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert snapshot(run) == old  # refused before writing anything

    new = tiny(optim__lr=0.01, epochs=3)

    def killed(epoch, step, steps):
        raise Stop  # within the first batch of the start over

    with pytest.raises(Stop):
        train_from_config(new, run, resume=False, overwrite=True, on_batch=killed)
    assert load_config_of(run) == new
    assert checkpoint_dir(run, "last") is None  # the old weights are not in the run any more
    (aside,) = run.glob(".replaced-*")  # ... but kept, as a complete run folder
    assert load_config_of(aside) == tiny()
    for a, b in zip(weights(old_model), weights(load_model(aside)), strict=True):
        assert torch.equal(a, b)

    hist = train_from_config(new, run)  # the plain rerun: a fresh start, 3 epochs at lr 0.01
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3]
    assert all(e["lr"] <= 0.01 for e in hist.epochs)
    assert from_dict(TrainConfig, json.loads(
        (checkpoint_dir(run, "last") / "run_config.json").read_text())) == new
    assert any(not torch.equal(a, b)
               for a, b in zip(weights(old_model), weights(load_model(run)), strict=True))


def test_overwrite_moves_the_old_run_and_its_records_aside(run, recipe, capsys):
    """``--overwrite`` with another config: the old checkpoints, history and eval records
    move to ``.replaced-<time>/`` before the new config.yaml is written."""
    assert main(["eval", str(run), "--steps", "2", "--n", "20"]) == 0
    old_config = (run / "config.yaml").read_bytes()
    assert main(["train", str(recipe), "--out", str(run), "--set", "optim.lr=0.05",
                 "--overwrite"]) == 0
    (aside,) = run.glob(".replaced-*")
    assert {p.name for p in aside.iterdir()} == {
        "checkpoints", "history.jsonl", "eval", "config.yaml", "model.json"}
    assert (aside / "config.yaml").read_bytes() == old_config
    assert not (run / "eval").exists()
    assert load_config_of(run) == tiny(optim__lr=0.05)
    assert [e["epoch"] for e in history_lines(run)] == [1, 2]
    load_model(aside)  # still loads


# ---------------------------------------------------------- reproduction 2: config and weights


def test_resume_compares_the_checkpoints_config_not_config_yaml(run, recipe, capsys):
    """Repro 2 (and the end state of repro 1). Old code: resume compared the new config
    with config.yaml, so a folder whose config.yaml says lr 0.5 (hand-edited, or written
    by an interrupted start) resumed the lr-0.1 weights as an lr-0.5 run.

    Now the config saved with the checkpoint decides: such a rerun is refused, naming the
    differing key, and nothing is written."""
    text = (run / "config.yaml").read_text().replace("lr: 0.1", "lr: 0.5")
    (run / "config.yaml").write_text(text)
    before = snapshot(run)
    with pytest.raises(RunFolderError, match=r"different config \(optim.lr: 0.1 there, 0.5 now"):
        train_from_config(tiny(optim__lr=0.5), run)
    assert snapshot(run) == before
    assert main(["train", str(recipe), "--out", str(run), "--set", "optim.lr=0.5"]) == 2
    assert "different config" in capsys.readouterr().err
    assert snapshot(run) == before
    # the config the weights were trained with resumes (finished: nothing to train) and
    # rewrites config.yaml to it
    hist = train_from_config(tiny(), run)
    assert len(hist.epochs) == 2 and load_config_of(run) == tiny()


def test_checkpoints_without_config_yaml_never_mix_configs(finished, tmp_path):
    """Repro 2. Old code: in a folder with checkpoints but no config.yaml, a train with new
    overrides resumed the old optimizer state and wrote the new values into config.yaml.

    Now the checkpoint's own config refuses the new overrides (nothing written) and the
    old config resumes consistently, restoring config.yaml."""
    out = tmp_path / "run"

    def stop_after_first(rec):
        if rec["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_from_config(tiny(), out, on_epoch=stop_after_first)
    (out / "config.yaml").unlink()
    before = snapshot(out)
    with pytest.raises(RunFolderError, match="different config"):
        train_from_config(tiny(optim__lr=0.3), out)
    assert snapshot(out) == before
    train_from_config(tiny(), out)  # the checkpoint's config: resumes epoch 2
    assert [e["epoch"] for e in history_lines(out)] == [1, 2]
    assert load_config_of(out) == tiny()
    assert strip_times(history_lines(out)) == strip_times(history_lines(finished))


def test_a_legacy_checkpoint_without_any_config_is_refused(run):
    """A checkpoint written before configs were saved with it, and no config.yaml: what
    it was trained with is unknown, so resuming is refused (old code resumed it under
    whatever config came)."""
    for p in (run / "checkpoints").glob("epoch-*/run_config.json"):
        p.unlink()
    (run / "config.yaml").unlink()
    with pytest.raises(RunFolderError, match="without its config.*--overwrite"):
        train_from_config(tiny(optim__lr=0.3), run)
    train_from_config(tiny(optim__lr=0.3), run, overwrite=True)
    assert load_config_of(run) == tiny(optim__lr=0.3)


# ----------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_and_writes_nothing(tmp_path):
    """While another holder (here a thread) has the lock, train_from_config raises
    RunLockedError naming the folder and the holder's pid, and writes nothing. (Old code:
    no lock; two trains into one folder both ran to the end, interleaving their files.)"""
    out = tmp_path / "run"
    held, done = threading.Event(), threading.Event()

    def holder():
        with run_lock(out):
            held.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(RunLockedError, match=rf"{out}.*process {os.getpid()}"):
            train_from_config(tiny(), out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        done.set()
        t.join()
    train_from_config(tiny(epochs=1), out)  # free again
    assert lock_holder(out) == os.getpid()


def test_the_lock_is_reentrant_for_its_holder(tmp_path):
    """A writer holding the lock (bench, certification) may train into the same folder."""
    out = tmp_path / "run"
    with run_lock(out):
        train_from_config(tiny(epochs=1), out)
    assert checkpoint_dir(out, "last").name == "epoch-0001"


HOLDER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from bastion.config import TrainConfig, from_dict
from bastion.runs import train_from_config

def on_epoch(rec):
    print("epoch", rec["epoch"], flush=True)
    if rec["epoch"] == 1:
        time.sleep(120)  # hold the lock until killed

train_from_config(from_dict(TrainConfig, json.loads(sys.argv[2])), sys.argv[1],
                  on_epoch=on_epoch)
"""


def test_kill_9_releases_the_lock_and_the_rerun_resumes_exactly(tmp_path):
    """A real second process trains (digits, mlp, 2 epochs) and is killed with SIGKILL
    after its first checkpoint, while it holds the lock. Before the kill a train into the
    folder is refused with the holder's pid and changes nothing; after it the lock is free
    at once and the rerun resumes to the same weights and history as an uninterrupted
    run."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), json.dumps(TINY)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until epoch 1 is checkpointed
        assert line.strip() == "epoch 1", proc.stderr.read() if proc.stderr else line
        before = snapshot(out)
        with pytest.raises(RunLockedError, match=f"process {proc.pid}"):
            train_from_config(tiny(), out)
        assert snapshot(out) == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with run_lock(out):  # the kernel released it
        pass
    resumed = train_from_config(tiny(), out)
    reference = train_from_config(tiny(), tmp_path / "reference")
    assert strip_times(resumed.to_dicts()) == strip_times(reference.to_dicts())
    for a, b in zip(weights(load_model(out)), weights(load_model(tmp_path / "reference")),
                    strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ reproduction 5: history


def test_a_rerun_repairs_a_history_that_trails_the_checkpoint(run):
    """Repro 5. Old code: history.jsonl was written after the checkpoint, so a kill in
    between left it one epoch short, and a rerun of the finished run trained nothing and
    never rewrote it. Now every start rewrites history.jsonl from the checkpoint's."""
    lines = (run / "history.jsonl").read_text().splitlines()
    (run / "history.jsonl").write_text(lines[0] + "\n")  # as left by the kill
    train_from_config(tiny(), run)
    assert history_lines(run) == checkpoint_history(run)
    assert [e["epoch"] for e in history_lines(run)] == [1, 2]


def test_a_kill_between_checkpoint_and_history_is_repaired_before_training_on(
        tmp_path, monkeypatch):
    """The kill of repro 5 mid-run: after epoch 1's checkpoint, before its history line.
    The resumed run's history.jsonl holds epoch 1 before epoch 2 begins."""
    import bastion.train.loop as loop

    out = tmp_path / "run"
    real = loop.atomic_write_bytes
    calls = []

    def write(path, data):
        calls.append(path)
        if len(calls) == 2:  # the first history line (the first call is the start's)
            raise Stop
        real(path, data)

    monkeypatch.setattr(loop, "atomic_write_bytes", write)
    with pytest.raises(Stop):
        train_from_config(tiny(), out)
    monkeypatch.setattr(loop, "atomic_write_bytes", real)
    assert checkpoint_dir(out, "last").name == "epoch-0001"
    assert (out / "history.jsonl").read_text() == ""  # trails the checkpoint
    seen = []
    train_from_config(tiny(), out, on_batch=lambda e, s, n: seen.append(
        [x["epoch"] for x in history_lines(out)]) if s == 0 else None)
    assert seen == [[1]]
    assert history_lines(out) == checkpoint_history(out)


# ------------------------------------------------------ reproduction 6: validate, then write


@pytest.mark.parametrize(("override", "key"), [
    ("epochs=0", "epochs"),
    ("batch_size=0", "batch_size"),
    ("train_subset=0", "train_subset"),
    ("patience=0", "patience"),
    ("optim.lr=.nan", "lr"),
    ("optim.lr=-1", "lr"),
    ("eval.threat.eps=2", "eps"),
    ("device=foo", "device"),
])
def test_a_bad_config_writes_nothing(recipe, tmp_path, capsys, override, key):
    """Repro 6. Old code: config.yaml and model.json were written first and the error came
    later (a ZeroDivisionError for batch_size 0, an InputError from the loop for epochs 0,
    a "non-finite loss" for train_subset 0, a NaN lr only once training started; eval eps 2
    was already refused on load and stays as a check). Now the config, method, data, model
    and optimizer are all validated and built before anything is written."""
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not out.exists()


def test_an_empty_config_file_is_refused_not_the_default_run(tmp_path, capsys):
    """Repro 6. Old code: an empty config file silently started the full default run
    (Fashion-MNIST small-cnn, 10 epochs)."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = tmp_path / "run"
    assert main(["train", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and str(empty) in err and "Traceback" not in err
    assert not out.exists()


def test_a_bad_config_leaves_an_existing_run_untouched(run):
    before = snapshot(run)
    with pytest.raises(BastionError):
        train_from_config(tiny(batch_size=0), run)
    assert snapshot(run) == before


def test_leftovers_of_an_interrupted_write_are_cleaned_on_the_next_start(run):
    """Repro 6. Old code: a start killed while writing config.yaml left its
    ``.config.yaml.*.tmp`` for good (and a killed checkpoint left ``.epoch-*.tmp``). Now
    the next start removes them, and a checkpoint folder that last.json never committed."""
    junk = [run / ".config.yaml.x1y2.tmp", run / ".history.jsonl.a.tmp",
            run / "checkpoints" / ".last.json.b.tmp", run / "checkpoints" / ".epoch-0003.tmp",
            run / "checkpoints" / "epoch-0003"]
    junk[0].write_text("half")
    junk[1].write_text("half")
    junk[2].write_text("{")
    for d in junk[3:]:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    train_from_config(tiny(), run)
    assert not any(p.exists() for p in junk)
    assert not list(run.rglob("*.tmp"))
    assert checkpoint_dir(run, "last").name == "epoch-0002"


# ---------------------------------------------------- reproduction 7: pointers and corruption


def _copy_checkpoint_elsewhere(run: Path, tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    return Path(shutil.copytree(checkpoint_dir(run, "last"), other / "epoch-0002"))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "not-a-name"])
def test_a_pointer_out_of_the_run_is_refused(run, tmp_path, capsys, how):
    """Repro 7. Old code: checkpoints/last.json could name any folder on disk (absolute,
    ``../..``, a symlink) and load_model and ``bastion eval`` loaded those weights. Now
    the pointer must name an ``epoch-NNNN`` folder inside ``run/checkpoints``."""
    foreign = _copy_checkpoint_elsewhere(run, tmp_path)
    pointer = run / "checkpoints" / "last.json"
    if how == "absolute":
        target = str(foreign)
    elif how == "dotdot":
        target = os.path.relpath(foreign, pointer.parent)
        assert target.startswith("..")
    elif how == "symlink":
        target = "epoch-0009"
        (run / "checkpoints" / target).symlink_to(foreign, target_is_directory=True)
    else:
        target = "../checkpoints/epoch-0002"
    pointer.write_text(json.dumps({"dir": target, "epoch": 2}))
    with pytest.raises(CheckpointError, match=r"last\.json points outside"):
        load_model(run)
    assert main(["eval", str(run), "--steps", "2", "--n", "20"]) == 2
    err = capsys.readouterr().err
    assert "last.json points outside" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="points outside"):
        train_from_config(tiny(), run)


def test_a_checkpoint_file_linked_out_of_the_run_is_refused(run, tmp_path):
    foreign = _copy_checkpoint_elsewhere(run, tmp_path)
    member = checkpoint_dir(run, "last") / "model.safetensors"
    member.unlink()
    member.symlink_to(foreign / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is a link"):
        load_model(run)


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "random": os.urandom(max(64, len(data) // 4))}[how])


@pytest.mark.parametrize(("name", "how"), [
    ("model.safetensors", "truncated"),
    ("model.safetensors", "empty"),
    ("model.safetensors", "random"),
    ("train_state.safetensors", "truncated"),
    ("train_state.safetensors", "random"),
    ("train_state.json", "truncated"),
    ("run_config.json", "truncated"),
])
def test_a_corrupt_checkpoint_names_the_file_and_the_way_out(run, capsys, name, how):
    """Repro 7 / issue item 4. Old code: a raw SafetensorError or JSONDecodeError without
    the file's name. Now CheckpointError names the file and says to start over with
    --overwrite, and --overwrite does recover (the damaged run moved aside)."""
    path = checkpoint_dir(run, "last") / name
    _corrupt(path, how)
    with pytest.raises(CheckpointError, match="--overwrite") as info:
        if name == "model.safetensors":
            load_model(run)
        else:
            train_from_config(tiny(), run)  # resuming reads the training state
    assert str(path) in str(info.value)
    train_from_config(tiny(), run, overwrite=True)
    assert load_model(run) is not None and len(list(run.glob(".replaced-*"))) == 1


@pytest.mark.parametrize("name", ["checkpoints/last.json", "model.json"])
def test_corrupt_metadata_names_the_file(run, capsys, name):
    path = run / name
    _corrupt(path, "truncated")
    with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
        load_model(run)
    assert main(["eval", str(run), "--steps", "2", "--n", "20"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_load_model_of_a_file_says_so(run):
    with pytest.raises(RunFolderError, match="is a file"):
        load_model(run / "model.json")


def test_the_checkpoint_holds_the_config_and_the_history(run):
    """What makes the folder self-consistent: each checkpoint carries its config and its
    history, and config.yaml and history.jsonl are copies of them."""
    ck = checkpoint_dir(run, "last")
    assert from_dict(TrainConfig, json.loads((ck / "run_config.json").read_text())) == tiny()
    assert json.loads((ck / "run_config.json").read_text()) == to_dict(tiny())
    assert history_lines(run) == checkpoint_history(run)
    assert load_config_of(run) == tiny()


def test_rerunning_the_same_command_after_a_kill_in_the_first_epoch_starts_afresh(tmp_path):
    """A start killed before its first checkpoint leaves config.yaml, model.json and an
    empty history: the same command then simply starts over (no --overwrite needed)."""
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_from_config(tiny(), out, on_batch=lambda e, s, n: (_ for _ in ()).throw(Stop))
    assert (out / "config.yaml").exists() and checkpoint_dir(out, "last") is None
    hist = train_from_config(tiny(), out)
    assert [e["epoch"] for e in hist.epochs] == [1, 2]
