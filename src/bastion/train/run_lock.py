"""One writer at a time: an OS-level lock on a run folder.

``run_lock(run_dir)`` holds ``run_dir/.lock`` with ``flock`` (through the ``filelock``
package) for the duration of a ``with`` block. The kernel releases the lock when the
process dies, so a run killed with ``kill -9`` never leaves its folder stuck; the lock file
itself stays in place (an unlocked ``.lock`` means nothing). The holder writes its pid
into the file, so a refused writer can say who holds the folder.

Every code path that writes into a run folder takes this lock: ``runs.train_from_config``
for the whole of training; certification into a run folder and ``bench`` can do the same::

    from bastion.train.run_lock import run_lock

    with run_lock("runs/pgd-at"):
        ...  # write into runs/pgd-at

The lock is re-entrant within one thread of one process (a writer that holds it may call
``train_from_config`` on the same folder); another process, or another thread, gets
``RunLockedError`` at once (there is no waiting).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock

from bastion.errors import OutputError, RunFolderError, RunLockedError

LOCK_NAME = ".lock"
"""The lock file inside a run folder."""

_registry = threading.Lock()
_held: dict[str, list[int]] = {}  # realpath of the folder -> [owner thread ident, depth]


def _new_lock(path: Path) -> filelock.BaseFileLock:
    try:
        # no soft (marker-file) fallback: only a kernel lock is released by kill -9
        return filelock.FileLock(str(path), timeout=0, fallback_to_soft=False)
    except TypeError:  # filelock < 4 has no soft fallback to turn off
        return filelock.FileLock(str(path), timeout=0)


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid recorded by the last holder of ``run_dir``'s lock (None if none is recorded).

    The pid stays in the file after its process ends; whether the lock is held now is
    only known by trying to take it (``run_lock``).
    """
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the writer lock of ``run_dir`` (created if missing) inside a ``with`` block.

    Yields the run folder as a ``Path``. Raises ``RunLockedError`` (naming the folder and
    the holder's pid) when another process or thread holds it, and ``RunFolderError`` when
    ``run_dir`` is a file.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {str(run_dir)!r} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError as err:
        raise OutputError.of(run_dir, err) from None
    key = os.path.realpath(run_dir)
    me = threading.get_ident()
    with _registry:
        entry = _held.get(key)
        if entry is not None and entry[0] == me:
            entry[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield run_dir
        finally:
            with _registry:
                _held[key][1] -= 1
        return

    path = run_dir / LOCK_NAME
    lock = _new_lock(path)
    try:
        lock.acquire()
    except filelock.Timeout:
        pid = lock_holder(run_dir)
        who = f"process {pid}" if pid is not None else "another process"
        raise RunLockedError(
            f"{run_dir} is in use by {who} (one writer per run folder, lock {path}); wait "
            "for it to finish or stop it, or use another run folder"
        ) from None
    try:
        with _registry:
            _held[key] = [me, 1]
        with open(path, "r+") as fh:  # our own record; the flock is on another descriptor
            fh.truncate(0)
            fh.write(f"{os.getpid()}\n")
        yield run_dir
    finally:
        with _registry:
            _held.pop(key, None)
        lock.release()


__all__ = ["LOCK_NAME", "lock_holder", "run_lock"]
