"""Fault injection: ``kill -9`` of ``bastion`` processes at random moments, then rerun.

A kill loop starts a command (``bastion certify ...`` or ``bastion train ...``), sends it
SIGKILL at a seeded-random moment and, after every kill, checks that what it was writing
still loads and is a prefix of an uninterrupted run's result, and that its lock is free.
Then it simply reruns the same command into the same file or folder, so one resumable job
is killed again and again; a run that ends before its kill is compared and the loop goes
on with a fresh one. The last run, left to finish, must equal an uninterrupted run bit for
bit (wall-clock fields excepted).

Besides the random kills, two tests kill a command right after each of its atomic renames
in turn (every commit step of a training run; a certification's header), since random
kills hit the few milliseconds of a commit only now and then.

Kill moments (seeded, so the same plan every time; the timings come from an uninterrupted
run measured first):

- certification: a quarter at a random delay over the start (loading the run and the test
  set, taking the lock, cleaning up, writing the header); the rest at a random delay of up
  to 2/20 of the job after the process was seen writing, so that twenty kills walk through
  the rows of one resumable job (and its summary and plot).
- training: a fifth over the start (data, model, lock, cleaning up, ``config.yaml``); 30 %
  within 30 ms of a change in ``checkpoints/`` (inside or just after a checkpoint commit:
  the checkpoint folder, the pointers, pruning, ``history.jsonl``); the rest at a random
  delay of up to two epochs after the start (mid-epoch, the per-epoch evaluation, the
  commit). About every other kill lets an epoch commit, so a job takes several kills.

Processes: importing torch, scipy and matplotlib takes a fresh ``python -m bastion.cli``
3-5 s on a loaded two-core machine, which forty kills cannot afford. So the killed commands
are children forked from one launcher process that imported bastion once (each child runs
``bastion.cli.main(args)``: its own pid, file descriptors and locks, killed with SIGKILL
like any process). The uninterrupted reference, every loop's completing run and the
refused second writers are fresh ``python -m bastion.cli`` processes, so the fresh result
is compared with the forked ones too. ``BASTION_FAULT_FRESH=1`` runs every command fresh
(slower, same checks). All processes run with one thread (``OMP_NUM_THREADS=1``).

The concurrency tests show a second writer refused with exit code 2, a message naming the
file or folder and its holder, and nothing written. Everything here starts processes, so
the whole module is marked ``slow`` (it still runs in CI: ``make test`` runs every test).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import filelock
import pytest
import torch
import yaml
from safetensors.torch import load_file

from bastion.certify.rowstore import lock_path, read_header, read_rows
from bastion.config import EvalConfig, TrainConfig
from bastion.runs import load_config_of, load_model, train_from_config
from bastion.train.checkpoint import checkpoint_dir, load_train_state
from bastion.train.run_lock import LOCK_NAME, run_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROCESS_TIMEOUT = 120.0  # seconds one command may take before the test gives up
N_KILLS = 20  # kills of each kind (the issue asks for at least 20)
FRESH = os.environ.get("BASTION_FAULT_FRESH", "") not in ("", "0")

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ processes


class Process(Protocol):
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def wait(self) -> int: ...


class FreshProcess:
    """``python -m bastion.cli ARGS`` in a new interpreter."""

    def __init__(self, args: list[str], log: Path, kill_after_replace: int | None = None):
        cmd = [sys.executable, "-m", "bastion.cli", *args] if kill_after_replace is None else \
            [sys.executable, "-c", FRESH_WITH_KILL, str(kill_after_replace), *args]
        with open(log, "wb") as err:
            self._p = subprocess.Popen(cmd, env=ENV,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=err)

    def poll(self) -> int | None:
        return self._p.poll()

    def kill(self) -> None:
        self._p.send_signal(signal.SIGKILL)  # a no-op once it has ended (it is not reaped)

    def wait(self) -> int:
        return self._p.wait(timeout=PROCESS_TIMEOUT)


# The launcher forks one child per command; the child runs bastion.cli.main. The launcher
# alone reaps its children (a "wait" request, after "poll" saw the child end without
# reaping it) and it sends SIGKILL itself (a "kill" request, before reaping), so a pid is
# never signalled after it could have been reused.
# ``kill_after_replace(k)``: SIGKILL this process right after its k-th ``os.replace`` (the
# commit step of every atomic write: config.yaml, model.json, a checkpoint folder, the
# pointers, history.jsonl, a certification header).
KILL_AFTER_REPLACE = r"""
import os, signal
def kill_after_replace(k):
    real, calls = os.replace, [0]
    def replace(*args, **kwargs):
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
"""

FRESH_WITH_KILL = KILL_AFTER_REPLACE + r"""
import sys
kill_after_replace(int(sys.argv[1]))
from bastion.cli import main
sys.exit(main(sys.argv[2:]))
"""

LAUNCHER = KILL_AFTER_REPLACE + r"""
import json, os, signal, sys, traceback
import bastion.cli, bastion.runs, bastion.bench.plots, bastion.certify.summary
import sklearn.datasets, torch._dynamo  # imported lazily by the digits set and torch.optim
def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    op, pid = req["op"], req.get("pid")
    if op == "start":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                err = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(err, 2)
                if req.get("kill_after_replace"):
                    kill_after_replace(req["kill_after_replace"])
                code = bastion.cli.main(req["args"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        reply({"pid": pid})
    elif op == "poll":
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        reply({"running": info is None})
    elif op == "kill":
        os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
        reply({})
    elif op == "wait":
        reply({"rc": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])})
