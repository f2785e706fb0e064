"""A resumable JSONL file of certification rows, for any certifier.

Layout: one header line, then one ``records.CertificationRow`` per line::

    {"bastion-certify": 1, "params": {...}}                         <- header line
    {"index": 0, "label": 7, "prediction": 7, "radius": 0.81, "correct": true,
     "abstained": false, ...certifier details..., "seconds": 12.3}

- ``RowStore.open(path, params)`` creates the file with its header (atomically), or reopens
  an existing one: its header's params must equal ``params`` (else ``ValueError``, so that
  rows of two settings never mix), a half-written last line (no newline: the process died
  while appending) is cut off, and the complete rows are in ``RowStore.done``.
- ``RowStore.append(rows)`` writes lines, flushes and fsyncs, so a crash loses at most the
  group being written.
- One writer per file: ``RowStore.open`` first takes an OS-level lock on ``<file>.lock``
  (``filelock``, an ``flock`` the kernel releases when the process dies, so a kill -9 never
  leaves it stuck) and holds it until ``RowStore.close()`` (or the end of a ``with`` block,
  or the store being garbage collected, or the process exiting). A second writer gets
  ``errors.RunLockedError`` naming the file and the holder's pid, before anything is read
  or written. Under the lock, temporary files a killed writer left (``.<file>.*.tmp``) are
  removed. Readers (``read_rows``, ``read_header``) take no lock: rows are whole lines.
- Shards: under several processes rank ``r`` of ``w`` writes ``shard_path(out, r, w)``
  (``<stem>.rank<r>-of-<w><suffix>``) and ``merge_shards(out, w)`` joins them into ``out``
  (written atomically, under ``out``'s lock), rows sorted by index, lines unchanged. Each
  rank locks its own shard file.

Nothing here knows a certifier's fields: the header ``params`` are whatever the certifier
reports and the rows' ``details`` are opaque JSON.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from bastion.errors import InputError, MissingFileError, OutputError, RunLockedError
from bastion.records import CertificationRow
from bastion.records.io import atomic_write_bytes

log = logging.getLogger(__name__)

HEADER_KEY = "bastion-certify"
FORMAT_VERSION = 1


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False)


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its rows: ``<stem>.rank<r>-of-<w><suffix>``."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the certification file ``path``: ``<file>.lock`` next to it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _lock(path: Path) -> filelock.BaseFileLock:
    """Take the writer lock of ``path`` without waiting (``RunLockedError`` if held)."""
    lpath = lock_path(path)
    try:
        lpath.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as err:
        raise OutputError.of(lpath.parent, err) from None
    try:  # no soft (marker-file) fallback: only a kernel lock is released by kill -9
        lock = filelock.FileLock(str(lpath), timeout=0, fallback_to_soft=False)
    except TypeError:  # filelock < 4 has no soft fallback to turn off
        lock = filelock.FileLock(str(lpath), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            holder = lpath.read_text().strip()
        except (OSError, UnicodeDecodeError):
            holder = ""
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise RunLockedError(
            f"{path} is being written by {who} (one writer per certification file, lock "
            f"{lpath}); wait for it to finish or stop it, or pass another output path"
        ) from None
    try:
        # the holder's pid, for the message above (best effort: the flock is on another
        # descriptor and ignores the file's contents)
        with contextlib.suppress(OSError), open(lpath, "r+") as fh:
            fh.truncate(0)
            fh.write(f"{os.getpid()}\n")
        # Under the lock, a temporary file of this path is a killed writer's leftover.
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = _lock(path)
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class _FileState:
    header: dict[str, Any] | None
    rows: list[CertificationRow]
    lines: list[bytes]  # raw row lines, newline included
    good_bytes: int  # length of the complete prefix


def _read(path: Path) -> _FileState:
    data = path.read_bytes() if path.exists() else b""
    header: dict[str, Any] | None = None
    rows: list[CertificationRow] = []
    lines: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break  # no newline: a half-written last line (or nothing), discarded
        raw = data[pos : end + 1]
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line at byte {pos} is not valid JSON ({err})") from err
        if pos == 0:
            if not isinstance(obj, dict) or HEADER_KEY not in obj:
                raise InputError(f"{path} is not a bastion certification file (no header)")
            header = obj
        else:
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line at byte {pos} is not a row object")
            try:
                rows.append(CertificationRow.from_json(obj))
            except (TypeError, ValueError) as err:
                raise InputError(f"{path}: bad row at byte {pos}: {err}") from err
            lines.append(raw)
        pos = end + 1
    return _FileState(header, rows, lines, pos)


def read_rows(path: str | os.PathLike) -> list[CertificationRow]:
    """The complete rows of a certification file (a half-written last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no certification file at {str(path)!r}")
    return _read(path).rows


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The ``params`` of a certification file's header line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no certification file at {str(path)!r}")
    state = _read(path)
    if state.header is None:
        raise InputError(f"{path} has no header line")
    return state.header["params"]


class RowStore:
    """An open certification file: its header params and the rows it held when opened.

    Build with ``RowStore.open``, which takes the file's writer lock; ``close()`` (or the end
    of a ``with`` block) releases it. Attributes: ``path`` (Path), ``params`` (the header
    params, JSON-normalised) and ``done`` (the complete rows found, in file order).
    """

    def __init__(self, path: Path, params: dict[str, Any], done: list[CertificationRow],
                 lock: filelock.BaseFileLock | None = None):
        self.path = path
        self.params = params
        self.done = done
        self._lock = lock
        self._closed = False

    def close(self) -> None:
        """Release the writer lock (idempotent); ``append`` is refused afterwards."""
        self._closed = True
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (the lock is released)."""
        return self._closed

    def __enter__(self) -> RowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @classmethod
    def open(cls, path: str | os.PathLike, params: Mapping[str, Any]) -> RowStore:
        """Create ``path`` with a header for ``params``, or reopen it to resume.

        Raises:
            RunLockedError: another process (or another open store) is writing ``path``.
            ValueError: the file holds another header (other params), has no complete
                header, or a complete line that is not a row.
        """
        path = Path(path)
        header = {HEADER_KEY: FORMAT_VERSION, "params": dict(params)}
        text = _dumps(header)  # refuses NaN and non-JSON values before anything is written
        norm = json.loads(text)["params"]
        lock = _lock(path)
        try:
            if path.exists() and path.stat().st_size > 0:
                state = _read(path)
                if state.header is None:
                    raise InputError(f"{path} exists but has no complete header; remove it")
                if state.header.get("params") != norm:
                    raise InputError(
                        f"{path} holds a certification with other parameters "
                        f"({state.header.get('params')}); pass another output path to start "
                        "a new one"
                    )
                if state.good_bytes < path.stat().st_size:
                    log.warning("%s: discarding a half-written last line", path)
                    os.truncate(path, state.good_bytes)
                return cls(path, norm, state.rows, lock)
            atomic_write_bytes(path, (text + "\n").encode())
            return cls(path, norm, [], lock)
        except BaseException:
            lock.release()
            raise

    def append(self, rows: Sequence[CertificationRow]) -> None:
        """Append ``rows`` (one line each), flushed and fsynced."""
        if self._closed:
            raise InputError(f"{self.path}: this row store is closed (its lock released)")
        data = "".join(r.dumps() + "\n" for r in rows).encode()
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def merge_shards(out_path: str | os.PathLike, world_size: int) -> list[CertificationRow]:
    """Merge the ``world_size`` shard files of ``out_path`` into ``out_path``, by index.

    Every shard must carry the same header line. The merged file is written atomically and
    holds that header and the shards' row lines, unchanged, sorted by index.

    Raises:
        FileNotFoundError: a shard is missing.
        ValueError: shards with other headers, or an index in two shards.
        RunLockedError: another process is writing ``out_path``.
    """
    with _locked(Path(out_path)):
        return _merge_shards(out_path, world_size)


def _merge_shards(out_path: str | os.PathLike, world_size: int) -> list[CertificationRow]:
    header_line: bytes | None = None
    keyed: list[tuple[int, bytes, CertificationRow]] = []
    for r in range(world_size):
        p = shard_path(out_path, r, world_size)
        if not p.is_file():
            raise MissingFileError(f"missing shard {p}")
        state = _read(p)
        first = p.read_bytes().split(b"\n", 1)[0] + b"\n"
        if header_line is None:
            header_line = first
        elif first != header_line:
            raise InputError(f"shard {p} was made with other parameters than shard 0")
        keyed.extend((row.index, line, row) for row, line in
                     zip(state.rows, state.lines, strict=True))
    keyed.sort(key=lambda t: t[0])
    indices = [t[0] for t in keyed]
    if len(set(indices)) != len(indices):
        raise InputError("shards overlap: an index appears twice")
    if header_line is None:
        raise InputError(f"world_size must be >= 1, got {world_size}")
    atomic_write_bytes(out_path, header_line + b"".join(t[1] for t in keyed))
    return [t[2] for t in keyed]


__all__ = [
    "FORMAT_VERSION",
    "HEADER_KEY",
    "RowStore",
    "lock_path",
    "merge_shards",
    "read_header",
    "read_rows",
    "shard_path",
]
