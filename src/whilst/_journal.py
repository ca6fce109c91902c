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

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import io
import itertools
import json
import os
import pickle
import socket
import sqlite3
import stat
import time
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ._errors import INTERRUPTED as INTERRUPTED_NOTE
from ._errors import (
    EarlierFailure,
    RemoteError,
    TaskCancelled,
    UsageError,
    WhilstError,
    describe,
    message,
    safe_repr,
)
from ._modes import Outcomes
from ._output import Pace, Record
from ._result import Result, Status, failure_status

SCHEMA_VERSION = 3
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


def item_key(item: Any, schema: int = SCHEMA_VERSION) -> str:
    """The default identity of an item: itself for a number or a short string, else
    a hash of its content (typed JSON with sorted keys and sets, else its pickle).
    An item whose only text names a memory address, or nested too deeply for its
    pickle or repr, has no stable identity: a TypeError asks for ``task_id=``.
    Schema 1 journals hashed plain JSON, in which a tuple and a list (or ``{1: x}``
    and ``{"1": x}``) were one item, and schema 2 the plain pickle of an item that
    is not JSON, in which a set of strings changed from one process to the next:
    they keep their keys, so that a resume finds their records."""
    kind = type(item)
    if kind is int:  # most inputs: numbers, names, URLs
        try:
            return f"i:{item}"
        except ValueError:  # past Python's 4300-digit limit for an int's text
            return _digest(b"I" + item.to_bytes(item.bit_length() // 8 + 1, signed=True))
    if kind is str and len(item) < 64 and (item.isascii() or _utf8(item)):
        return f"s:{item}"
    if isinstance(item, bytes):
        data = b"b" + item
    elif isinstance(item, str):
        data = b"s" + item.encode("utf-8", "surrogatepass")
    else:
        try:
            typed = _typed(item) if schema > 1 else item
            data = b"j" + json.dumps(typed, sort_keys=True, default=_sorted_set).encode()
        except (TypeError, ValueError, RecursionError):  # a deep item's pickle may still do
            try:
                data = pickle.dumps(item, 4)
                if schema > 2 and (b"\x8f" in data or b"\x91" in data):  # a set, maybe
                    data = _stable_pickle(item)
                data = b"p" + data
            except Exception as exc:
                try:
                    text = repr(item)
                except Exception:
                    text = ""
                if not text or " at 0x" in text:
                    why = "names a memory address" if text else "raised too"
                    raise TypeError(
                        f"item {safe_repr(item)[:80]} has no stable identity for the journal "
                        f"(it cannot be pickled ({describe(exc)[:200]}) and its repr {why}); "
                        "pass task_id= to say what identifies an item"
                    ) from None
                data = b"r" + text.encode("utf-8", "surrogatepass")
    return _digest(data)


class _StablePickler(pickle._Pickler):
    """Pickles a set or frozenset with its members in a fixed order: a set's own
    order (of strings, say) changes with the hash seed from one process to the next.
    (The pure-Python pickler: the C one pickles sets before it asks reducer_override.)"""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is set or kind is frozenset:
            return kind, (sorted(obj, key=_stable_pickle),)
        return NotImplemented


def _stable_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _StablePickler(buffer, 4).dump(obj)
    return buffer.getvalue()


def id_key(task_id: Any) -> str:
    """The key of a task whose identity ``task_id=`` gave: its text (hashed if it is
    not valid Unicode, which SQLite would refuse). None, or a value whose text names
    a memory address, identifies nothing: items giving it would share one record, so
    a TypeError says so."""
    if task_id is None:
        raise TypeError(
            "task_id= returned None for this item; return what identifies it (an id, a "
            "name, a URL), or the item itself when it has no such field"
        )
    key = str(task_id)
    if " at 0x" in key and not isinstance(task_id, str):
        raise TypeError(
            f"task_id= returned {key[:80]}, which has no stable identity (its text names a "
            "memory address); return what identifies the item: a string or a number"
        )
    if key.isascii() or _utf8(key):
        return key
    return "u:" + _digest(key.encode("utf-8", "surrogatepass"))


def _skipped(resume: str, owned: bool, values: bool = True) -> str:
    """Which records a resume skips, as SQL: ``ok`` ones whose value can be given
    back (JSON, or a pickle in a file private to this user; others run again),
    or every ``ok`` one when values are not wanted back; and with ``unfinished``
    every ended one."""
    restorable = "('json', 'pickle')" if owned else "('json')"
    ok = f"status = 'ok' AND value_format IN {restorable}" if values else "status = 'ok'"
    if resume == "unfinished":
        return f"({ok}) OR status NOT IN ('ok', '{RUNNING}', '{INTERRUPTED}')"
    return ok


def skipped_keys(
    path: Path, resume: str, function: str, force: bool, values: bool = True
) -> set[str]:
    """The keys of the tasks a resume on ``path`` would skip, for a dry run (the
    file is only read); none when it does not exist yet or ``resume`` is none. A
    journal of another function is refused, as the run would refuse it."""
    if resume == "none" or not path.exists():
        return set()
    db = _open(path, create=False)
    try:
        old = dict(db.execute("SELECT name, value FROM meta")).get("function")
        if old is not None and old != function and not force:
            raise UsageError(_another(path, old, function))
        query = f"SELECT key FROM tasks WHERE {_skipped(resume, _private(path), values)}"
        return {key for (key,) in db.execute(query)}
    except sqlite3.Error as exc:
        raise UsageError(f"journal {path} cannot be read ({exc})") from None
    finally:
        db.close()


def _another(path: Path, old: str, function: str, resume: str = "failed") -> str:
    """Why a journal of another function is refused (even to start afresh: that
    would drop its records)."""
    http = old.startswith("whilst http ") or function.startswith("whilst http ")
    why = " (a hash after whilst http stands for its method, headers and body)" if http else ""
    force = "--force" if function.startswith("whilst ") else "force=True"  # (the CLI's)
    return (
        f"journal {path} records a run of {old}, not {function}{why}; give this run "
        f"another journal, or pass {force} to "
        + ("start it afresh, dropping its records" if resume == "none" else "resume it anyway")
    )


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate, as an undecodable byte
    of a file name becomes), so that SQLite can store it as it is."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_SCALARS = (str, int, float, bool, type(None))
_SCALAR_SET, _STR = frozenset(_SCALARS), frozenset({str})
_TAGS: dict[type, str] = {tuple: "t", set: "s", frozenset: "f"}


def _typed(value: Any) -> Any:
    """``value`` as JSON that keeps what plain JSON loses: a tuple is not a list, a
    dict's keys keep their types, a set is not a frozenset, a subclass (a
    namedtuple, an OrderedDict) is named. Sets are sorted: a set's own order
    changes from one process to the next. Other types raise TypeError (the item
    is hashed by its pickle)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [v if type(v) in _SCALARS else _typed(v) for v in value]
    if kind is dict:
        if set(map(type, value)) <= _STR:  # the usual case: json sorts the keys
            if set(map(type, value.values())) <= _SCALAR_SET:
                return {"d": value}  # (as it is: a JSON line's object, say)
            return {"d": {k: v if type(v) in _SCALARS else _typed(v) for k, v in value.items()}}
        pairs = [[_typed(k), _typed(v)] for k, v in value.items()]
        return {"D": sorted(pairs, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if (tag := _TAGS.get(kind)) is None:
        for base in (list, tuple, dict, set, frozenset):
            if isinstance(value, base):  # a subclass: named, then as its base
                plain = dict(value) if base is dict else base(value)
                return {"c": f"{kind.__module__}.{kind.__qualname__}", "v": _typed(plain)}
        raise TypeError(f"{kind.__name__} is not JSON")
    members = [_typed(v) for v in value]
    if tag != "t":
        members.sort(key=lambda v: json.dumps(v, sort_keys=True))
    return {tag: members}


def _sorted_set(value: Any) -> list[Any]:
    """Schema 1: a set as JSON, its elements in a fixed order (a set's own order
    changes from one process to the next)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=_sorted_set))
    raise TypeError(f"{type(value).__name__} is not JSON")


