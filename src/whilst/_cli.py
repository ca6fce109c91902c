"""The ``whilst`` command. It only parses flags and calls the library: every
feature is a library feature first (here :func:`whilst._demo.run_demo`)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import io
import itertools
import os
import shlex
import stat
import sys
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from ._batch import (
    BatchOptions,
    OutputGone,
    arun_batch,
    as_options,
    common_record,
    json_line,
    run_batch,
)
from ._result import Result, Status

#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM.
EXIT_TERMINATED = 143
EXIT_HANGUP = 129
#: Exit status once stdout's reader went away (``| head``): as SIGPIPE's.
EXIT_BROKEN_PIPE = 141


def main() -> NoReturn:
    """The ``whilst`` program: runs the command, then ends the process."""
    _open_closed_std_files()
    try:
        _command()
    except SystemExit as exc:
        _leave(exc.code)
    _leave(0)


def _open_closed_std_files() -> None:
    """/dev/null for a stdin, stdout or stderr the caller closed (``<&-``): reads
    find nothing, writes vanish, as from any program; and no file opened later
    (a pipe, the event loop's own) lands on 0, 1 or 2 and is taken for one."""
    for fd, mode, name in ((0, "r", "stdin"), (1, "w", "stdout"), (2, "w", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # (the lowest free number: this one)
            if getattr(sys, name) is None:  # Python found it closed at start-up
                file = open(fd, mode, closefd=False, errors="backslashreplace")  # noqa: SIM115
                setattr(sys, name, file)


def _leave(code: str | int | None) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without tearing the interpreter
    down: freeing each object of a short command took it 26 ms (of 170 for
    ``whilst run true ::: 1``). What leaving must still do is done: the atexit
    handlers run (multiprocessing's among them), and stdout and stderr are
    flushed. While a thread that Python would wait for still runs, or a flush
    fails, or the code is a message to print, Python's own exit is kept."""
    main_thread = threading.main_thread()
    if isinstance(code, str) or any(
        t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()
    ):
        sys.exit(code)
    status = code or 0
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status & 0xFF)


#: What click 8.2 and later raise for a group run with no command: it shows the help.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _command() -> None:
    """The ``whilst`` command: exits 130 after Ctrl-C (click alone would say
    "Aborted!" and exit 1) and 143 after SIGTERM (the run raises SystemExit)."""
    from ._errors import UsageError, WhilstError, describe

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if exc.code in (EXIT_TERMINATED, EXIT_HANGUP):
            click.echo("terminated" if exc.code == EXIT_TERMINATED else "hangup", err=True)
        raise
    except click.exceptions.UsageError as exc:  # one line, as whilst's own: no usage block
        if isinstance(exc, _NO_ARGS_IS_HELP):  # (bare ``whilst``: the help)
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if exc.ctx is not None else "whilst"
        click.echo(f"whilst: {exc.format_message().rstrip('.')}; see {where} --help", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:  # found by the library before anything ran
        click.echo(f"whilst: {as_options(str(exc))}", err=True)
        sys.exit(2)
    except WhilstError as exc:  # the run itself failed (say, its journal became unwritable)
        click.echo(f"whilst: {exc}", err=True)
        sys.exit(1)
    except OutputGone:  # the reader went away (| head): stop quietly, with the status
        _quiet_stdout()  # of a program SIGPIPE ended, as cat's or GNU parallel's
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as exc:  # say, the output cannot be written: a full disk
        _quiet_stdout()
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"whilst: {exc.strerror or describe(exc)}{where}", err=True)
        sys.exit(1)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what could
    not be written raises nothing more."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@click.group(
    name="whilst",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  whilst run gzip -9 ::: *.log            a command per input, like GNU parallel
  whilst http urls.txt --out pages/       fetch many URLs, politely
  whilst call tools:resize photos.txt     a Python function per input line
  whilst report run.db -o run.html        a journal's timeline
  whilst demo --quick                     sync vs async, measured here

Run `whilst COMMAND --help` for a command's options and more examples.""",
)
@click.version_option(__version__, "-V", "--version", prog_name="whilst")
def cli() -> None:
    """Run a batch of tasks the right way: one after another, on an asyncio event
    loop, in threads, in processes or on a Dask or Ray cluster, and see where the
    time went.

    Whilst one task waits, another runs.
    """


@cli.command()
@click.option(
    "--quick", is_flag=True, help="Scale the work down so the demo ends in about 10 seconds."
)
@click.option(
    "--report",
    "reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a timeline page per scenario into this directory (created if missing): "
    "sync draws a staircase, async bars stacked in parallel.",
)
def demo(quick: bool, reports: Path | None) -> None:
    """Measure sync vs async on this machine: two sleeping tasks one after
    another and on an event loop, the "When to use which?" table (API calls,
    CPU work, file reads) and the coroutine that does nothing until awaited."""
    from ._demo import run_demo

    if reports is not None:
        try:
            reports.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.UsageError(
                f"--report {reports} cannot be created: {exc.strerror}"
            ) from None
    run_demo(quick=quick, reports=reports)


@cli.command()
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["summary", "jsonl", "csv"]),
    default="summary",
    show_default=True,
    help="summary: counts by status, the slowest tasks and the errors; "
    "jsonl or csv: one record per task, for other tools.",
)
@click.option("--slowest", default=5, show_default=True, help="How many slowest tasks to list.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the run's timeline to this HTML page (one self-contained file).",
)
@click.option(
    "--trace",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the run as Chrome trace events (open in Perfetto or chrome://tracing).",
)
def report(journal: str, fmt: str, slowest: int, output: str | None, trace: str | None) -> None:
    """Read a journal written with --journal / journal=: what ran, how it ended.

    \b
    Examples:
      whilst report run.db
      whilst report run.db -o run.html       # the timeline, one lane per worker
      whilst report run.db --format csv > results.csv
    """
    from ._errors import UsageError
    from ._journal import Journal
    from ._options import writable
    from ._report import print_records, print_summary

    try:
        pictures = writable("-o", output, ".html"), writable("--trace", trace, ".json")
        with Journal(journal, values=fmt != "summary") as records:
            results = list(records)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    if any(pictures):
        from ._html import write_report
        from ._timeline import from_journal
        from ._trace import write_trace

        timeline, summary = from_journal(journal)
        if pictures[0] is not None:
            write_report(pictures[0], timeline, summary, title=f"whilst run: {journal}")
            click.echo(f"wrote {pictures[0]}", err=True)
        if pictures[1] is not None:
            write_trace(pictures[1], timeline)
            click.echo(f"wrote {pictures[1]}", err=True)
        if fmt == "summary":
            return
    if fmt == "summary":
        print_summary(journal, results, slowest)
    else:
        print_records(results, fmt)


# -- batch commands -----------------------------------------------------------


class Seconds(click.FloatRange):
    """A number of seconds: a float in range, and a number (click lets ``nan`` by)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # NaN
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def _jobs(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``-j`` as GNU parallel's: N, or relative to the CPU count: +N and -N (plus or
    minus N, at least 1) or P% (P percent, rounded up); for ``whilst run``, 0: as
    many as the limit on open files allows (see ``jobs_with_files``)."""
    import math
    import re

    from ._options import cpu_count

    if value is None:
        return None
    if re.fullmatch(r"[0-9]+", value) and (int(value) > 0 or ctx.command.name == "run"):
        return int(value)
    if re.fullmatch(r"[+-][0-9]+", value):
        return max(1, cpu_count() + int(value))
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?%", value) and float(value[:-1]) > 0:
        return max(1, math.ceil(cpu_count() * float(value[:-1]) / 100))
    raise click.BadParameter(
        f"{value!r} is not a number of jobs: give N (at least 1), +N or -N (the CPU count "
        "plus or minus N) or P% (P percent of the CPU count)",
        ctx,
        param,
    )


def batch_options(jobs_default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options ``run``, ``http`` and ``call`` share; they become ``options``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        decorators = [
            click.option(
                "-j",
                "--jobs",
                callback=_jobs,
                metavar="N",
                help="Most jobs running at once: N, or as GNU parallel's -j, +N or -N (the "
                "CPU count plus or minus N, at least 1) or P% (P percent of the CPU count, "
                f"rounded up) [default: {jobs_default}].",
            ),
            click.option(
                "--timeout",
                type=Seconds(min=0, min_open=True),
                help="Seconds per attempt; then it is stopped and counts as timed out.",
            ),
            click.option(
                "--retries",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Extra attempts for a job that failed (--retries 2: at most 3 in "
                "all; GNU parallel's --retries 2 means 2 in all).",
            ),
            click.option(
                "--deadline",
                type=Seconds(min=0, min_open=True),
                help="Seconds for the whole run; then running jobs are stopped and the "
                "rest end cancelled.",
            ),
            click.option(
                "--grace",
                type=Seconds(min=0),
                default=5.0,
                show_default=True,
                help="Seconds running jobs get to finish after the first Ctrl-C, "
                "SIGTERM or SIGHUP (a second one stops them at once).",
            ),
            click.option("--rate", help="Most starts per second: 5, 0.5 or 300/min."),
            click.option(
                "--halt",
                help="When to stop early: soon,fail=3 (start nothing new), "
                "now,fail=1 (stop running jobs too), now,success=1, soon,fail=10%.",
            ),
            click.option(
                "-k",
                "--keep-order",
                is_flag=True,
                help="Print results in input order (default: as they finish).",
            ),
            click.option(
                "--journal",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Record each job in this SQLite file; run again with it and "
                "jobs that succeeded are skipped.",
            ),
            click.option(
                "--resume",
                type=click.Choice(["failed", "unfinished", "none"]),
                default="failed",
                show_default=True,
                help="With --journal: rerun what is not ok (failed), only jobs with "
                "no final record (unfinished, GNU parallel's --resume), or all (none).",
            ),
            click.option(
                "--force", is_flag=True, help="Resume a journal written by another command."
            ),
            click.option(
                "--report",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Write the run's timeline to this HTML page.",
            ),
            click.option(
                "--trace",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Write the run as Chrome trace events (Perfetto).",
            ),
            click.option(
                "--results",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Write one JSON line per job to this file.",
            ),
            click.option(
                "--progress/--no-progress",
                default=None,
                help="A progress bar on stderr [default: when stderr is a terminal "
                "and stdout is not].",
            ),
            click.option("-q", "--quiet", is_flag=True, help="No summary at the end."),
        ]
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def _shared(kwargs: dict[str, Any]) -> BatchOptions:
    """Take the shared options out of a command's keyword arguments."""
    from ._errors import UsageError
    from ._options import writable

    names = [f.name for f in dataclasses.fields(BatchOptions)]
    options = BatchOptions(**{name: kwargs.pop(name) for name in names if name in kwargs})
    if options.journal is None and (options.force or options.resume != "failed"):
        raise UsageError("--resume and --force are for a run with --journal FILE")
    if options.journal is not None and os.fspath(options.journal) == "-":
        raise UsageError("--journal - would be a file named '-'; give a file name such as run.db")
    writable("--results", options.results, ".jsonl")
    return options


@cli.command(
    context_settings={"allow_interspersed_args": False},
    epilog="""\b
Examples:
  whilst run gzip -9 ::: *.log                 # each file, CPU count at a time
  whilst run -j 4 'convert {} {.}.png' ::: *.jpg
  whilst run -k echo {1}-{2} ::: a b ::: 1 2   # a-1 a-2 b-1 b-2, in order
  find . -name '*.txt' | whilst run wc -l      # inputs from stdin
  whilst run --colsep , 'mv {1} {2}' :::: renames.csv
  whilst run --timeout 30 --retries 2 --journal fetch.db ./fetch.sh :::: ids.txt

\b
Replacement strings (as GNU parallel): {} the input, {.} without its
extension, {/} its basename, {//} its directory, {/.} basename without
extension, {#} the job number, {%} the job slot, {1} {2}... the columns
(also {1.} {1/}...). With none, the input is appended. Every value is
shell-quoted: an input such as '; rm -rf ~' reaches the command as one
literal argument.

\b
Exit status: 0 when every job succeeded, 1 when any failed, 2 for a usage
error, 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, 141 once the
output's reader went away (| head).""",
)
@batch_options("the CPU count")
@click.option("-0", "--null", is_flag=True, help="Inputs are separated by NUL, not newline.")
@click.option(
    "--colsep",
    metavar="SEP",
    help="Split each input into columns {1} {2}... at SEP (a regex), trimmed of white space.",
)
@click.option(
    "--no-shell", is_flag=True, help="Run the command's words directly, not by $SHELL -c."
)
@click.option("--dry-run", is_flag=True, help="Print the commands; run nothing.")
@click.option("--tag", is_flag=True, help="Start each output line with the job's input and a tab.")
@click.option(
    "--line-buffer",
    is_flag=True,
    help="Print output lines as they come (default: each job's output whole).",
)
@click.argument(
    "words", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND... [::: INPUTS...]"
)
def run(words: tuple[str, ...], **kwargs: Any) -> None:
    """Run a command for every input, like GNU parallel: faster, and every
    input shell-quoted.

    Inputs come after ::: (values), :::: (files of lines; - for stdin), or,
    with neither, from the lines of stdin. Several sources make every
    combination. Each job's output is printed whole when it ends, never mixed
    with another job's.
    """
    from ._errors import UsageError
    from ._shell import (
        MOST_JOBS,
        LineFeed,
        Runner,
        Template,
        check_colsep,
        check_sources,
        jobs,
        jobs_with_files,
        ran_of,
        result_record,
        split_words,
    )

    null, colsep, no_shell = kwargs.pop("null"), kwargs.pop("colsep"), kwargs.pop("no_shell")
    dry_run, tag, line_buffer = kwargs.pop("dry_run"), kwargs.pop("tag"), kwargs.pop("line_buffer")
    try:
        options = _shared(kwargs)
        command, sources = split_words(words)
        template = Template(tuple(command), shell=not no_shell)
        template.check()
        check_sources(sources)
        check_colsep(colsep)
        if line_buffer and options.keep_order:
            raise UsageError("--line-buffer with -k is not supported: use one of them")
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    stdin = sys.stdin.buffer
    # From a pipe or a terminal, each job starts as its line comes, and a slow
    # stream never holds up the event loop.
    stream = not dry_run and not _is_file(stdin)
    todo = jobs(sources, stdin, null=null, colsep=colsep, stream=stream)
    task_id = "\0".join  # a job's identity in a journal: its arguments
    # A journal's: a changed command is refused. The command line the shell reads
    # ('sleep {}' and sleep {} are one), or with --no-shell the argv.
    identity = f"whilst run {shlex.join(command) if no_shell else ' '.join(command)}"
    if dry_run:
        out = sys.stdout.buffer
        assert not isinstance(todo, LineFeed)  # (no stream for a dry run)
        from ._journal import id_key, skipped_keys

        # What a run would skip (its journal has it done) is not shown.
        done = set()
        if options.journal is not None:
            try:
                done = skipped_keys(
                    options.journal, options.resume, identity, options.force, values=False
                )
            except UsageError as exc:
                raise click.UsageError(str(exc)) from None
        try:
            for job in todo:
                if done and id_key(task_id(job.args)) in done:
                    continue
                line = template.command(job.args, job.seq, 1)
                text = line if isinstance(line, str) else shlex.join(line)
                if tag:  # as GNU parallel's --dry-run --tag: the input, a tab, the command
                    text = f"{job.text}\t{text}"
                out.write(text.encode("utf-8", "surrogateescape") + b"\n")
            out.flush()
        except BrokenPipeError:
            raise OutputGone from None
        return
    from ._options import default_limit

    limit = default_limit("processes") if options.jobs is None else options.jobs
    if limit == 0:  # -j 0: as many at once as there are files for
        limit = jobs_with_files(MOST_JOBS)
    elif (room := jobs_with_files(limit)) < limit:
        click.echo(
            f"whilst: the limit on open files (ulimit -n) leaves room for {room} "
            f"job{'s' if room > 1 else ''} at once, not {limit}: running {room} at a time "
            "(raise it with ulimit -n)",
            err=True,
        )
        limit = room
    runner = Runner(
        template,
        slots=limit,
        timeout=options.timeout,
        line_buffer=line_buffer,
        tag=tag,
        journal_identity=identity,
        report_title=identity,
    )

    def show(r: Result) -> None:
        if runner.output_gone:  # (--line-buffer: a job found it writing its lines)
            raise BrokenPipeError
        ran = ran_of(r) if r.status is not Status.SKIPPED else None
        runner.show(r.item, ran)
        if ran is None and not r.ok and r.status is not Status.CANCELLED:  # not the command's
            text = r.item.text if len(r.item.text) <= 60 else f"{r.item.text[:57]}..."
            click.echo(f"whilst: job {r.item.seq} ({text}): {r.error}", err=True)

    def record(r: Result) -> dict[str, Any]:
        return result_record(r.item, r, template, streamed=line_buffer)

    try:
        status = run_batch(
            runner,
            todo,
            dataclasses.replace(
                options,
                jobs=limit,
                timeout=None,  # the runner times commands
            ),
            mode="threads",
            show=show,
            record=record,
            task_id=lambda job: task_id(job.args),
        )
    finally:
        runner.stop()  # whatever way the run ended: no command is left running
    sys.exit(status)


@cli.command(
    epilog="""\b
Examples:
  whilst http urls.txt --out pages/            # each body to its own file
  whilst http -j 50 --per-host 2 --rate 20 urls.txt
  cat urls.txt | whilst http --retries 3 --results fetched.jsonl
  whilst http -H 'Content-Type: application/json' --data '{"q": 1}' urls.txt  # POST

\b
Connection errors and 429, 502, 503, 504 are retried with --retries,
waiting as a Retry-After header asks, up to --max-wait (a wait of 2 s or
more is said on stderr); a URL asking for longer fails at once, saying
so. Authorization, Cookie and X-Api-Key headers are sent, never written;
URLs are shown with user:password@ and secret-looking query values (key,
token, password...) as ***.

\b
Exit status: 0 when every URL was fetched, 1 when any failed, 2 for a usage
error, 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, 141 once the
output's reader went away (| head).""",
)
@batch_options("100")
@click.option(
    "--per-host",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Most requests in flight to one host.",
)
@click.option(
    "--max-wait",
    type=Seconds(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait a Retry-After may ask for before a retry; a URL asking for "
    "longer fails at once, saying so.",
)
@click.option(
    "-X", "--method", help="The HTTP method [default: GET, or POST with --data, as curl]."
)
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A request header (repeatable).",
)
@click.option(
    "--data",
    help="The request body, or @FILE for a file's bytes; without -X, the method is POST.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save each body to its own file in this directory (created if missing).",
)
@click.argument(
    "source", required=False, default="-", type=click.Path(dir_okay=False, allow_dash=True)
)
def http(source: str, **kwargs: Any) -> None:
    """Fetch many URLs (one per line, from SOURCE or stdin; blank lines and lines
    starting with # are skipped), politely: a limit in flight, per host and per
    second, retries that honour Retry-After.

    Prints one line per URL: status, bytes, seconds, URL.
    """
    import asyncio
    import math

    from ._errors import UsageError
    from ._http import (
        Fetcher,
        check_method,
        check_out,
        check_url,
        parse_headers,
        read_body,
        request_identity,
        retryable,
    )
    from ._shell import NO_ITEM

    per_host, out, max_wait = kwargs.pop("per_host"), kwargs.pop("out"), kwargs.pop("max_wait")
    data, given_headers = kwargs.pop("data"), kwargs.pop("headers")
    try:
        method = check_method(kwargs.pop("method"), data)
        options = _shared(kwargs)
        headers = parse_headers(given_headers)
        body = read_body(data)
        check_out(out)

        def target(_: int, line: str, strict: bool = False) -> Any:
            url = line.strip()
            return NO_ITEM if url.startswith("#") else check_url(url, strict)

        targets = _read(source, target, check=functools.partial(target, strict=True))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    jobs = options.jobs or 100
    # A per-host limit of -j or more can never bind: leave it out (the fast path).
    per_host_limit = {} if per_host >= jobs else {"key": _host, "per_key": per_host}
    fetcher = Fetcher(
        method=method,
        headers=headers,
        data=body,
        out=out,
        connections=jobs,
        max_wait=max_wait if options.retries else math.inf,  # no retry: no wait to cap
        note=_note if options.retries else None,
        # A journal of another request (method, headers, body) is refused, as a
        # changed command is: header values and the body count only as a hash.
        journal_identity=request_identity(
            method, headers, body if data and data[0] == "@" else data
        ),
    )

    write = sys.stdout.write

    def show(r: Result) -> None:
        if r.status is Status.SKIPPED:
            return
        f = r.value  # seconds: from its first request to its end, as on a failure's line
        if f is not None:
            write(f"{f.status}\t{f.bytes}\t{r.duration:.3f}\t{r.item.shown}\n")
        else:
            code = getattr(r.error, "status", None) or r.status.value  # HTTP's, if it came
            write(f"{code}\t-\t{r.duration:.3f}\t{r.item.shown}\t{r.error}\n")

    def record(r: Result) -> dict[str, Any]:
        f = r.value
        return {
            **common_record(r),
            "url": repr(r.item),
            "http_status": getattr(f, "status", getattr(r.error, "status", None)),
            "bytes": getattr(f, "bytes", None),
            "elapsed": getattr(f, "elapsed", getattr(r.error, "elapsed", None)),
            "file": getattr(f, "saved", None),
        }

    async def main() -> int:
        await fetcher.open()
        try:  # Ctrl-C and SIGTERM: the run stops as every run does (see aimap)
            return await arun_batch(
                fetcher, targets, options, mode="async",
                show=show, record=record,
                task_id=lambda t: t.key, retry_on=retryable,
                **per_host_limit,
            )  # fmt: skip
        finally:
            await fetcher.close()

    from ._runner import new_loop

    with asyncio.Runner(loop_factory=new_loop) as runner:  # uvloop when installed
        status = runner.run(main())
    sys.exit(status)


def _host(target: Any) -> str:
    return str(target.host)


def _note(text: str) -> None:
    click.echo(text, err=True)


def _read(
    source: str,
    make: Callable[[int, str], Any],
    check: Callable[[int, str], Any] | None = None,
) -> Iterable[Any] | AsyncIterable[Any]:
    """The items ``make(number, line)`` makes of the non-blank lines of a file, or
    of stdin for ``-`` (lines as they are: a file name may hold spaces; NO_ITEM:
    no item), read as the run goes: ten million lines take no more memory than
    ten. Lines that come on a pipe or a terminal run as they come (``tail -f |``);
    those of a file are first read through once with ``check`` (which raises a
    UsageError for a bad line; default ``make``), so that a bad line stops the
    run before any item runs, and their number is known (``--halt fail=P%``)."""
    from ._shell import NO_ITEM, Counted, LineFeed, read_lines

    if source == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - read to the end of the run
        except OSError as exc:
            if "://" in source:  # a URL, not a file of them
                command = click.get_current_context().command_path
                raise click.UsageError(
                    f"{source} is not a file: inputs come from a file or stdin, one a line, "
                    f"as in echo '{source}' | {command}"
                ) from None
            raise click.UsageError(f"{source} cannot be read: {exc.strerror}") from None
    if not _is_file(stream):
        numbers = itertools.count(1)

        def made(line: str) -> Any:
            number = next(numbers)  # (every line counts, blank ones too)
            return make(number, line) if line.strip() else NO_ITEM

        return LineFeed(stream, False, made)

    def items(make: Callable[[int, str], Any]) -> Iterator[Any]:
        for n, line in enumerate(read_lines(stream, False), 1):
            if line.strip() and (item := make(n, line)) is not NO_ITEM:
                yield item

    start = stream.tell()
    count = sum(1 for _ in items(check or make))
    stream.seek(start)
    return Counted(items(make), count)


def _is_file(stream: Any) -> bool:
    """Whether ``stream`` reads a file (not a pipe or a terminal): it can be read twice."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a file descriptor
        return stream.seekable()  # type: ignore[no-any-return]


@cli.command(
    epilog="""\b
Examples:
  whilst call --mode processes mymodule:resize photos.txt
  whilst call --path src tools.parse:parse_line < lines.txt > parsed.jsonl
  whilst call --jsonl client:fetch_user users.jsonl -j 20 --retries 2

\b
Each result is one JSON line on stdout: {"index", "item", "ok", "value"},
or "status" and "error" when it failed (values that are not JSON are
shown as their repr). Exit status: 0 when every call succeeded, 1 when any
failed, 2 for a usage error, 130 after Ctrl-C, 143 after SIGTERM, 129 after
SIGHUP, 141 once the output's reader went away (| head).""",
)
@batch_options("as --mode chooses")
@click.option(
    "--mode",
    type=click.Choice(["auto", "sync", "async", "threads", "processes", "dask", "ray"]),
    default="auto",
    show_default=True,
    help="Where the calls run.",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    help="With --mode dask or ray: the cluster's address (default: a local cluster).",
)
@click.option(
    "--cluster-insecure",
    is_flag=True,
    help="Allow a plain tcp:// cluster address that is not this machine.",
)
@click.option("--jsonl", is_flag=True, help="Each input line is a JSON value, not a string.")
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Add this directory to sys.path first (repeatable).",
)
@click.argument("target", metavar="MODULE:FUNCTION")
@click.argument(
    "source", required=False, default="-", type=click.Path(dir_okay=False, allow_dash=True)
)
def call(target: str, source: str, **kwargs: Any) -> None:
    """Call a Python function on every input line (from SOURCE or stdin)."""

    from ._errors import UsageError, describe

    mode, jsonl, paths = kwargs.pop("mode"), kwargs.pop("jsonl"), kwargs.pop("paths")
    cluster, insecure = kwargs.pop("cluster"), kwargs.pop("cluster_insecure")
    if cluster is not None and mode not in ("dask", "ray"):
        raise click.UsageError("--cluster is for --mode dask or ray")
    on_cluster = (
        {"cluster": cluster, "cluster_insecure": insecure} if mode in ("dask", "ray") else {}
    )
    try:
        options = _shared(kwargs)
        items = _read(source, _json_line) if jsonl else _read(source, _line)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None

    def record(r: Result) -> dict[str, Any]:
        return {**common_record(r), "item": r.item, "value": r.value}

    if options.progress is None:  # decided by where stdout goes, before it is kept
        options = dataclasses.replace(options, progress=options.policy()["progress"])
    with _results_out() as write:  # (the module's own prints as it is imported too)
        try:
            fn = _function(target, paths)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None

        def show(r: Result) -> None:
            line: dict[str, Any] = {"index": r.index, "item": r.item, "ok": r.ok}
            if r.ok:
                line["value"] = r.value
            else:
                line.update(status=r.status.value, error=as_options(describe(r.error)))
            write(json_line(line) + "\n")

        status = run_batch(
            fn, items, options, mode=mode, show=show, record=record,
            **on_cluster,
        )  # fmt: skip
    sys.exit(status)


@contextlib.contextmanager
def _results_out() -> Iterator[Callable[[str], object]]:
    """Writes to stdout kept for the result lines alone: whatever else writes to
    stdout (the function's prints, a worker process's, C code's, the module's atexit
    handlers') goes to stderr from now on, so the lines stay JSON a reader can parse."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        yield sys.stdout.write
        return
    sys.stdout.flush()
    kept = os.dup(fd)
    out = open(  # noqa: SIM115 - closed below
        kept, "w", buffering=1, encoding=sys.stdout.encoding, errors="backslashreplace"
    )  # line by line, as each result ends
    os.dup2(sys.stderr.fileno(), fd)
    try:
        yield out.write
        out.flush()
    finally:
        with contextlib.suppress(OSError):
            out.close()


def _function(target: str, paths: tuple[str, ...]) -> Callable[..., Any]:
    """``module:function`` imported, or a UsageError saying what is missing."""
    import importlib

    from ._errors import UsageError, describe

    module_name, colon, name = target.partition(":")
    if not colon or not module_name or not name:
        raise UsageError(f"{target!r} is not MODULE:FUNCTION, such as mytools:resize")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        where = Path(module_name)
        raise UsageError(
            f"{module_name!r} is a file name: give the module's name, "
            f"{where.stem}:{name}" + (f", with --path {where.parent}" if where.parent.name else "")
        )
    for path in reversed(paths):
        sys.path.insert(0, str(Path(path).resolve()))
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name != exc.name and not module_name.startswith(f"{exc.name}."):
            raise UsageError(
                f"module {module_name!r} needs {exc.name!r}, which is not installed"
            ) from None
        raise UsageError(
            f"module {exc.name!r} was not found; run from its directory or add --path DIR"
        ) from None
    except Exception as exc:  # its own code failed as it was imported
        raise UsageError(f"module {module_name!r} failed to import: {describe(exc)}") from None
    except SystemExit as exc:  # (a script's sys.exit(), run at import: not whilst's status)
        raise UsageError(
            f"module {module_name!r} called sys.exit({exc.code!r}) as it was imported; "
            "keep a script's top-level code under if __name__ == '__main__':"
        ) from None
    fn: Any = module
    for part in name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UsageError(f"module {module_name!r} has no {name!r}")
    if not callable(fn):
        kind = type(fn).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise UsageError(f"{target} is {article} {kind}, not a function")
    return _listing(fn)


def _listing(fn: Any) -> Callable[..., Any]:
    """A generator function's task gives the list of what it yields (a generator
    object would show as its repr, and cannot come back from a worker process);
    an async one's, awaited (async mode)."""
    import functools
    import inspect

    listing: Any
    if inspect.isasyncgenfunction(fn):
        listing = functools.partial(_alisted, fn)
    elif inspect.isgeneratorfunction(fn):
        listing = functools.partial(_listed, fn)
    else:
        return fn  # type: ignore[no-any-return]
    from ._journal import function_name

    listing.journal_identity = function_name(fn)  # (a journal knows the function, not _listed)
    listing.__qualname__ = getattr(fn, "__qualname__", "")  # (and so does a report's title)
    return listing  # type: ignore[no-any-return]