"""


class Launcher:
    """A process that imported bastion once and forks a child per command."""

    def __init__(self) -> None:
        self._p = subprocess.Popen([sys.executable, "-c", LAUNCHER], env=ENV,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self._p.stdin is not None and self._p.stdout is not None
        self._p.stdin.write((json.dumps(req) + "\n").encode())
        ready, _, _ = select.select([self._p.stdout], [], [], PROCESS_TIMEOUT + 60)
        line = self._p.stdout.readline() if ready else b""
        if not line:
            raise AssertionError(f"the launcher did not answer {req['op']!r} "
                                 f"(exit status {self._p.poll()})")
        return json.loads(line)

    def close(self) -> None:
        assert self._p.stdin is not None
        self._p.stdin.close()
        self._p.wait(timeout=60)


class ForkedProcess:
    def __init__(self, launcher: Launcher, args: list[str], log: Path,
                 kill_after_replace: int | None = None):
        self._l = launcher
        self.pid = self._l.ask(op="start", args=args, log=str(log),
                               kill_after_replace=kill_after_replace)["pid"]
        self._rc: int | None = None

    def poll(self) -> int | None:
        if self._rc is None and not self._l.ask(op="poll", pid=self.pid)["running"]:
            self._rc = self._l.ask(op="wait", pid=self.pid)["rc"]
        return self._rc

    def kill(self) -> None:
        if self._rc is None:
            self._l.ask(op="kill", pid=self.pid)

    def wait(self) -> int:
        if self._rc is None:
            self._rc = self._l.ask(op="wait", pid=self.pid)["rc"]
        return self._rc


@pytest.fixture(scope="module")
def start() -> Iterator[Callable[..., Process]]:
    """``start(args, log, fresh=False, kill_after_replace=None)``: a running ``bastion
    ARGS`` (see the module docstring), optionally killed right after its k-th
    ``os.replace``."""
    launcher = None if FRESH else Launcher()

    def _start(args: list[str], log: Path, *, fresh: bool = False,
               kill_after_replace: int | None = None) -> Process:
        if fresh or launcher is None:
            return FreshProcess(args, log, kill_after_replace)
        return ForkedProcess(launcher, args, log, kill_after_replace)

    yield _start
    if launcher is not None:
        launcher.close()


@dataclass(frozen=True)
class Outcome:
    returncode: int  # -9: killed
    seconds: float  # from the start to the end of the process
    first_write: float | None  # seconds from the start until ``watch()`` changed
    log: str  # the tail of its stderr


def run(
    process: Callable[[], Process],
    log: Path,
    *,
    watch: Callable[[], object],
    kill_after: float | None = None,
    kill_after_write: float | None = None,
    trigger: Callable[[], object] | None = None,
) -> Outcome:
    """Start ``process()``; SIGKILL it ``kill_after`` seconds after the start, or
    ``kill_after_write`` seconds after ``trigger()`` (default ``watch()``, a fingerprint of
    what it writes) first changed, unless it ended before; else let it finish."""
    trigger = trigger or watch
    before, trigger_before = watch(), trigger()
    t0 = time.monotonic()
    proc = process()
    first_write = None
    kill_at = t0 + kill_after if kill_after is not None else None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            assert now - t0 < PROCESS_TIMEOUT, f"still running after {PROCESS_TIMEOUT} s"
            if first_write is None and watch() != before:
                first_write = now - t0
            if kill_after_write is not None and kill_at is None and trigger() != trigger_before:
                kill_at = now + kill_after_write
            if kill_at is not None and now >= kill_at:
                proc.kill()
                break
            time.sleep(0.003)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if first_write is None and watch() != before:
        first_write = time.monotonic() - t0  # it wrote, and ended, between two looks
    tail = log.read_bytes()[-4000:].decode(errors="replace") if log.exists() else ""
    return Outcome(rc, time.monotonic() - t0, first_write, tail)


def lock_is_free(path: Path) -> bool:
    """Whether the lock file ``path`` can be taken now (taken and released at once)."""
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


def fingerprint(*paths: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            out.append((-1, -1))
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


def tmp_leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


# ---------------------------------------------------------------------------- certification

# 200 inputs and one row appended (and fsynced) per input, since 4096 // (n0 + n) = 0
# inputs per call rounds up to 1; ~10 ms per input on one core, so ~2 s of rows.
CERT_ARGS = ["--sigma", "0.25", "--n0", "16", "--n", "8000", "--n-inputs", "200",
             "--skip", "1", "--batch-size", "1024", "--device", "cpu"]
CERT_INPUTS = 200


def strip_seconds(text: str) -> str:
    return re.sub(r'"seconds": [0-9.e-]+', '"seconds": X', text)


@pytest.fixture(scope="module")
def smoothing_run(tmp_path_factory) -> Path:
    """A tiny Gaussian-noise-trained digits MLP to certify (trained once, in-process)."""
    cfg = TrainConfig(dataset="digits", model="mlp", model_options={"hidden": [16]},
                      method="gaussian-noise", method_options={"sigma": 0.25}, epochs=1,
                      batch_size=64, channels_last=False, device="cpu",
                      eval=EvalConfig(attack=None, n_test=50))
    run_dir = tmp_path_factory.mktemp("certify") / "run"
    train_from_config(cfg, run_dir)
    return run_dir


def certify(start, run_dir: Path, out: Path, *, fresh: bool = False,
            extra: tuple[str, ...] = (), **kill: float) -> Outcome:
    args = ["certify", str(run_dir), "--out", str(out), *CERT_ARGS, *extra]
    log = out.with_suffix(".log")
    return run(lambda: start(args, log, fresh=fresh), log, watch=lambda: fingerprint(out),
               **kill)


def check_certification_after_kill(out: Path, ref: Path, ref_lines: list[str]) -> int:
    """After a kill: the lock is free, the file (if any) parses, and its complete lines are
    the reference's first lines, bit for bit except ``seconds``. Returns its row count."""
    assert lock_is_free(lock_path(out)), f"{lock_path(out)} is still locked after kill -9"
    if not out.exists():
        return 0
    rows = read_rows(out)
    data = out.read_text()
    complete = data[: data.rfind("\n") + 1].splitlines()
    if complete:
        assert read_header(out) == read_header(ref)
        assert len(complete) == len(rows) + 1
    assert [strip_seconds(line) for line in complete] == ref_lines[: len(complete)]
    return len(rows)


