"""The ``whilst`` command. It only parses flags and calls the library: every
feature is a library feature first (here :func:`whilst._demo.run_demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__

#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 130


def main() -> None:
    """The ``whilst`` command: exits 130 after Ctrl-C (click alone would say
    "Aborted!" and exit 1) and 143 after SIGTERM (the run raises SystemExit)."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


@click.group(name="whilst", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="whilst")
def cli() -> None:
    """Run a batch of tasks the right way: one after another, on an asyncio event
    loop, in threads or in processes, and see where the time went.

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
    """Measure sync vs async on this machine: the seed's two tasks, the
    "When to use which?" table (API calls, CPU work, file reads) and the
    coroutine that does nothing until awaited."""
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