def function_name(fn: Any) -> str:
    """What identifies the function of a run: its module and qualified name (or
    what it says identifies it: ``whilst run`` names its command)."""
    identity = getattr(fn, "journal_identity", None)
    if identity:
        return str(identity)
    if isinstance(fn, functools.partial):  # (each is a functools:partial by its type)
        return f"{function_name(fn.func)} (partial)"
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    code = getattr(fn, "__code__", None)
    if "<lambda>" in name and isinstance(code, types.CodeType):
        # Every lambda of a module has one name: its code tells them apart (two
        # of a script shared a journal, the second given the first's values).
        return f"{module}:{name}#{_code_digest(code)}"
    return f"{module}:{name}"


def _canonical(const: Any) -> str:
    """A constant's repr, the same in every process: a frozenset's order follows
    the hash of its strings, which differs from one process to the next."""
    if isinstance(const, frozenset):
        return f"frozenset({sorted(map(_canonical, const))})"
    if isinstance(const, tuple):
        return f"({', '.join(map(_canonical, const))},)"
    return repr(const)


def _code_digest(code: types.CodeType) -> str:
    """A short hash of what a function does: its bytecode, names and constants
    (not its line numbers: an edit elsewhere in the file keeps it)."""
    digest = hashlib.blake2b(digest_size=6)

    def feed(code: types.CodeType) -> None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)  # (its repr names an address)
            else:
                digest.update(_canonical(const).encode())

    feed(code)
    return digest.hexdigest()


