"""The journal: a SQLite file of finished tasks, so a rerun skips what is done.

One writer (the scheduler's sink), WAL mode, commits batched on a short timer:
journaling costs little per task and a ``kill -9`` at any moment leaves a
consistent file (SQLite's guarantee), losing at most the last fraction of a
second of results, which a resume simply runs again. A result is handed out only
once its record is committed, and a resume never runs a task recorded ``ok``
whose value it can give back (a value too large to keep, or pickled in a file
others could write, means the task runs again).

A task's identity is its key: ``task_id(item)`` when given, else a hash of
the item, so reordering the input or adding items does not make finished
tasks run again (GNU parallel's ``--resume`` goes by position instead).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._errors import RemoteError, TaskCancelled, UsageError, WhilstError
from ._result import Result, Status

SCHEMA_VERSION = 1
#: Values larger than this (bytes, encoded) are not kept; the record says so.
VALUE_CAP = 1 << 20
#: Seconds between commits while tasks finish.
COMMIT_EVERY = 0.2
#: Most results held back waiting for a commit (a commit is made sooner).
HOLD_AT_MOST = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    function TEXT NOT NULL,
    options TEXT NOT NULL,
    counts TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    mode TEXT NOT NULL,
    worker TEXT NOT NULL,
    error_type TEXT,
    error TEXT,
    value BLOB,
    value_format TEXT NOT NULL,
    run INTEGER NOT NULL REFERENCES runs(id)
);
"""

RUNNING = "running"  # an attempt started and the run has not recorded its end
INTERRUPTED = "interrupted"  # a running record found by the next run: the runner died


def item_key(item: Any) -> str:
    """The default identity of an item: itself for a number or a short string, else
    a hash of its content."""
    kind = type(item)
    if kind is int or (kind is str and len(item) < 64):  # most inputs: numbers, names, URLs
        return f"{'i' if kind is int else 's'}:{item}"
    if isinstance(item, bytes):
        data = b"b" + item
    elif isinstance(item, str):
        data = b"s" + item.encode("utf-8", "surrogatepass")
    else:
        try:
            data = b"j" + json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            try:
                data = b"p" + pickle.dumps(item, 4)
            except Exception:
                data = b"r" + repr(item).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def function_name(fn: Any) -> str:
    """What identifies the function of a run: its module and qualified name."""
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


_to_json = json.JSONEncoder(allow_nan=True).encode


def _encode(value: Any, pickles: bool) -> tuple[bytes | None, str]:
    if value is None:
        return b"null", "json"
    try:
        data = _to_json(value).encode()
        fmt = "json"
        if type(value) not in (int, str, float, bool) and json.loads(data) != value:
            raise ValueError("JSON would change it")  # a tuple, a dict with int keys
    except (TypeError, ValueError):
        if not pickles:
            return None, "unkept: not JSON"
        try:
            data, fmt = pickle.dumps(value, 4), "pickle"
        except Exception:
            return None, "unkept: cannot be pickled"
    if len(data) > VALUE_CAP:
        return None, f"unkept: {len(data)} bytes, over the {VALUE_CAP} byte cap"
    return data, fmt


