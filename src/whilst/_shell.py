"""``whilst run``: a command over many inputs, with GNU parallel's inputs and
replacement strings, every substituted value shell-quoted.

A job is one combination of input values (its *args*). Its command is the
template with ``{}``, ``{.}``, ``{/}``, ``{//}``, ``{/.}``, ``{#}``, ``{%}``,
``{1}``, ``{-1}``... replaced (or the args appended when there are none), run by
``/bin/sh -c`` in a process group of its own, so a timeout, a halt or Ctrl-C
kills the command and everything it started. Jobs run in threads: measured
here, a thread blocking on ``subprocess`` starts commands faster than an event
loop's subprocess support (see ``bench/``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import fcntl
import functools
import io
import itertools
import math
import os
import queue
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from ._errors import TaskTimeout, UsageError, WhilstError, describe, utf8_text
from ._spawn import Process, spawn

#: ``:::`` takes values from the command line, ``::::`` the lines of files.
ARGS, FILES = ":::", "::::"
#: After either (``:::+``, ``::::+``): a source linked to the one before it, value
#: by value, not combined with each of its values.
LINK = "+"
#: ``{}``, ``{.}``, ``{/}``, ``{//}``, ``{/.}``, ``{#}``, ``{%}``, and each with a
#: column number, counted from the first or (negative) from the last: ``{2}``,
#: ``{2.}``, ``{-1}``...
REPLACEMENT = re.compile(r"\{(-?\d+|)(\.|/\.|//|/|#|%|)\}")
#: GNU parallel's Perl expressions, ``{= s/a/b/ =}`` and ``{=2 s/a/b/ =}`` (also
#: the guess ``{2= s/a/b/ =}``), which whilst does not run. As GNU parallel finds
#: them: one may span words, and of nested ones the innermost is the expression.
PERL = re.compile(r"\{(-?\d+)?=(?:(?!\{=).)*?=\}", re.DOTALL)
#: Seconds a killed command's process group gets between SIGTERM and SIGKILL.
TERM_WAIT = 0.2
#: Seconds a command's pipes are still read after it exited (something it left
#: running may hold them open) before its output counts as complete.
EXIT_GRACE = 0.05
#: Files a job holds open: its stdout and stderr pipes' read ends, and while it
#: starts, their write ends and the pipe its exec error would come back on.
FILES_A_JOB = 6
#: Files kept for the rest: stdin, stdout, stderr, /dev/null, the event loop's,
#: a journal (with its -wal and -shm), --results, --report, --trace.
FILES_KEPT = 32
#: ``-j 0``'s jobs at once when the limit on open files is no limit (GNU parallel's
#: "as many as possible" finds the processes' and files' limits by trying).
MOST_JOBS = 4096
#: Files the run itself opens before its first job, at least: the event loop's and
#: its wake-up pipes (measured: at ulimit -n 19 some jobs fail, at 20 none).
FILES_A_RUN = 9
#: What GNU parallel trims off columns (Perl's \s).
WHITE = " \t\n\r\f\v"
#: What makes a command line need a shell: operators, expansions, quotes, globs.
SHELL_TEXT = re.compile(r"""[|&;<>()$`\\"'*?\[\]#~!{}\n\r]|^\s*\w+=""")
#: Commands that only a shell has, or that a shell runs differently.
SHELL_ONLY = frozenset(
    [
        "alias",
        "bg",
        "break",
        "builtin",
        "cd",
        "command",
        "continue",
        "declare",
        "eval",
        "exec",
        "exit",
        "export",
        "fg",
        "getopts",
        "hash",
        "jobs",
        "let",
        "local",
        "read",
        "readonly",
        "return",
        "set",
        "shift",
        "source",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
        ".",
        ":",
        "[[",
        # builtins that behave otherwise than the program of the same name
        # (/bin/echo takes --help, `time` is a keyword...)
        "echo",
        "printf",
        "time",
        "test",
        "[",
        "kill",
        "pwd",
    ]
)
#: Builtins whose program behaves the same, unless given --help or --version.
SAME_AS_BUILTIN = frozenset(["true", "false"])


def split_words(words: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The command's words, and each input source after them: (``:::``, ``::::``,
    ``:::+`` or ``::::+``, its values or file names)."""
    command: list[str] = []
    sources: list[tuple[str, list[str]]] = []
    for word in words:
        if word.removesuffix(LINK) in (ARGS, FILES):
            sources.append((word, []))
        elif sources and sources[-1][0].removesuffix(LINK) == FILES and sources[-1][1]:
            # each file its own source (after ::::+, each linked), as GNU parallel
            sources.append((sources[-1][0], [word]))
        elif sources:
            sources[-1][1].append(word)
        else:
            command.append(word)
    return command, sources


def check_sources(sources: list[tuple[str, list[str]]]) -> None:
    """Every ``::::`` named a file, each readable: before any job runs. (A ``:::``
    with no values is an empty input, as in GNU parallel: a glob that matched
    nothing, with ``nullglob``.)"""
    for kind, values in sources:
        if not values and kind.removesuffix(LINK) == FILES:
            raise UsageError(f"{kind} needs a file after it: {kind} inputs.txt")
        if kind.removesuffix(LINK) == FILES:
            for name in values:
                if name == "-":
                    continue
                if os.path.isdir(name):
                    raise UsageError(f"input file {name} is a directory; give a file of lines")
                if not os.access(name, os.R_OK):
                    why = "does not exist" if not os.path.exists(name) else "cannot be read"
                    raise UsageError(f"input file {name} {why}; give a file of input lines")


def check_colsep(colsep: str | None) -> None:
    """``--colsep`` is a regular expression, as GNU parallel's: one that matches text."""
    if colsep is None:
        return
    try:
        pattern = re.compile(colsep)
    except re.error as exc:
        raise UsageError(f"--colsep {colsep!r} is not a regular expression ({exc})") from None
    if colsep == "" or pattern.fullmatch(""):
        literal = re.escape(colsep) if colsep else ","
        raise UsageError(
            f"--colsep {colsep!r} (a regular expression) matches the empty string, so it "
            f"would split between every character; give a separator, say --colsep '{literal}'"
        )


def read_lines(stream: IO[bytes], null: bool) -> Iterator[str]:
    """The lines (or NUL-separated records) of a byte stream, as text that keeps
    any byte that is not UTF-8 (surrogateescape: it reaches the command as it was)."""
    if null:
        pending = b""
        while chunk := stream.read(1 << 16):
            *records, pending = (pending + chunk).split(b"\0")
            for record in records:
                yield record.decode("utf-8", "surrogateescape")
        if pending:
            yield pending.decode("utf-8", "surrogateescape")
        return
    for line in stream:
        yield line.rstrip(b"\n").removesuffix(b"\r").decode("utf-8", "surrogateescape")


#: What a LineFeed's ``make`` gives for a line that is no item (None is a value).
NO_ITEM: Any = object()
#: Most items a LineFeed reads ahead of the run (``seq 10000000 | whilst run``
#: held 2.5 GB of lines); it reads on once half of them were taken.
READ_AHEAD = 1 << 16
_ENDED: Any = object()  # the end of a LineFeed's lines, in its queue


class LineFeed:
    """The lines of a stream (stdin) as an async iterator, read by a thread of its
    own: a job starts as soon as its line comes (``tail -f | whilst run``), and
    the event loop never blocks on the stream. ``ready(k)`` gives the lines that
    have come already, so a batch of jobs takes those and does not wait for more.

    Lines come to the loop in bursts: the thread wakes the loop once for all the
    lines that come before the loop takes them, not once a line (a wake-up costs
    a system call and a turn of the loop: 2.7 µs a line, half a tiny task's time).
    At most ``READ_AHEAD`` items wait to be taken: then the thread waits for room.
    """

    def __init__(self, stream: IO[bytes], null: bool, make: Callable[[str], Any]) -> None:
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            # A reader of its own: at exit, Python takes the lock of sys.stdin's, which
            # a thread blocked reading it holds ("Fatal Python error", exit 134).
            stream = open(os.dup(stream.fileno()), "rb")  # noqa: SIM115 - read to its end
        self._lines = read_lines(stream, null)
        self._make = make  # a line into the item to run (NO_ITEM: none)
        self._came: collections.deque[Any] = collections.deque()  # items come, then _ENDED
        self._loop: asyncio.AbstractEventLoop | None = None  # set once the thread reads
        self._told = False  # a wake-up is on its way to the loop
        self._waiter: asyncio.Future[None] | None = None  # __anext__ waiting for an item
        self._error: BaseException | None = None
        self._room = threading.Event()  # cleared while the thread waits for room
        self._room.set()
        self._stopped = False

    def __aiter__(self) -> LineFeed:
        return self

    def _start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        make, came = self._make, self._came

        def read() -> None:
            room = self._room
            try:
                for line in self._lines:
                    if (item := make(line)) is not NO_ITEM:
                        came.append(item)
                        self._tell(loop)
                        if len(came) >= READ_AHEAD:
                            room.clear()
                            # (unless the loop took some, or the run stopped, meanwhile)
                            if len(came) >= READ_AHEAD and not self._stopped:
                                room.wait()
                    if self._stopped:
                        break
            except BaseException as exc:
                self._error = exc
            finally:
                came.append(_ENDED)
                self._tell(loop)

        threading.Thread(target=read, name="whilst-stdin", daemon=True).start()

    def _tell(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the reading thread: wake the loop, unless a wake-up is on its way."""
        if not self._told:
            self._told = True
            with contextlib.suppress(RuntimeError):  # the run already ended
                loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        # Cleared before the waiter goes on: an item that comes after this line
        # sends a wake-up of its own, so none is left waiting unseen.
        self._told = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __anext__(self) -> Any:
        if self._loop is None:
            self._start()
        came = self._came
        while not came:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = came.popleft()
        if item is _ENDED:
            came.appendleft(_ENDED)  # stays ended
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        self._taken()
        return item

    def _taken(self) -> None:
        """Items were taken: a thread waiting for room reads on once half are gone."""
        if not self._room.is_set() and len(self._came) <= READ_AHEAD // 2:
            self._room.set()

    def stop_reading(self) -> None:
        """The run stops: the lines end here for whoever waits for one, and the
        thread reads no more."""
        self._stopped = True
        self._room.set()
        if self._loop is not None:
            self._came.append(_ENDED)
            self._woken()

    def came(self, expect: int) -> int:
        """How many lines came and wait to be taken (their end counts as one)."""
        return len(self._came)

    def ready(self, k: int) -> list[Any]:
        """Up to ``k`` lines that have come already (none waited for)."""
        out: list[Any] = []
        came = self._came
        while came and len(out) < k:
            item = came.popleft()
            if item is _ENDED:
                came.appendleft(_ENDED)
                break
            out.append(item)
        self._taken()
        return out


def jobs(
    sources: list[tuple[str, list[str]]],
    stdin: IO[bytes],
    *,
    null: bool = False,
    colsep: str | None = None,
    stream: bool = False,
) -> Iterable[Job] | LineFeed:
    """The jobs: one value from each source (the cartesian product, the last
    source varying fastest, as GNU parallel), or each line of stdin when there
    are no sources; a source linked by ``:::+`` or ``::::+`` goes value by value
    with the one before it, as GNU parallel 20221122: to the end of the shortest
    (its ``--link`` would wrap the shorter instead). With ``colsep`` (a regex, as
    GNU parallel's), each value split into columns. A single source is read
    lazily; with ``stream`` (stdin a pipe or a terminal), stdin's lines come as a
    :class:`LineFeed`, each job as its line arrives."""
    split = None if colsep is None else re.compile(colsep).split

    def args(combo: tuple[str, ...]) -> tuple[str, ...]:
        if split is None:
            return combo
        # Each column trimmed of white space at both ends (--colsep implies --trim rl).
        return tuple(c.strip(WHITE) for value in combo for c in split(value))

    seq = itertools.count(1)
    if stream and not sources:
        return LineFeed(stdin, null, lambda line: Job(next(seq), args((line,))))

    def values(kind: str, given: list[str]) -> Iterator[str]:
        if kind.removesuffix(LINK) == ARGS:
            yield from given
            return
        for name in given:
            if name == "-":
                yield from read_lines(stdin, null)
            else:
                with open(name, "rb") as f:
                    yield from read_lines(f, null)

    groups: list[list[tuple[str, list[str]]]] = []  # each a source and those linked to it
    for kind, given in sources:
        if kind.endswith(LINK) and groups:
            groups[-1].append((kind, given))
        else:
            groups.append([(kind, given)])
    streams = [zip(*(values(k, g) for k, g in group), strict=False) for group in groups]
    streams = streams or [zip(read_lines(stdin, null))]
    combos: Iterable[tuple[str, ...]] = (
        streams[0]
        if len(streams) == 1
        else (sum(combo, ()) for combo in itertools.product(*streams))
    )
    made = (Job(next(seq), args(combo)) for combo in combos)
    if sources and all(kind.removesuffix(LINK) == ARGS for kind, _ in sources):
        # all on the command line: their number is known
        return Counted(made, math.prod(min(len(g) for _, g in group) for group in groups))
    return made


class Counted(Iterable[Any]):
    """Items whose number is known before they are made (``:::`` arguments, a
    file read through once), so a progress bar has its total and ``--halt
    fail=P%`` counts against it."""

    def __init__(self, items: Iterator[Any], n: int) -> None:
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return self._items


def _modify(value: str, how: str) -> str:
    if how == ".":  # without its extension
        head, dot, ext = value.rpartition(".")
        return head if dot and "/" not in ext else value  # .hidden -> "", as GNU parallel
    if how == "/":  # its basename
        return value.rpartition("/")[2]
    if how == "//":  # its directory (a trailing / is not a level: e/ is in .)
        head, slash, _ = (value.rstrip("/") or value).rpartition("/")
        return (head.rstrip("/") or "/") if slash else "."
    if how == "/.":  # its basename without its extension
        return _modify(_modify(value, "/"), ".")
    return value


@dataclass(frozen=True)
class Template:
    """A command with replacement strings; ``shell`` False runs its words as argv."""

    words: tuple[str, ...]
    shell: bool = True

    @functools.cached_property
    def direct(self) -> bool:
        """Whether a job's command line can be run without a shell: a program
        and plain words, the inputs in them quoted. Then its words are split as
        the shell would split them and run directly, which saves starting a
        shell per job (about half the cost of a tiny command)."""
        if not self.shell or not self.words:
            return False
        text = REPLACEMENT.sub("", " ".join(self.words))
        program = text.split()[0] if text.split() else ""
        return (
            not SHELL_TEXT.search(text)
            and program not in SHELL_ONLY
            and shutil.which(program) is not None
        )

    @functools.cached_property
    def takes_slot(self) -> bool:
        """Whether a job's command names its slot (``{%}``): known only as it starts."""
        return any(m.group(2) == "%" for word in self.words for m in REPLACEMENT.finditer(word))

    @functools.cached_property
    def appends(self) -> bool:
        """No replacement string: the args are appended, as GNU parallel does."""
        return not any(REPLACEMENT.search(word) for word in self.words)

    @functools.cached_property
    def _head(self) -> list[str]:
        return shlex.split(" ".join(self.words))

    def split(self, line: str, args: tuple[str, ...]) -> list[str]:
        """A :attr:`direct` job's command line as the words the shell would run:
        appended args are words of their own as they are (they were quoted)."""
        return [*self._head, *args] if self.appends else shlex.split(line)

    def check(self) -> None:
        if not self.words:
            raise UsageError("whilst run needs a command: whilst run 'gzip -9 {}' ::: *.log")
        if perl := PERL.search(" ".join(self.words)):
            raise UsageError(
                f"{perl.group()} is a Perl expression, which whilst run does not run: use "
                "{} {.} {/} {//} {/.} {#} {%} {1} {-1}... ('mv {} {.}.png') or the shell "
                """('mv {} "$(echo {} | sed s/jpg/png/)"')"""
            )
        program = self.words[0]
        if not self.shell and " " in program.strip() and shutil.which(program) is None:
            words = " ".join(shlex.quote(w) for w in program.split())
            raise UsageError(
                f"--no-shell runs the command's words as given, with no shell to split "
                f"{program!r}: give them apart, whilst run --no-shell {words} ::: ..."
            )
        for word in self.words:
            for match in REPLACEMENT.finditer(word):
                number, how = match.groups()
                if number and how in ("#", "%"):
                    raise UsageError(f"{match.group()} is not a replacement string: use {{{how}}}")
                if number and int(number) == 0:
                    # GNU parallel reads {0} as {} and {00} or {-0} as nothing (by
                    # accident of its Perl); more likely a column was meant.
                    raise UsageError(
                        f"{match.group()} is not a replacement string: columns count from "
                        "the first, {1}, or from the last, {-1}, and {} is the whole input"
                    )

    def command(self, args: tuple[str, ...], seq: int, slot: int) -> str | list[str]:
        """The command of one job: a shell command line, or an argv."""
        quote = shlex.quote if self.shell else str

        def value(match: re.Match[str]) -> str:
            number, how = match.groups()
            if how == "#":
                return str(seq)
            if how == "%":
                return str(slot)
            if number:
                # {-1} is the last; as GNU parallel, by Perl's indexing, which is
                # Python's: of 2 columns, {-3} is the second, {-5} and {3} nothing.
                k = int(number)
                at = k - 1 if k > 0 else len(args) + k
                chosen = [args[at]] if -len(args) <= at < len(args) else []
            else:
                chosen = list(args)
            return " ".join(quote(_modify(v, how)) for v in chosen)

        if self.shell:
            line = " ".join(self.words)
            if self.appends:
                return " ".join([line, *map(shlex.quote, args)])
            return REPLACEMENT.sub(value, line)
        if self.appends:
            return [*self.words, *args]
        argv: list[str] = []
        for word in self.words:
            if word == "{}":
                argv.extend(args)  # each value its own argument
            else:
                argv.append(REPLACEMENT.sub(value, word))
        return argv


@dataclass(frozen=True)
class Job:
    """One job: its number (``{#}``, from 1) and its args. Its repr is its args as
    a shell would read them (``'a b' c``): what the journal, the report and
    ``whilst report`` show."""

    seq: int
    args: tuple[str, ...]

    def __repr__(self) -> str:
        return shlex.join(self.args)

    @property
    def text(self) -> str:
        """Its args as one line, as ``--tag`` prefixes its output."""
        return " ".join(self.args)


@dataclass
class Ran:
    """How a job's command ended: the value of a job's result."""

    command: str | list[str]
    exit_code: int | None  # None when a signal ended it
    signal: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    slot: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class CommandFailed(WhilstError):
    """A job's command exited non-zero or was killed by a signal; ``ran`` says how."""

    def __init__(self, ran: Ran) -> None:
        how = f"exit code {ran.exit_code}" if ran.signal is None else f"signal {ran.signal}"
        super().__init__(f"command failed with {how}")
        self.ran = ran


class CommandTimedOut(TaskTimeout):
    """A job's command ran past ``--timeout``; its process group was killed."""

    def __init__(self, ran: Ran, timeout: float) -> None:
        super().__init__(
            f"command ran past its timeout of {timeout:g} s; its process group "
            "was killed (SIGTERM, then SIGKILL)"
        )
        self.ran = ran


@dataclass
class Runner:
    """Runs jobs, one per call, in the calling thread: each command in its own
    process group, its output captured whole (or streamed line by line).

    Threads start and wait for the commands, not the event loop: from the loop's
    one thread, each start waits out its vfork (about 0.45 ms on a busy 2-core
    machine) one after another, and 2,000 jobs of ``true`` at -j 8 took 1.45 s
    against 1.24 s from 8 threads (measured)."""

    template: Template
    slots: int
    timeout: float | None = None
    line_buffer: bool = False
    tag: bool = False
    out: IO[bytes] = field(default_factory=lambda: sys.stdout.buffer)
    err: IO[bytes] = field(default_factory=lambda: sys.stderr.buffer)
    shell: str = field(default_factory=lambda: posix_shell())
    journal_identity: str = ""  # what a journal of this run records as its function
    report_title: str = "whilst run"
    #: A job a resume skips prints nothing: its value is not wanted back.
    journal_values: ClassVar[bool] = False
    #: What became of a job the run stopped (a halt, the deadline): see ``stop``.
    stop_note: ClassVar[str] = "its command was killed with its process group"

    @property
    def mode_reason(self) -> str:
        return f"each command is started and waited for by one of {self.slots} threads"

    def __post_init__(self) -> None:
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(1, self.slots + 1):
            self._free.put(slot)
        self._live: dict[int, Process] = {}  # by pid: running commands
        self._left: dict[int, Process] = {}  # ended, their groups not empty
        self._programs: dict[str, str | None] = {}  # program name -> its path on PATH
        self._lock = threading.Lock()  # one writer at a time on out and err
        self.stopping = False
        self.output_gone = False  # a job's line could not be written: see _write

    def __call__(self, job: Job) -> Ran:
        if self.stopping:  # the run is being stopped: start nothing more
            raise WhilstError("the run was stopped before this job started")
        slot = self._free.get()
        try:
            return self._run(job, slot)
        finally:
            self._free.put(slot)

    def _run(self, job: Job, slot: int) -> Ran:
        if any("\0" in arg for arg in job.args):  # (no command line can carry one)
            raise WhilstError(
                "its input has a NUL byte, which no command can be given; for input "
                "separated by NULs (find -print0), give -0"
            )
        command = self.template.command(job.args, job.seq, slot)
        in_shell: list[str] | None = None  # a command run without its shell: with it
        if not isinstance(command, str):
            argv = command
        else:
            argv = [self.shell, "-c", command]
            if self.template.direct:
                words = self.template.split(command, job.args)  # what the shell would run
                # `true --help` must stay the shell's builtin, which ignores it
                if words[0] not in SAME_AS_BUILTIN or not {"--help", "--version"} & {*words}:
                    argv, in_shell = words, argv
        try:
            proc = self._spawn(argv)
        except OSError as exc:
            if in_shell is None:  # --no-shell and no such program
                raise WhilstError(f"cannot run {argv[0]}: {exc.strerror}") from None
            proc = self._spawn(in_shell)  # a script with no #!
        with self._lock:
            self._live[proc.pid] = proc
            stopped = self.stopping
        if stopped:  # stop() ran while it started: it must not outlive the run
            self._kill(proc, wait=0)
        try:
            stdout, stderr, timed_out, code = self._collect(proc, job)
        finally:
            left = _group_alive(proc.pid)  # it left processes behind in its group
            with self._lock:
                self._live.pop(proc.pid, None)
                if left:
                    self._left[proc.pid] = proc
        ran = Ran(
            command,
            code if code >= 0 else None,
            -code if code < 0 else None,
            stdout,
            stderr,
            slot,
        )
        if timed_out:
            assert self.timeout is not None
            raise CommandTimedOut(ran, self.timeout)
        if not ran.ok:
            raise CommandFailed(ran)
        return ran

    def _spawn(self, argv: list[str]) -> Process:
        """Start a command in a session of its own (its pid is its process group's
        id), stdin from /dev/null, stdout and stderr into pipes that are ours to
        read (plain file descriptors: no file objects, and the program's path is
        looked up once a run: 10% more commands a second, measured)."""
        program = argv[0]
        path = program if "/" in program else self._programs.get(program, "")
        if path == "":
            path = self._programs[program] = shutil.which(program) or ""
        try:
            return spawn(argv, path or None, stdin=_devnull())
        except FileNotFoundError:
            if not path or path == program:
                raise
            # Moved since it was looked up: a search of PATH as exec's finds it, or
            # says why it cannot run (not found, not executable...).
            self._programs.pop(program, None)
            return spawn(argv, None, stdin=_devnull())

    def _collect(self, proc: Process, job: Job) -> tuple[bytes, bytes, bool, int]:
        """Read a command's output until both pipes close, or until a moment after
        the command exited (something it left running holds them open, writing or
        not; what was in them when it exited is read all the same: the command's
        own), or until its timeout (its group is killed, and what it wrote is
        kept). With --line-buffer, whole lines are printed as they come. Returns
        stdout, stderr, timed out, exit status."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        prefix = (job.text.encode("utf-8", "surrogateescape") + b"\t") if self.tag else b""
        stream = self.line_buffer
        sinks = {proc.out: self.out, proc.err: self.err}
        kept: dict[int, list[bytes]] = {proc.out: [], proc.err: []}
        partial: dict[int, list[bytes]] = {proc.out: [], proc.err: []}  # --line-buffer
        timed_out, ended, owed = False, 0.0, 0  # ended: when it was seen to have exited
        look = time.monotonic() + EXIT_GRACE  # when to look next whether it exited
        poller = select.poll()  # no file of its own, unlike epoll: cheaper for two pipes
        for fd in sinks:
            poller.register(fd, select.POLLIN)
        reading = set(sinks)
        try:
            while reading:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if timed_out:
                        break  # killed, and given a moment to flush: done
                    self._kill(proc)
                    timed_out, deadline = True, now + EXIT_GRACE  # keep what it wrote
                if not ended and now >= look:  # (its pipes may be busy: look all the same)
                    look = now + EXIT_GRACE
                    if proc.poll() is not None:
                        ended, owed = now, sum(map(_unread, reading))
                if ended and owed <= 0 and now - ended >= EXIT_GRACE:
                    break  # it exited; what it left running holds its pipes: leave them
                wait = EXIT_GRACE if deadline is None else max(min(deadline - now, EXIT_GRACE), 0)
                for fd, events in poller.poll(wait * 1000):
                    # A pipe closed with nothing left in it polls as POLLHUP alone:
                    # its end is known without a read (two system calls a job fewer).
                    chunk = os.read(fd, 1 << 16) if events & select.POLLIN else b""
                    owed -= len(chunk)
                    if not chunk:
                        poller.unregister(fd)
                        reading.discard(fd)
                    elif not stream:
                        kept[fd].append(chunk)
                    elif b"\n" not in chunk:  # (a piece kept, not joined: linear in a long line)
                        partial[fd].append(chunk)
                    else:
                        first, *lines, rest = chunk.split(b"\n")
                        lines.insert(0, b"".join([*partial[fd], first]))
                        partial[fd] = [rest] if rest else []
                        self._write(sinks[fd], b"".join(prefix + line + b"\n" for line in lines))
            for fd, sink in sinks.items():  # a last line with no newline: as it is
                if partial[fd]:
                    self._write(sink, b"".join([prefix, *partial[fd]]))
        finally:
            os.close(proc.out)
            os.close(proc.err)
        if deadline is None or timed_out:
            code = proc.wait()
        else:  # it closed its pipes but may still run: its timeout holds all the same
            try:
                code = proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self._kill(proc)
                timed_out, code = True, proc.wait()
        return b"".join(kept[proc.out]), b"".join(kept[proc.err]), timed_out, code

    def _write(self, sink: IO[bytes], data: bytes) -> None:
        with self._lock:
            try:
                sink.write(data)
            except BrokenPipeError:  # the reader went away (| head): start nothing more
                self.stopping = self.output_gone = True
                raise
            sink.flush()

    def show(self, job: Job, ran: Ran | None) -> None:
        """Print a finished job's output whole (not with --line-buffer, which
        printed it as it came)."""
        if ran is None or self.line_buffer:
            return
        prefix = (job.text.encode("utf-8", "surrogateescape") + b"\t") if self.tag else b""
        for data, sink in ((ran.stdout, self.out), (ran.stderr, self.err)):
            if not data:
                continue
            if prefix:  # (a last line with no newline: as it is, as GNU parallel)
                *lines, last = data.split(b"\n")
                data = b"".join(prefix + line + b"\n" for line in lines)
                data += prefix + last if last else b""
            self._write(sink, data)

    def _kill(self, proc: Process, wait: float = TERM_WAIT) -> None:
        """Kill a command's whole process group: SIGTERM, a short wait, SIGKILL."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
        _kill_group(proc)

    def stop(self, wait: float = TERM_WAIT) -> None:
        """Kill every running command's process group (Ctrl-C, SIGTERM, a halt).
        A command starting meanwhile sees ``stopping`` once it is registered, and
        kills itself."""
        with self._lock:
            self.stopping = True
            live = [*self._live.values(), *self._left.values()]  # nothing outlives the run
        for proc in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + wait
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(end - time.monotonic(), 0))
        for proc in live:
            _kill_group(proc)


def jobs_with_files(jobs: int) -> int:
    """``jobs``, or fewer if the limit on open files (``ulimit -n``) leaves room for
    fewer at once: more would fail to start ("Too many open files"). A UsageError
    when it leaves room for none: every job would fail."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return jobs
    if soft < (least := _open_files() + FILES_A_RUN + FILES_A_JOB):
        raise UsageError(
            f"the limit on open files (ulimit -n) is {soft}, too low to run a job: whilst "
            f"run needs {least} and more (raise it: ulimit -n 1024)"
        )
    return max(1, min(jobs, (soft - FILES_KEPT) // FILES_A_JOB))


def _open_files() -> int:
    """Files open now (before the run opens its own), counted where Linux lists them."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # (less the listing's own)
    except OSError:
        return 3


def _unread(fd: int) -> int:
    """The bytes waiting in a pipe."""
    waiting = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, waiting)
    return int.from_bytes(waiting, sys.byteorder)


@functools.cache
def _devnull() -> int:
    """/dev/null for commands' stdin, opened once (``subprocess.DEVNULL`` opens and
    closes it for each command: two system calls more a job)."""
    return os.open(os.devnull, os.O_RDONLY)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(proc: Process) -> None:
    """SIGKILL a command's process group, and again a moment later: a child
    forked while the first signal was on its way would miss it and live on,
    orphaned, in the group."""
    for pause in (0.02, 0.0):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # no process left in the group
        proc.poll()  # reap the command itself
        time.sleep(pause)


#: Shells whose quoting is POSIX's, the quoting every value gets (shlex.quote).
POSIX_SHELLS = frozenset({"sh", "bash", "dash", "ksh", "mksh", "zsh", "ash", "busybox"})


def posix_shell() -> str:
    """``$SHELL`` when it quotes as POSIX does (GNU parallel too runs jobs in the
    user's shell), else ``/bin/sh``: a value quoted for POSIX could escape its
    quotes in fish or csh."""
    shell = os.environ.get("SHELL", "")
    return shell if os.path.basename(shell) in POSIX_SHELLS else "/bin/sh"


def ran_of(result: Any) -> Ran | None:
    """The Ran of a job's result: its value, or what its error carries."""
    if isinstance(result.value, Ran):
        return result.value
    return getattr(result.error, "ran", None)


def result_record(
    job: Job, result: Any, template: Template, streamed: bool = False
) -> dict[str, Any]:
    """One line of ``--results FILE.jsonl``. A job cut short as it ran (by a halt,
    the deadline) has its command, unless that named its slot; not its output.
    ``streamed`` (--line-buffer): its output went out as it came, and is null here."""
    ran = ran_of(result)

    # Bytes that are not UTF-8 (in output, or in arguments read from a file name)
    # written as \xNN escapes, as whilst report exports them: none lost, all JSON.
    def text(data: bytes) -> str:
        return data.decode("utf-8", "backslashreplace")

    command = None if ran is None else ran.command
    if command is None and result.attempts and not template.takes_slot:
        command = template.command(job.args, job.seq, 0)
    if command is not None:
        command = utf8_text(command) if isinstance(command, str) else list(map(utf8_text, command))
    record = {
        "seq": job.seq,
        "args": [utf8_text(arg) for arg in job.args],
        "command": command,
        "status": result.status.value,
        "exit_code": None if ran is None else ran.exit_code,
        "signal": None if ran is None else ran.signal,
        "stdout": "",
        "stderr": "",
        "start": result.start,
        "duration": result.duration,
        "attempts": result.attempts,
        "error": describe(result.error) or None,
    }
    for name in ("stdout", "stderr"):
        if streamed:
            record[name] = None
            continue
        data = getattr(ran, name, b"")
        try:
            record[name] = data.decode("utf-8")
        except UnicodeDecodeError:  # also as its exact bytes: its text cannot tell a
            record[name] = text(data)  # byte 0xff from a job printing the characters \xff
            record[f"{name}_base64"] = base64.b64encode(data).decode("ascii")
    return record