def test_certify_survives_kill_9_at_random_moments(start, smoothing_run, tmp_path) -> None:
    ref = tmp_path / "reference.jsonl"
    base = certify(start, smoothing_run, ref, fresh=True)
    assert base.returncode == 0, base.log
    reference = strip_seconds(ref.read_text())
    ref_lines = reference.splitlines()
    assert len(ref_lines) == CERT_INPUTS + 1
    timing = certify(start, smoothing_run, tmp_path / "timing.jsonl")  # the killed kind
    assert timing.returncode == 0 and timing.first_write is not None, timing.log
    assert strip_seconds((tmp_path / "timing.jsonl").read_text()) == reference
    job = timing.seconds - timing.first_write  # the rows, then the summary and the plot

    rng = random.Random(16)
    out = tmp_path / "killed.jsonl"
    moments: collections.Counter[str] = collections.Counter()
    kills = finished = 0
    while True:
        last = kills >= N_KILLS
        plan: dict[str, float] = {}
        kind, u = rng.random(), rng.random()
        if last:
            pass
        elif kind < 0.25:  # the start: the run, the test set, the lock, the header
            plan = {"kill_after": (0.2 + u) * timing.first_write}
        else:  # after a write: a new row (or the header)
            plan = {"kill_after_write": 2 * job / N_KILLS * u}
        result = certify(start, smoothing_run, out, fresh=last, **plan)
        if result.returncode == 0:  # finished (before its kill, or the completing run)
            assert strip_seconds(out.read_text()) == reference
            assert lock_is_free(lock_path(out)) and not tmp_leftovers(tmp_path)
            finished += 1
            if last:
                break
            out = tmp_path / f"killed-{finished}.jsonl"
            continue
        assert result.returncode == -signal.SIGKILL, result.log
        kills += 1
        done = check_certification_after_kill(out, ref, ref_lines)
        moments["at the start" if result.first_write is None
                else "after the rows (summary, plot)" if done == CERT_INPUTS
                else "while writing rows"] += 1
    print(f"\ncertify: {kills} kills {dict(moments)}, {finished} runs finished")
    assert moments["while writing rows"] >= N_KILLS // 2, moments
    assert [r.to_json() | {"seconds": 0} for r in read_rows(out)] == \
        [r.to_json() | {"seconds": 0} for r in read_rows(ref)]