class JournalWriter:
    """The journal of one run: what it skips, and the sink that records the rest."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        function: str,
        options: dict[str, Any],
        task_id: Callable[[Any], Any] | None = None,
        resume: str = "failed",
        force: bool = False,
        durable: bool = False,
    ) -> None:
        self.path = Path(path)
        self.task_id = task_id
        self.closed = False
        self._pending: dict[str, tuple[Any, ...]] = {}
        self._held: list[Result] = []  # finished, waiting for their commit
        self._ok: set[str] = set()  # keys recorded ok by this run
        self._last_commit = time.monotonic()
        self.run: int | None = None
        self._lock_fd = -1
        self._db = _open(self.path, create=True)
        self._owned = _private(self.path)
        try:
            self._lock()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            self._check(function, force)
            with self._db:
                self._db.execute(
                    "UPDATE tasks SET status = ? WHERE status = ?", (INTERRUPTED, RUNNING)
                )
                self.run = self._db.execute(
                    "INSERT INTO runs (started, pid, host, version, function, options) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        time.time(),
                        os.getpid(),
                        socket.gethostname(),
                        _version(),
                        function,
                        json.dumps(options, default=repr),
                    ),
                ).lastrowid
            self.done = self._load_done(resume)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    def _lock(self) -> None:
        """One run at a time: an exclusive lock on the file, held while the run goes."""
        self._lock_fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = "another process"
            with contextlib.suppress(sqlite3.Error):
                row = self._db.execute(
                    "SELECT pid FROM runs WHERE ended IS NULL ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if row:
                    pid = f"pid {row[0]}"
            raise UsageError(
                f"journal {self.path} is in use by {pid}; wait for that run to end, "
                "or give this run another journal"
            ) from None

    def _check(self, function: str, force: bool) -> None:
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        version = int(meta.get("schema", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"journal {self.path} was written by a newer whilst (schema {version}); "
                "upgrade whilst to resume it"
            )
        old = meta.get("function")
        if old is not None and old != function and not force:
            raise UsageError(
                f"journal {self.path} records a run of {old}, not {function}; give this run "
                "another journal, or pass force=True (--force) to resume it anyway"
            )
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("schema", str(SCHEMA_VERSION)), ("function", function)],
            )

    def _load_done(self, resume: str) -> dict[str, tuple[Any, ...]]:
        """The records a resume skips, by key, read in one query (``ok`` ones; with
        ``unfinished``, every ended one)."""
        if resume == "none":
            with self._db:
                self._db.execute("DELETE FROM tasks")
            return {}
        # An ok record counts only if its value can be given back: JSON, or a
        # pickle in a file private to this user. Others run again.
        restorable = "('json', 'pickle')" if self._owned else "('json')"
        ok = f"status = 'ok' AND value_format IN {restorable}"
        if resume == "unfinished":
            where = f"({ok}) OR status NOT IN ('ok', '{RUNNING}', '{INTERRUPTED}')"
        else:
            where = ok
        rows = self._db.execute(
            "SELECT key, idx, status, attempts, start, end, mode, worker, error_type, error, "
            f"value, value_format FROM tasks WHERE {where}"
        )
        return {row[0]: row[1:] for row in rows}

    # -- during the run ------------------------------------------------------

    def key(self, item: Any) -> str:
        if self.task_id is None:
            return item_key(item)
        return str(self.task_id(item))

    def stored(self, key: str) -> Result:
        """The record of a task a resume skips, as its result."""
        record = self.done[key]  # kept: an identical item later in the input shares it
        idx, status, attempts, start, end, mode, worker, etype, text, value, fmt = record
        if status != "ok":  # resume="unfinished": a failure stays a failure
            error = RemoteError(f"{etype}: {text}")
            return Result(
                idx, None, Status(status), None, error, attempts, start, end, mode, worker
            )
        value = _decode(value, fmt, self._owned)
        return Result(idx, None, Status.SKIPPED, value, None, attempts, start, end, mode, worker)

    def started(self, key: str, index: int, item: Any, at: float, mode: str, worker: str) -> None:
        if key in self._pending or key in self._ok:
            return
        self._pending[key] = (
            key, index, _short(item), RUNNING, 0, at, at, mode, worker, None, None, None, "none",
            self.run,
        )  # fmt: skip

    def finished(self, key: str, result: Result) -> list[Result]:
        """Record how a task ended. Its result is held back until its row is
        committed: the results released by this call's commit, if it made one."""
        if key in self._ok and not result.ok:  # an identical item did succeed: keep that
            self._held.append(result)
            return []
        if result.ok:
            self._ok.add(key)
        error = result.error
        value, fmt = (None, "none")
        if result.ok:
            value, fmt = _encode(result.value, self._owned)
        self._pending[key] = (
            key,
            result.index,
            _short(result.item),
            result.status.value,
            result.attempts,
            result.start,
            result.end,
            result.mode,
            result.worker,
            None if error is None else type(error).__name__,
            None if error is None else str(error)[:10_000],
            value,
            fmt,
            self.run,
        )
        self._held.append(result)
        if len(self._held) >= HOLD_AT_MOST or time.monotonic() - self._last_commit >= COMMIT_EVERY:
            return self.flush()
        return []

    def flush(self) -> list[Result]:
        """Commit what is pending; the results now safe to hand out."""
        if not self._pending:
            held, self._held = self._held, []
            return held
        rows = list(self._pending.values())
        try:
            with self._db:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * 14)})", rows
                )
        except sqlite3.Error as exc:
            raise WhilstError(
                f"journal {self.path} could not be written ({exc}); the run stopped, so that "
                "no task goes on unrecorded"
            ) from exc
        self._pending.clear()  # only now: a failed commit keeps them (and their results)
        self._last_commit = time.monotonic()
        held, self._held = self._held, []
        return held

    def close(self, counts: dict[str, int] | None = None) -> list[Result]:
        """Commit what is pending and release the file; the results released."""
        if self.closed:
            return []
        self.closed = True
        released: list[Result] = []
        try:
            if self.run is not None:
                released = self.flush()
                with self._db:
                    self._db.execute(
                        "UPDATE runs SET ended = ?, counts = ? WHERE id = ?",
                        (time.time(), json.dumps(counts or {}), self.run),
                    )
        finally:
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = -1
        return released