_to_json = json.JSONEncoder(allow_nan=True).encode
#: An int within this has a short repr, the same as its JSON.
_SHORT_INT = 10**18


#: Why a value that is not JSON was not kept: the file is not private (no pickles).
_NOT_JSON = "unkept: not JSON"


def _encode(value: Any, pickles: bool) -> tuple[str | bytes | None, str]:
    """A value as kept: JSON text when JSON gives it back unchanged, else a pickle
    (only in a file private to this user), else nothing and why."""
    if value is None:
        return "null", "json"
    if type(value) is int and -_SHORT_INT < value < _SHORT_INT:  # most values: at once
        return repr(value), "json"
    data: str | bytes
    try:  # the JSON of an int (most values) is its repr
        data = repr(value) if type(value) is int else _to_json(value)
        fmt = "json"
        if type(value) not in (int, str, float, bool) and not _json_as_is(value):
            raise ValueError("JSON would change it")
    except (TypeError, ValueError, RecursionError):
        if not pickles:
            return None, _NOT_JSON
        try:
            data, fmt = pickle.dumps(value, 4), "pickle"
        except Exception as exc:
            return None, f"unkept: cannot be pickled ({describe(exc)[:200]})"
    if len(data) > VALUE_CAP:
        return None, f"unkept: {len(data)} bytes, over the {VALUE_CAP} byte cap"
    return data, fmt


_JSON_SCALARS = frozenset({int, float, str, bool, type(None)})


def _json_as_is(value: Any) -> bool:
    """Whether JSON gives ``value`` back as it is: every type in it, all the way
    down, is exactly one of JSON's, and every key a str. Equal is not the same: a
    Counter equals the dict JSON gives back, an IntEnum the int. Only for a value
    JSON encoded (so with no cycle)."""
    todo = [value]
    while todo:  # a loop, not recursion: a value JSON encoded may be nested deep
        v = todo.pop()
        kind = type(v)
        if kind is list:
            todo.extend(v)
        elif kind is dict:
            if any(type(k) is not str for k in v):
                return False
            todo.extend(v.values())
        elif kind not in _JSON_SCALARS:
            return False
    return True


#: Journals runs of this process hold, by real path: the run's task, to tell
#: whether it is being stopped.
_held: dict[str, tuple[JournalWriter, asyncio.Task[Any] | None]] = {}


async def released(path: str | os.PathLike[str], wait: float = 5.0) -> None:
    """Wait until no run on this loop that is being stopped holds the journal
    (``break`` out of ``async for r in whilst.aimap(...)`` stops the run, which
    takes a few turns of the loop): a run started just after must not be refused
    for it. A run still going is not waited for (it is refused), nor one on
    another loop (which may be the one blocked waiting for this run)."""
    key, deadline = _key(path), time.monotonic() + wait
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        _, holder = _held.get(key, (None, None))
        if holder is None or holder.get_loop() is not loop:
            return
        if not (holder.cancelling() or holder.done()):
            return
        await asyncio.sleep(0.01)


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)