def _listed(fn: Callable[[Any], Iterable[Any]], item: Any) -> list[Any]:
    return list(fn(item))


async def _alisted(fn: Callable[[Any], AsyncIterable[Any]], item: Any) -> list[Any]:
    return [value async for value in fn(item)]


def _line(_: int, line: str) -> str:
    return line


def _json_line(number: int, line: str) -> Any:
    import json

    from ._errors import UsageError

    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"line {number} is not JSON ({exc.msg}); drop --jsonl for plain lines"
        ) from None


@cli.command(
    context_settings={"allow_interspersed_args": False},
    epilog="""\b
Examples:
  whilst doctor app.py --port 8080        # run app.py with its arguments
  whilst doctor --json -o findings.json crawl.py
  python -m whilst.doctor app.py

\b
It finds: calls that block the event loop (time.sleep, requests, file reads,
CPU loops) with the line, how often and how long; coroutines never awaited and
task exceptions never retrieved, where they were created; and how much of the
loop's time went to the CPU. The program's own exit status is passed through.""",
)
@click.option(
    "--threshold",
    type=Seconds(min=0.001),
    default=0.1,
    show_default=True,
    help="Seconds the event loop may stay away before it counts as blocked.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The findings as one JSON object (on stdout, after the program's own output, unless -o).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the findings to this file instead (the program's own output stays where it goes).",
)
@click.option("--live", is_flag=True, help="Also report each problem on stderr when it happens.")
@click.option(
    "--origins",
    is_flag=True,
    help="Record where every coroutine is created (Python's origin tracking): exact "
    "places for stored coroutines never awaited, about 5% slower.",
)
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def doctor(
    script: str,
    args: tuple[str, ...],
    threshold: float,
    as_json: bool,
    output: str | None,
    live: bool,
    origins: bool,
) -> None:
    """Run an asyncio program (SCRIPT [ARGS]...) and report what slows it down."""
    out = None
    if output is not None:
        try:  # before the program runs: a findings file that cannot be written stops it
            out = open(output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise click.BadParameter(f"cannot write {output}: {exc.strerror}") from None
    try:
        status = run_doctor(
            script, args, threshold=threshold, as_json=as_json, live=live, origins=origins,
            file=out,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()
    sys.exit(status)


def run_doctor(
    script: str,
    args: Sequence[str],
    *,
    threshold: float,
    as_json: bool,
    live: bool,
    origins: bool = False,
    file: Any = None,
) -> int:
    """Run ``script`` as ``__main__`` under the doctor; the program's exit status.
    The findings go to ``file`` (default: JSON on stdout, text on stderr)."""
    import gc
    import json
    import runpy
    import signal
    import traceback

    from ._doctor import Doctor, Finding, print_report, report

    def tell(finding: Finding) -> None:
        click.echo(
            f"whilst doctor: {finding.kind} at {finding.file}:{finding.line} "
            f"({finding.call}): {finding.fix}",
            err=True,
        )

    status: int | None = 0
    script_path = os.fsdecode(script)  # as runpy names the program's code
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    watch = Doctor(threshold=threshold, live=tell if live else None, origins=origins)

    def terminated(signum: int, frame: object) -> None:  # report, then exit as SIGTERM would
        raise SystemExit(EXIT_TERMINATED)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)
    try:
        with watch:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                code = exc.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
                if code is not None and not isinstance(code, int):
                    click.echo(str(code), err=True)
            except KeyboardInterrupt:
                status = EXIT_INTERRUPTED
            except Exception as exc:  # the program's own error: shown as Python would
                tb = exc.__traceback__  # from the program's own frames on, not whilst's
                while tb is not None and tb.tb_frame.f_code.co_filename != script_path:
                    tb = tb.tb_next
                if tb is None and not isinstance(exc, SyntaxError):  # (a SyntaxError's
                    tb = exc.__traceback__  # text names the program's line itself)
                traceback.print_exception(type(exc), exc, tb)
                status = 1
            # The program's globals (its functions refer to them: a cycle) are freed
            # now, while watched: a coroutine or a task kept there and never awaited
            # or retrieved is found, as Python would warn at its exit.
            gc.collect()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    if as_json:
        sys.stdout.flush()
        click.echo(json.dumps(report(watch, script, status)), file=file)
    else:
        print_report(watch, script, file)
    return status or 0