def _decode(value: bytes | None, fmt: str, owned: bool) -> Any:
    """A kept value; pickles only from a file private to this user (never run a
    pickle someone else could have written)."""
    if value is None:
        return None
    if fmt == "json":
        return json.loads(value)
    if fmt == "pickle" and owned:
        return pickle.loads(value)  # written by this user, in a file only they can write
    return None


def _open(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open a journal file, creating it private (0600) if asked; a UsageError naming
    the problem when it is not a journal or cannot be written."""
    if path.exists():
        if path.is_dir():
            raise UsageError(f"journal {path} is a directory; give a file name such as run.db")
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise UsageError(
                f"journal {path} is not a whilst journal (not an SQLite file); "
                "give a new file name, or remove it"
            )
        if create and not os.access(path, os.W_OK):
            raise UsageError(
                f"journal {path} cannot be written (permission denied); "
                "give a file this user can write"
            )
    elif create:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"journal {path} cannot be created: {exc.strerror}") from None
    else:
        raise UsageError(f"journal {path} does not exist")
    try:
        db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"journal {path} cannot be read as SQLite ({exc})") from None
    return db


def _private(path: Path) -> bool:
    """Whether the file is this user's and no one else's: only then are pickled
    values written to it or read from it."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def _short(item: Any, width: int = 200) -> str:
    text = repr(item)
    return text if len(text) <= width else text[: width - 3] + "..."


def _version() -> str:
    from . import __version__

    return __version__


class Journal:
    """A journal, read back: ``for r in whilst.Journal("run.db")`` gives each task's
    last record as a :class:`~whilst.Result`, in input order. ``item`` is the
    item's text (its ``repr``, cut to 200 characters); a task that was running
    when its run died is ``cancelled``. Values are restored when they were kept
    (JSON, or pickled in a file private to this user)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = _open(self.path, create=False)
        self._owned = _private(self.path)
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
        if "tasks" not in tables:
            self._db.close()
            raise UsageError(f"{self.path} is an SQLite file but not a whilst journal")

    def __iter__(self) -> Iterator[Result]:
        rows = self._db.execute(
            "SELECT idx, item, status, attempts, start, end, mode, worker, error_type, error, "
            "value, value_format FROM tasks ORDER BY idx"
        )
        for idx, item, status, attempts, start, end, mode, worker, etype, text, value, fmt in rows:
            error: BaseException | None = None
            if status in (RUNNING, INTERRUPTED):
                status = Status.CANCELLED
                error = TaskCancelled("the run died while this task ran")
            elif etype is not None:
                error = RemoteError(f"{etype}: {text}")
            ok = status == Status.OK
            data = _decode(value, fmt, self._owned) if ok else None
            yield Result(idx, item, Status(status), data, error, attempts, start, end, mode, worker)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