class JournalWriter:
    """The journal file of one run: opening it (lock, identity check, what a
    resume skips), and committing rows."""

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
        values: bool = True,
    ) -> None:
        self.path = Path(path)
        self.task_id = task_id
        # Whether a skipped task's value must come back: ``whilst run`` and ``http``
        # print nothing for one, so theirs are skipped whatever their values became.
        self.values = values
        self._unkept = False  # values went unkept: the file is not private
        self.closed = False
        self.rows: list[tuple[Any, ...]] = []  # final records, not yet committed
        self.run: int | None = None
        self.schema = SCHEMA_VERSION
        self._lock_fd = -1
        self._db = _open(self.path, create=True)
        self.owned = _private(self.path)
        try:
            self._lock()
            try:
                task = asyncio.current_task()
            except RuntimeError:  # (no loop: opened by hand)
                task = None
            _held[_key(self.path)] = (self, task)
            tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
            if tables and not {"meta", "runs", "tasks"} <= tables:  # a database of its own
                raise UsageError(
                    f"journal {self.path} is an SQLite file but not a whilst journal; "
                    "give a new file name (whilst leaves this one as it is)"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            self._check(function, force, resume)
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

    def _check(self, function: str, force: bool, resume: str) -> None:
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        version = int(meta.get("schema", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"journal {self.path} was written by a newer whilst (schema {version}); "
                "upgrade whilst to resume it"
            )
        old = meta.get("function")
        if old is not None and old != function and not force:
            raise UsageError(_another(self.path, old, function, resume))
        # An older journal with records keeps its item keys (see item_key); the
        # rest of the schema is the same.
        if self._db.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is None:
            version = SCHEMA_VERSION
        self.schema = version
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("schema", str(version)), ("function", function)],
            )

    def _load_done(self, resume: str) -> dict[str, tuple[Any, ...]]:
        """The records a resume skips, by key, read in one query (``ok`` ones; with
        ``unfinished``, every ended one)."""
        if resume == "none":
            with self._db:
                self._db.execute("DELETE FROM tasks")
            return {}
        rows = self._db.execute(
            "SELECT key, idx, status, attempts, start, end, mode, worker, error_type, error, "
            f"value, value_format FROM tasks WHERE {_skipped(resume, self.owned, self.values)}"
        )
        return {row[0]: row[1:] for row in rows}

    # -- during the run ------------------------------------------------------

    def key(self, item: Any, index: int) -> str:
        """The key of ``item`` at ``index``; what raises computing it has a note
        saying what did: ``task_id=``, or the default key (none was given)."""
        if self.task_id is None:
            try:
                return item_key(item, self.schema)
            except Exception as exc:
                exc.add_note(f"whilst: raised computing the journal key of item {index}")
                raise
        try:
            task_id = self.task_id(item)
        except Exception as exc:
            exc.add_note(f"whilst: raised by task_id= on item {index}")
            raise
        return id_key(task_id)  # (its own errors say what task_id= returned)

    def stored(self, key: str, index: int, item: Any) -> Result | None:
        """The record of a task a resume skips, as the result of ``item`` at ``index``;
        None when its value cannot be given back after all (its pickle no longer
        loads): the task runs again, as one whose value was not kept."""
        record = self.done[key]  # kept: an identical item later in the input shares it
        _, status, attempts, start, end, mode, worker, etype, text, value, fmt = record
        if status != "ok":  # resume="unfinished": a failure stays a failure
            error = EarlierFailure(f"in an earlier run, {etype}: {text}")
            return Result(
                index, item, Status(status), None, error, attempts, start, end, mode, worker
            )
        value = _decode(value, fmt, self.owned)
        if isinstance(value, Unavailable):
            if not self.values:
                value = None
            else:
                del self.done[key]
                return None
        return Result(index, item, Status.SKIPPED, value, None, attempts, start, end, mode, worker)

    def record(
        self,
        key: str,
        index: int,
        item: Any,
        status: Status,
        value: Any,
        error: BaseException | None,
        attempts: int,
        start: float,
        end: float,
        mode: str,
        worker: str,
    ) -> None:
        """Keep how a task ended, for the next commit. A task stopped because the
        run stopped is ``interrupted``: a resume runs it again, whatever ``resume``."""
        data, fmt = _encode(value, self.owned) if status is Status.OK else (None, "none")
        if fmt == _NOT_JSON and not self.owned:
            self._unkept = self.values  # said once the run is over (see close)
        word = INTERRUPTED if status is Status.CANCELLED else status._value_
        self.rows.append((
            key, index, _short(item), word, attempts, start, end, mode, worker,
            None if error is None else type(error).__name__,
            None if error is None else _text(message(error)[:10_000]),
            data, fmt, self.run,
        ))  # fmt: skip

    def commit(
        self, running: Iterable[tuple[str, Any, float, int]] = (), mark: str = RUNNING
    ) -> None:
        """Commit the records kept, and mark tasks in flight (key, item, start, index)
        ``running`` (if the runner dies, the next run finds them ``interrupted``),
        or ``interrupted`` when the run stops without their results.

        A record never replaces an ``ok`` record of this run (an identical item
        did succeed), and a mark replaces only earlier runs' records and marks.
        Raises WhilstError, keeping the rows, when the file cannot be written.
        """
        now, run = time.time(), self.run
        marks = [
            (key, index, _short(item), mark, 1, start, now, "", "", None, None, None, "none", run)
            for key, item, start, index in running
        ]
        try:
            with self._db:
                _upsert(self._db, self.rows, _UNLESS_OK)
                _upsert(self._db, marks, _UNLESS_ENDED)
        except sqlite3.Error as exc:
            raise WhilstError(
                f"journal {self.path} could not be written ({exc}); the run stopped, so that "
                "no task goes on unrecorded"
            ) from exc
        self.rows.clear()  # only now: a failed commit keeps them

    def close(self, counts: dict[str, int] | None = None) -> None:
        """Commit what is kept and release the file."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.run is not None:
                self.commit()
                with self._db:
                    self._db.execute(
                        "UPDATE runs SET ended = ?, counts = ? WHERE id = ?",
                        (time.time(), json.dumps(counts or {}), self.run),
                    )
        finally:
            self._db.close()
            if self._lock_fd >= 0:
                if _held.get(key := _key(self.path), (None,))[0] is self:
                    del _held[key]
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = -1
        if self._unkept:  # (now: every record is in; under -W error, this raises)
            warnings.warn(
                f"whilst: journal {self.path} is not private to you, so values that are not "
                "JSON were not kept in it (a pickle others could write would run their code "
                "when read back): those tasks run again on a resume; chmod 600 the file to "
                "keep them",
                stacklevel=2,
            )


_COLUMNS = [
    "key",
    "idx",
    "item",
    "status",
    "attempts",
    "start",
    "end",
    "mode",
    "worker",
    "error_type",
    "error",
    "value",
    "value_format",
    "run",
]
_UNLESS_ENDED = f" WHERE tasks.run != excluded.run OR tasks.status = '{RUNNING}'"
_UNLESS_OK = " WHERE tasks.run != excluded.run OR tasks.status != 'ok' OR excluded.status = 'ok'"
#: Rows an INSERT statement writes at once (fewer calls into SQLite than one a row),
#: within the 999 parameters older SQLite builds allow a statement.
_ROWS_AT_ONCE = 999 // len(_COLUMNS)


@functools.cache
def _upsert_sql(rows: int, unless: str) -> str:
    """Insert ``rows`` records; one for a key already there replaces it ``unless``
    says not to. Rows are written in order, so of two with one key the later counts."""
    values = ", ".join([f"({', '.join('?' * len(_COLUMNS))})"] * rows)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    return f"INSERT INTO tasks VALUES {values} ON CONFLICT(key) DO UPDATE SET {updates}{unless}"


def _upsert(db: sqlite3.Connection, rows: list[tuple[Any, ...]], unless: str) -> None:
    for k in range(0, len(rows), _ROWS_AT_ONCE):
        block = rows[k : k + _ROWS_AT_ONCE]
        db.execute(_upsert_sql(len(block), unless), [*itertools.chain.from_iterable(block)])


class Journaled:
    """The scheduler's output while a journal is kept: each task's record is
    committed before its result goes on to the output behind (``inner``), so no
    result is handed out that a crash could lose.

    Tasks are admitted as they are read (their key computed, done ones returned
    as stored results); records are kept in a list and committed in one
    transaction every ``COMMIT_EVERY`` seconds (checked as results come, and on
    a timer for when none do) or ``HOLD_AT_MOST`` results, whichever comes
    first, on every path: per task, in batches or by policy. A bounded output
    (imap's window) counts the results held for a commit, so the run never gets
    further ahead of its reader than without a journal.

    A commit that fails calls ``on_error``, keeps what it held (those results
    are never handed out: their records are not safe) and stops holding the run
    back, so that it ends at once with the error.
    """

    def __init__(
        self, writer: JournalWriter, inner: Any, on_error: Callable[[WhilstError], None]
    ) -> None:
        self.writer, self.inner, self.on_error = writer, inner, on_error
        self.bounded = inner.bounded
        self.times = True  # each record keeps its times
        self.rows: list[Any] | None = None  # each record is journaled
        self.error: WhilstError | None = None
        # by index, until it ends: (key, item, when it started or 0.0 if not yet)
        self._admitted: dict[int, tuple[str, Any, float]] = {}
        self._held: list[tuple[Callable[..., None], tuple[Any, ...]]] = []  # (hand on, args)
        self._marked: set[int] = set()  # marked running in the file
        self._marks_due = time.monotonic() + COMMIT_EVERY  # when to look for tasks to mark
        self._waiting: set[int] = set()  # admitted, not started yet: never marked running
        self._last = time.monotonic()  # when the last commit was made
        window = getattr(inner, "window", None)
        self._hold = HOLD_AT_MOST if window is None else max(1, min(HOLD_AT_MOST, window // 2))
        # A paced stream (sync imap) sees results only once committed: full here too
        # once what is held took PACE to run, so the caller gets them as it would.
        self._paced = getattr(inner, "paced", False)
        self._pace = Pace()
        self._paced_full = False

    # -- reading -------------------------------------------------------------

    def admit(self, index: int, item: Any, started: bool = True) -> Result | None:
        """None when the task is to run; else its result: stored by an earlier run
        (skipped), or failed because ``task_id`` raised. ``started`` False: it waits
        (set aside, or read ahead) until :meth:`start`."""
        writer = self.writer
        try:
            key = writer.key(item, index)
        except Exception as exc:
            now = time.time()
            return Result(index, item, Status.FAILED, None, exc, 0, now, now, "", "")
        if key in writer.done and (stored := writer.stored(key, index, item)) is not None:
            return stored
        self._admitted[index] = (key, item, time.time() if started else 0.0)
        if not started:
            self._waiting.add(index)
        return None

    def start(self, first: int, n: int = 1) -> None:
        """Tasks ``first`` .. ``first + n - 1`` start (or are handed to a worker)."""
        waiting = self._waiting
        if waiting:
            now, admitted = time.time(), self._admitted
            for i in range(first, first + n):
                if i in waiting:
                    waiting.discard(i)
                    key, item, _ = admitted[i]
                    admitted[i] = (key, item, now)

    def lookup(self, index: int, item: Any) -> Result | None:
        """The stored result of an item done by an earlier run, without admitting it."""
        with contextlib.suppress(Exception):
            key = self.writer.key(item, index)
            if key in self.writer.done:
                return self.writer.stored(key, index, item)
        return None

    # -- the output ----------------------------------------------------------

    @property
    def full(self) -> bool:
        if self.error is not None:  # the run is ending: nothing may wait for room
            return False
        return (
            bool(self.inner.full)
            or self._paced_full
            or (self.bounded and len(self._held) >= self._hold)
        )

    @property
    def on_room(self) -> Callable[[], None] | None:
        return self.inner.on_room  # type: ignore[no-any-return]

    @on_room.setter
    def on_room(self, call: Callable[[], None] | None) -> None:
        self.inner.on_room = call

    def recorder(self, mode: str, worker: str) -> Record:
        inner = self.inner.recorder(mode, worker)
        admitted, held, record = self._admitted, self._held, self.writer.record
        clock, paced = time.monotonic, self._paced

        def journaled(
            index: int,
            item: Any,
            status: Status,
            value: Any,
            error: BaseException | None,
            start: float,
            end: float,
        ) -> None:
            key = admitted.pop(index)[0]
            record(key, index, item, status, value, error, 1, start, end, mode, worker)
            held.append((inner, (index, item, status, value, error, start, end)))
            if paced and self._pace.due(len(held), start, end):
                self._paced_full = True
            if len(held) >= HOLD_AT_MOST or clock() - self._last >= COMMIT_EVERY:
                self.commit()

        return journaled

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        admitted, record, errors = self._admitted, self.writer.record, outcomes.errors
        start, workers = outcomes.start, outcomes.where(worker)
        for index, (item, value, end, worker) in enumerate(
            zip(items, outcomes.values, outcomes.ends, workers, strict=True), first
        ):
            key = admitted.pop(index)[0]
            if errors and (error := errors.get(index - first)) is not None:
                status = failure_status(error)
                record(key, index, item, status, None, error, 1, start, end, mode, worker)
            else:
                record(key, index, item, Status.OK, value, None, 1, start, end, mode, worker)
            start = end
        self._held.append((self.inner.add_batch, (first, items, outcomes, mode, worker)))
        self._maybe_commit(len(self.writer.rows) >= 8 * HOLD_AT_MOST)

    def add(self, result: Result) -> None:
        admitted = self._admitted.pop(result.index, None)
        self._waiting.discard(result.index)
        if admitted is None or result.attempts == 0:  # stored, or never started: no record
            self.inner.add(result)
            return
        r = result
        self.writer.record(
            admitted[0], r.index, r.item, r.status, r.value, r.error, r.attempts, r.start,
            r.end, r.mode, r.worker,
        )  # fmt: skip
        self._held.append((self.inner.add, (result,)))
        if self._paced and self._pace.due(len(self._held), r.start, r.end):
            self._paced_full = True
        self._maybe_commit()

    def _maybe_commit(self, now: bool = False) -> None:
        if now or len(self._held) >= HOLD_AT_MOST or time.monotonic() - self._last >= COMMIT_EVERY:
            self.commit()

    def commit(self, last: bool = False) -> None:
        """Commit the records kept, then hand their results on. The ``last``
        commit marks every task still without a result ``interrupted``."""
        if self.error is not None or self.writer.closed:
            return
        admitted, marked, waiting = self._admitted, self._marked, self._waiting
        self._last = clock = time.monotonic()
        running: list[tuple[str, Any, float, int]] = []
        if last:  # started and never ended: the run stopped while they ran
            running = [(*admitted[i], i) for i in admitted if i not in waiting]
        elif clock >= self._marks_due:
            # Tasks running for COMMIT_EVERY, once each, looked for at most that often:
            # tiny ones cost nothing, even thousands in flight in batches.
            self._marks_due = clock + COMMIT_EVERY
            since = time.time() - COMMIT_EVERY
            marked = self._marked = {i for i in marked if i in admitted}  # ended ones go
            running = [
                (key, item, start, i)
                for i, (key, item, start) in admitted.items()
                if 0.0 < start <= since and i not in marked
            ]
        try:
            self.writer.commit(running, INTERRUPTED if last else RUNNING)
        except WhilstError as exc:  # stop: no task may go on unrecorded
            self.error = exc
            unblock = getattr(self.inner, "unblock", None)
            if unblock is not None:
                unblock()  # no slot may wait for a reader that waits for held results
            self.on_error(exc)
            return
        marked.update(i for *_, i in running)
        held = self._held.copy()  # cleared in place: recorders hold the list
        self._held.clear()
        self._paced_full = False
        for hand_on, args in held:
            hand_on(*args)

    async def room(self) -> None:
        if self.error is not None:
            return
        if self._held:  # make room by committing what is held, then as the reader reads
            self.commit()
        await self.inner.room()

    def widen(self, window: int) -> None:
        self.inner.widen(window)

    def finish(self) -> None:
        self.inner.finish()

    def close(self) -> None:
        """The run is over: commit the last records, hand their results on and
        release the file. Raises the commit's error, if any."""
        try:
            self.commit(last=True)
        finally:
            self.writer.close()
        if self.error is not None:
            raise self.error


class Unavailable:
    """Stands in for a kept value that cannot be given back: its pickle no longer
    loads (its class was renamed or moved since, say). Its text says why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<value unavailable: {self.why}>"


def _decode(value: bytes | None, fmt: str, owned: bool) -> Any:
    """A kept value; pickles only from a file private to this user (never run a
    pickle someone else could have written)."""
    if fmt.startswith("unkept: "):
        return Unavailable(f"it was not kept ({fmt.removeprefix('unkept: ')})")
    if value is None:
        return None
    if fmt == "json":
        return json.loads(value)
    if fmt == "pickle" and owned:
        try:
            return pickle.loads(value)  # written by this user, in a file only they can write
        except Exception as exc:  # its code changed since: the record stays readable
            return Unavailable(f"its pickle no longer loads ({describe(exc)[:200]})")
    if fmt == "pickle":
        return Unavailable(
            "a pickle is not loaded from a file others could have written (not 0600, "
            "or not this user's)"
        )
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
            fix = "give a new file name, or remove it" if create else "give a journal's path"
            raise UsageError(f"journal {path} is not a whilst journal (not an SQLite file); {fix}")
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
            raise UsageError(
                f"journal {path} cannot be created ({exc.strerror}); create its directory, "
                "or give another path"
            ) from None
    else:
        raise UsageError(f"journal {path} does not exist")
    # A reader never writes (not even the checkpoint a last connection makes): it
    # opens the file read-only; immutable when SQLite cannot make the shared-memory
    # file a WAL journal needs (someone else's journal, a read-only folder), which
    # is exact unless records wait in the write-ahead log.
    uris = ["" if create else "?mode=ro"]
    if not create and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size and not wal.with_name(path.name + "-shm").exists():
            raise UsageError(
                f"journal {path} has records in {wal.name}, which SQLite reads only with "
                "write access to its folder: copy both files to a folder you can write, "
                "and read the copy"
            )
        uris.append("?immutable=1")
    for k, uri in enumerate(uris):
        try:
            # A second writer cannot be another whilst run (the file lock): one that
            # holds the database locked for a second means the journal cannot be written.
            db = sqlite3.connect(
                f"file:{urllib.parse.quote(str(path))}{uri}" if uri else path,
                timeout=1.0,
                isolation_level="DEFERRED",
                check_same_thread=False,
                uri=bool(uri),
            )
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            if k == len(uris) - 1:
                raise UsageError(f"journal {path} cannot be read as SQLite ({exc})") from None
    raise AssertionError("unreachable")


def _private(path: Path) -> bool:
    """Whether the file is this user's and no one else's: only then are pickled
    values written to it or read from it."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def _text(text: str) -> str:
    """Text SQLite can store: a lone surrogate (an undecodable byte of a file name
    in an error message, say) written as its escape."""
    if text.isascii() or _utf8(text):
        return text
    return text.encode(errors="backslashreplace").decode()


def _short(item: Any, width: int = 200) -> str:
    if type(item) is int and -_SHORT_INT < item < _SHORT_INT:  # most items: at once
        return repr(item)
    text = _text(safe_repr(item))
    return text if len(text) <= width else text[: width - 3] + "..."


def _version() -> str:
    from . import __version__

    return __version__


class Journal:
    """A journal, read back: ``for r in whilst.Journal("run.db")`` gives each task's
    last record as a :class:`~whilst.Result`, in input order. ``item`` is the
    item's text (its ``repr``, cut to 200 characters); a task recorded
    ``interrupted`` (its run was stopped while it ran) or still running is
    ``cancelled``, and its error says which. Values are restored when they were
    kept (JSON, or pickled in a file private to this user); one whose pickle no
    longer loads is an ``Unavailable`` whose text says why."""

    def __init__(self, path: str | os.PathLike[str], *, values: bool = True) -> None:
        self.path = Path(path)
        self.values = values  # False: skip restoring values (value None)
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
            if status == RUNNING and etype is None:
                error = TaskCancelled("running as the journal was read (its run goes on, or died)")
            elif status == INTERRUPTED and etype is None:
                error = TaskCancelled(INTERRUPTED_NOTE)
            elif etype is not None:
                error = RemoteError(f"{etype}: {text}")
            if status in (RUNNING, INTERRUPTED):
                status = Status.CANCELLED
            ok = status == Status.OK
            data = _decode(value, fmt, self._owned) if ok and self.values else None
            yield Result(idx, item, Status(status), data, error, attempts, start, end, mode, worker)

    def _runs(self) -> tuple[int, float]:
        """How many runs wrote it, and the seconds they took, added up (not the
        time between them): a crashed run counts until its last record."""
        rows = self._db.execute(
            "SELECT r.started, COALESCE(r.ended, MAX(t.end), r.started) "
            "FROM runs r LEFT JOIN tasks t ON t.run = r.id GROUP BY r.id"
        ).fetchall()
        return len(rows), sum(max(ended - started, 0.0) for started, ended in rows)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