def test_certify_killed_right_after_its_header_is_committed(start, smoothing_run,
                                                           tmp_path) -> None:
    """The one rename of a certification (its header line); the rows are appends."""
    ref, out = tmp_path / "reference.jsonl", tmp_path / "killed.jsonl"
    assert certify(start, smoothing_run, ref).returncode == 0
    log = out.with_suffix(".log")
    args = ["certify", str(smoothing_run), "--out", str(out), *CERT_ARGS]
    killed = run(functools.partial(start, args, log, kill_after_replace=1), log,
                 watch=lambda: None)
    assert killed.returncode == -signal.SIGKILL, killed.log
    lines = strip_seconds(ref.read_text()).splitlines()
    assert check_certification_after_kill(out, ref, lines) == 0
    assert out.read_text().count("\n") == 1  # the header, complete
    assert certify(start, smoothing_run, out).returncode == 0
    assert strip_seconds(out.read_text()) == strip_seconds(ref.read_text())


def test_a_second_certify_of_the_same_file_is_refused(start, smoothing_run, tmp_path) -> None:
    # a writer holds the file (this process, through the row store's lock file)
    out = tmp_path / "held.jsonl"
    holder = filelock.FileLock(str(lock_path(out)), timeout=0)
    holder.acquire()
    try:
        lock_path(out).write_text(f"{os.getpid()}\n")
        result = certify(start, smoothing_run, out, fresh=True)
    finally:
        holder.release()
    assert result.returncode == 2, result.log
    assert "Traceback" not in result.log
    assert str(out) in result.log and f"process {os.getpid()}" in result.log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.jsonl.lock", "held.log"]

    # a running certification (many more inputs than it gets to) and a second one
    busy = tmp_path / "busy.jsonl"
    first = start(["certify", str(smoothing_run), "--out", str(busy), *CERT_ARGS,
                   "--n-inputs", "297", "--n", "100000"], tmp_path / "first.log")
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while len(read_rows(busy) if busy.exists() else []) < 1:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        before = busy.read_bytes()
        second = certify(start, smoothing_run, busy, extra=("--n-inputs", "297",
                                                            "--n", "100000"))
        assert first.poll() is None  # still writing
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.log
    assert "Traceback" not in second.log and str(busy) in second.log
    assert busy.read_bytes()[: len(before)] == before  # the second did not touch it
    assert not busy.with_suffix(".png").exists()


