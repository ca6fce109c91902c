"""The ``whilst`` command line, through click's runner and as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import whilst
from whilst._cli import cli as whilst_cli

from conftest import cli


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(whilst_cli, list(args))
    return result.exit_code, result.output


def test_version() -> None:
    code, out = invoke("--version")
    assert code == 0
    assert out.strip() == f"whilst, version {whilst.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_demo(flag: str) -> None:
    code, out = invoke(flag)
    assert code == 0
    assert out.startswith("Usage: whilst")
    assert "demo" in out
    assert "Whilst one task waits, another runs." in out


def test_demo_help() -> None:
    code, out = invoke("demo", "--help")
    assert code == 0
    assert "--quick" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "No such command 'nope'"),
        (["--nope"], "--nope"),
        (["demo", "--fast"], "--fast"),
        (["demo", "extra"], "extra"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    """One line, as whilst's own checks say theirs (click's usage block and blank
    line came before its error)."""
    run = cli(sys.executable, "-m", "whilst", *args, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("whilst: ")
    assert message in line
    assert line.endswith("--help")


def test_whilst_alone_shows_its_help() -> None:
    """(Click raises that as a usage error: it came out as one "error" line.)"""
    run = cli(sys.executable, "-m", "whilst", text=True)
    assert "Usage: " in run.stderr + run.stdout
    assert "Commands:" in run.stderr + run.stdout
    assert "whilst: Usage" not in run.stderr


def test_demo_quick_as_a_real_command() -> None:
    script = Path(sys.executable).with_name("whilst")
    assert script.exists(), f"the console script is missing: pip install -e . ({script})"
    # As a user runs it: no asyncio debug mode (conftest.py turns it on for the tests'
    # own loops, and it logs every slow callback to stderr).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    env["PYTHONWARNINGS"] = "error::RuntimeWarning"
    done = subprocess.run(
        [str(script), "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "\x1b[" not in out  # not a terminal: plain text
    for text in ("Task started", "When to use which?", "<coroutine object greet", "demo finished"):
        assert text in out


def test_python_dash_m_whilst_is_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "whilst", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"whilst, version {whilst.__version__}"


def test_ctrl_c_exits_130_with_one_line_not_a_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "whilst", "demo", "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)  # into the demo's first runs
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted"