# --------------------------------------------------------------------------------- training

# ~0.5-1 s epochs (PGD-10 adversarial training on 1500 8x8 images, batches of 16, PGD-10
# evaluation on 200 test images), the best-robust-accuracy checkpoint as well as the last.
TRAIN = {
    "dataset": "digits", "model": "mlp", "model_options": {"hidden": [32]},
    "method": "pgd-at", "method_options": {"threat": {"eps": 0.1, "steps": 10}},
    "epochs": 6, "batch_size": 16, "optim": {"lr": 0.05}, "channels_last": False,
    "device": "cpu", "eval": {"threat": {"eps": 0.1, "steps": 10}, "n_test": 200},
}


def drop_seconds(obj: Any) -> Any:
    """``obj`` without the wall-clock fields (``seconds``, ``train_seconds``)."""
    if isinstance(obj, dict):
        return {k: drop_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [drop_seconds(v) for v in obj]
    return obj


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    """``run_dir/history.jsonl`` without wall-clock fields ([] when missing)."""
    return jsonl_without_seconds(run_dir / "history.jsonl")


def jsonl_without_seconds(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [drop_seconds(json.loads(line)) for line in path.read_text().splitlines()]


def run_folder_contents(run_dir: Path) -> dict[str, Any]:
    """Every file of a run folder, for a bit-for-bit comparison: bytes, except that the
    history (and the checkpoints' copy of it) are compared without wall-clock fields."""
    out: dict[str, Any] = {}
    for p in sorted(run_dir.rglob("*")):
        name = str(p.relative_to(run_dir))
        if not p.is_file() or name == LOCK_NAME:
            continue
        if p.name == "history.jsonl":
            out[name] = jsonl_without_seconds(p)
        elif p.name == "train_state.json":
            out[name] = drop_seconds(json.loads(p.read_text()))
        else:
            out[name] = p.read_bytes()
    return out


def differences(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The entries of two ``run_folder_contents`` that differ (for assertion messages)."""
    out = [f"{k}: only in the reference" for k in expected.keys() - got.keys()]
    out += [f"{k}: only in the resumed run" for k in got.keys() - expected.keys()]
    for k in sorted(got.keys() & expected.keys()):
        if got[k] != expected[k]:
            g, e = got[k], expected[k]
            if isinstance(g, list) and isinstance(e, list):
                where = next((i for i, (x, y) in enumerate(zip(g, e, strict=False))
                              if x != y),
                             min(len(g), len(e)))
                out.append(f"{k}: {len(g)} vs {len(e)} entries, first difference at {where}: "
                           f"{g[where] if where < len(g) else None} vs "
                           f"{e[where] if where < len(e) else None}")
            else:
                out.append(f"{k}: differs")
    return out


def tensors_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return {f"{p.relative_to(run_dir)}:{k}": t for p in sorted(run_dir.rglob("*.safetensors"))
            for k, t in load_file(p).items()}


def train(start, recipe: Path, run_dir: Path, *, fresh: bool = False, **kill: Any) -> Outcome:
    args = ["train", str(recipe), "--out", str(run_dir)]
    log = run_dir.with_suffix(".log")
    watch = lambda: fingerprint(run_dir / "config.yaml", run_dir / "history.jsonl",  # noqa: E731
                                run_dir / "checkpoints" / "last.json")
    return run(lambda: start(args, log, fresh=fresh), log, watch=watch, **kill)


def check_run_folder_after_kill(run_dir: Path, ref_history: list[dict[str, Any]],
                                cfg: TrainConfig) -> int:
    """After a kill: the lock is free, ``config.yaml`` parses (as this run's config), the
    last checkpoint (if any) loads and its history and ``history.jsonl`` are prefixes of
    the reference's. Returns the checkpoint's epoch (0: none)."""
    if not run_dir.exists():
        return 0
    assert lock_is_free(run_dir / LOCK_NAME), f"{run_dir} is still locked after kill -9"
    if (run_dir / "config.yaml").exists():
        assert isinstance(yaml.safe_load((run_dir / "config.yaml").read_text()), dict)
        assert load_config_of(run_dir) == cfg
    ckpt = checkpoint_dir(run_dir, "last")
    history = history_of(run_dir)
    assert history == ref_history[: len(history)]
    if ckpt is None:
        return 0
    model = load_model(run_dir)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    saved = drop_seconds(load_train_state(ckpt)["history"])
    epoch = len(saved)
    assert saved == ref_history[:epoch]
    assert epoch - 1 <= len(history) <= epoch  # at most the epoch being committed behind
    return epoch


def partial_writes(run_dir: Path, epoch: int) -> list[str]:
    """What a kill inside a commit leaves (the next start removes or repairs it): temporary
    files or folders, a checkpoint folder no pointer names, a history behind its
    checkpoint."""
    found = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]
    pointed = {d.name for w in ("last", "best") if (d := checkpoint_dir(run_dir, w))}
    found += [d.name for d in (run_dir / "checkpoints").glob("epoch-*") if d.name not in pointed]
    if len(history_of(run_dir)) < epoch:
        found.append("history.jsonl behind the checkpoint")
    return found


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TRAIN))
    return path


def test_train_survives_kill_9_at_random_moments(start, recipe, tmp_path) -> None:
    ref = tmp_path / "reference"
    base = train(start, recipe, ref, fresh=True)
    assert base.returncode == 0, base.log
    cfg = load_config_of(ref)
    expected = run_folder_contents(ref)
    expected_tensors = tensors_of(ref)
    ref_history = history_of(ref)
    assert len(ref_history) == TRAIN["epochs"]
    timing = train(start, recipe, tmp_path / "timing")  # the killed kind of process
    assert timing.returncode == 0 and timing.first_write is not None, timing.log
    assert run_folder_contents(tmp_path / "timing") == expected
    epoch_seconds = (timing.seconds - timing.first_write) / TRAIN["epochs"]

    rng = random.Random(16)
    run_dir = tmp_path / "killed"
    moments: collections.Counter[str] = collections.Counter()
    left: collections.Counter[str] = collections.Counter()
    kills = finished = 0
    while True:
        last = kills >= N_KILLS
        plan: dict[str, Any] = {}
        kind, u = rng.random(), rng.random()
        if last:
            pass
        elif kind < 0.2:  # the start: data, model, lock, cleaning up, config.yaml
            plan = {"kill_after": (0.2 + u) * timing.first_write}
        elif kind < 0.5:  # within 30 ms of a change in checkpoints/: inside a commit
            plan = {"kill_after_write": 0.03 * u,
                    "trigger": lambda d=run_dir: fingerprint(d / "checkpoints")}
        else:  # up to two epochs after the start: mid-epoch, evaluation, the commit
            plan = {"kill_after_write": 2 * epoch_seconds * u}
        before = check_run_folder_after_kill(run_dir, ref_history, cfg)
        result = train(start, recipe, run_dir, fresh=last, **plan)
        if result.returncode == 0:  # finished (before its kill, or the completing run)
            got = run_folder_contents(run_dir)
            assert got == expected, (f"{run_dir} after {kills} kills ({dict(moments)}): "
                                     f"{differences(got, expected)}")
            assert lock_is_free(run_dir / LOCK_NAME) and not tmp_leftovers(tmp_path)
            finished += 1
            if last:
                break
            run_dir = tmp_path / f"killed-{finished}"
            continue
        assert result.returncode == -signal.SIGKILL, result.log
        kills += 1
        epoch = check_run_folder_after_kill(run_dir, ref_history, cfg)
        # (a kill before the first write may still see the previous kill's leftovers)
        partial = partial_writes(run_dir, epoch) if result.first_write is not None else []
        left.update(re.sub(r"\d{4,}", "N", re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".*.tmp", p))
                    for p in partial)
        moments["at the start" if result.first_write is None
                else "inside a commit (left a partial write)" if partial
                else "after an epoch committed" if epoch > before
                else "mid-epoch (nothing committed)"] += 1
    print(f"\ntrain: {kills} kills {dict(moments)}, {finished} runs finished; the kills "
          f"inside a commit left {dict(left)}, each removed or repaired by the next start")
    assert moments["after an epoch committed"] >= 1, moments
    assert moments["mid-epoch (nothing committed)"] >= 1, moments
    got = tensors_of(run_dir)
    assert got.keys() == expected_tensors.keys()
    for key, t in expected_tensors.items():
        assert torch.equal(got[key], t), key  # bit for bit (also compared as bytes above)
    assert history_of(run_dir) == ref_history


# 3 short epochs (~0.3 s), every one a new best, so each commit writes both pointers
TRAIN_SHORT = {**TRAIN, "epochs": 3, "method_options": {"threat": {"eps": 0.1, "steps": 2}},
               "eval": {"threat": {"eps": 0.1, "steps": 2}, "n_test": 200}}


def test_train_survives_kill_9_after_every_commit_step(start, tmp_path) -> None:
    """The random kills above hit the few milliseconds of a checkpoint commit only now and
    then; here a training run is killed right after each of its atomic renames in turn
    (config.yaml, model.json, history.jsonl, each checkpoint folder, last.json, best.json),
    then rerun: every time the folder must load and the result equal the reference."""
    recipe = tmp_path / "short.yaml"
    recipe.write_text(yaml.safe_dump(TRAIN_SHORT))
    ref = tmp_path / "reference"
    base = train(start, recipe, ref)
    assert base.returncode == 0, base.log
    cfg = load_config_of(ref)
    expected = run_folder_contents(ref)
    ref_history = history_of(ref)
    steps: dict[int, str] = {}
    wrong: list[str] = []
    k = 0
    while True:
        k += 1
        run_dir = tmp_path / f"killed-after-rename-{k}"
        log = run_dir.with_suffix(".log")
        first = run(functools.partial(start, ["train", str(recipe), "--out", str(run_dir)],
                                      log, kill_after_replace=k), log, watch=lambda: None)
        if first.returncode == 0:  # fewer renames than k: every step was killed once
            break
        assert first.returncode == -signal.SIGKILL, first.log
        epoch = check_run_folder_after_kill(run_dir, ref_history, cfg)
        steps[k] = f"epoch {epoch} committed, left {partial_writes(run_dir, epoch) or 'nothing'}"
        rerun = train(start, recipe, run_dir)
        assert rerun.returncode == 0, rerun.log
        got = run_folder_contents(run_dir)
        if got != expected:
            wrong.append(f"killed after rename {k} ({steps[k]}): {differences(got, expected)}")
    print(f"\ntrain: killed after each of {len(steps)} renames: " +
          "; ".join(f"{k}: {v}" for k, v in steps.items()))
    assert len(steps) >= 3 * TRAIN_SHORT["epochs"]
    assert not wrong, "\n".join(wrong)


def test_a_second_train_into_the_same_folder_is_refused(start, recipe, tmp_path) -> None:
    # a writer holds the folder (this process, through the run folder's lock)
    held = tmp_path / "held"
    with run_lock(held):
        before = {p.name: p.read_bytes() for p in held.iterdir()}
        result = train(start, recipe, held, fresh=True)
        assert {p.name: p.read_bytes() for p in held.iterdir()} == before  # nothing written
    assert result.returncode == 2, result.log
    assert "Traceback" not in result.log
    assert str(held) in result.log and f"process {os.getpid()}" in result.log

    # a running training (far more epochs than it gets to) and a second one
    busy = tmp_path / "busy"
    first = start(["train", str(recipe), "--out", str(busy), "--set", "epochs=1000"],
                  tmp_path / "first.log")
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not (busy / "config.yaml").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        second = run(lambda: start(["train", str(recipe), "--out", str(busy), "--set",
                                    "epochs=1000"], tmp_path / "second.log"),
                     tmp_path / "second.log", watch=lambda: None)
        assert first.poll() is None  # still training
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.log
    assert "Traceback" not in second.log and str(busy) in second.log
