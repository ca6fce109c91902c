"""``whilst http`` against a real aiohttp server on 127.0.0.1 that injects latency,
429s with Retry-After, 500s, resets and slow bodies; ``whilst call`` (issue 6;
reliability.md 27)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp import web

from conftest import cli, line_by_line

WHILST = [sys.executable, "-m", "whilst"]
SECRET = "SEKRET-1234"


class Server:
    """An aiohttp server in a thread of its own, recording what it was asked."""

    def __init__(self) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.auth: list[str | None] = []
        self.requests: list[tuple[str, bytes]] = []  # /echo/: method and body
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.other: Server | None = None  # where /redirect sends
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{kind}/{name:.*}", self._answer)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        kind, name = request.match_info["kind"], request.match_info["name"]
        self.hits[f"{kind}/{name}"].append(time.monotonic())
        host = request.host.split(":")[0]
        self.running[host] += 1
        self.peak[host] = max(self.peak[host], self.running[host])
        try:
            await asyncio.sleep(0.02)
            n = len(self.hits[f"{kind}/{name}"])
            if kind == "busy" and n < 3:
                return web.Response(status=429, headers={"Retry-After": "0.3"})
            if kind == "fail":
                return web.Response(status=500)
            if kind == "pause" and n < 2:  # busy for 2 s: long enough to be said
                return web.Response(status=503, headers={"Retry-After": "2"})
            if kind == "later":  # busy for an hour
                return web.Response(status=503, headers={"Retry-After": "3600"})
            if kind == "echo":
                self.requests.append((request.method, await request.read()))
                return web.Response(text=request.method)
            if kind == "reset" and n < 4:
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-request
                return web.Response()
            if kind == "slow":
                response = web.StreamResponse()
                await response.prepare(request)
                for _ in range(50):
                    await response.write(b"x" * 10)
                    await asyncio.sleep(0.1)
                return response
            if kind == "cut" and (n < 2 or name == "always"):
                response = web.StreamResponse(headers={"Content-Length": "60"})
                await response.prepare(request)
                await response.write(b"x" * 24)
                assert request.transport is not None
                request.transport.close()  # the body is cut short: 24 of 60 bytes
                return response
            if kind == "redirect":
                assert self.other is not None
                raise web.HTTPFound(self.other.url("/auth/x"))
            if kind == "loop":
                raise web.HTTPFound(request.path)
            if kind == "auth":
                self.auth.append(
                    request.headers.get("Authorization") or request.headers.get("X-Api-Key")
                )
                return web.Response(text=request.headers.get("Authorization", "none"))
            if kind == "wait":
                await asyncio.sleep(0.2)
            if kind == "long":
                await asyncio.sleep(1.5)
            return web.Response(text=f"page {name}\n")
        finally:
            self.running[host] -= 1

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def whilst(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*WHILST, *args, input=stdin, text=True, timeout=timeout)


def test_retries_honour_retry_after_and_each_url_ends_as_it_should(
    server: Server, tmp_path: Path
) -> None:
    results = tmp_path / "r.jsonl"
    urls = [server.url(p) for p in ("/ok/1", "/ok/2", "/busy/1", "/fail/1", "/reset/1")]
    run = whilst("http", "--retries", "3", "--results", str(results), "-q", stdin="\n".join(urls))
    assert run.returncode == 1, run.stderr
    records = {r["url"]: r for r in map(json.loads, results.read_text().splitlines())}
    busy, fail, reset = records[urls[2]], records[urls[3]], records[urls[4]]
    assert records[urls[0]]["http_status"] == 200
    assert records[urls[0]]["bytes"] == 7
    assert busy["ok"]
    assert busy["attempts"] == 3
    gaps = [b - a for a, b in zip(server.hits["busy/1"], server.hits["busy/1"][1:], strict=False)]
    assert all(gap >= 0.3 for gap in gaps)  # Retry-After: 0.3
    assert not fail["ok"]
    assert fail["attempts"] == 1
    assert fail["http_status"] == 500
    assert 0 < fail["elapsed"] <= fail["duration"]  # a failure's request took time (was null)
    assert reset["ok"]  # after 3 dropped connections (aiohttp may resend one by itself)
    assert reset["attempts"] >= 2
    assert "1 of 5 failed" in run.stderr
    assert busy["elapsed"] < 0.3 <= busy["duration"]  # its last request; all, waits too
    seconds = {line.split("\t")[3]: float(line.split("\t")[2]) for line in run.stdout.splitlines()}
    assert seconds[urls[2]] == pytest.approx(busy["duration"], abs=1e-3)  # as a failure's


def test_a_url_still_busy_after_its_retries_shows_its_http_status(server: Server) -> None:
    run = whilst("http", "--retries", "1", "-q", stdin=server.url("/busy/2"))
    assert run.returncode == 1
    status, _, _, url, error = run.stdout.rstrip("\n").split("\t")
    assert (status, url) == ("429", server.url("/busy/2"))
    assert error == f"HTTP 429 from {server.url('/busy/2')}"  # no "to be retried" at the end


def test_a_long_retry_after_is_said_once_per_host_and_a_short_one_not_at_all(
    server: Server,
) -> None:
    urls = [server.url("/pause/1"), server.url("/pause/2"), server.url("/busy/3")]
    run = whilst("http", "--retries", "2", "-q", stdin="\n".join(urls))
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stderr.splitlines() if "Retry-After" in line]
    assert notes == [
        "whilst: HTTP 503 from 127.0.0.1:"
        f"{server.port} asks to wait 2 s (Retry-After): its URLs are retried after that "
        "wait, while --retries last"
    ]
    assert sorted(line.split("\t")[0] for line in run.stdout.splitlines()) == ["200"] * 3


def test_a_retry_after_longer_than_max_wait_fails_at_once_saying_so(
    server: Server, tmp_path: Path
) -> None:
    """A 503 asking for an hour does not hold the run (it did, silently): past
    --max-wait (default 60 s) the URL fails at once, naming the wait and the fix."""
    results = tmp_path / "r.jsonl"
    url = server.url("/later/1")
    run = whilst("http", "--retries", "3", "--results", str(results), stdin=url, timeout=20)
    assert run.returncode == 1, run.stderr
    assert len(server.hits["later/1"]) == 1  # not retried
    status, _, _, shown, error = run.stdout.rstrip("\n").split("\t")
    assert (status, shown) == ("503", url)
    assert error == (
        f"HTTP 503 from {url}: the server asks to wait 3600 s (Retry-After), more than "
        "--max-wait 60 s; not retried (give --max-wait 3600 to wait for it)"
    )
    record = json.loads(results.read_text())
    assert (record["http_status"], record["attempts"]) == (503, 1)
    assert "1 of 1 failed" in run.stderr
    assert "more than --max-wait 60 s" in run.stderr.splitlines()[-1]
    # --max-wait sets the cap: a Retry-After of 0.3 s past a cap of 0.1 s fails too
    run = whilst("http", "--retries", "3", "--max-wait", "0.1", "-q", stdin=server.url("/busy/1"))
    assert run.returncode == 1
    assert "asks to wait 0.3 s (Retry-After), more than --max-wait 0.1 s" in run.stdout
    assert len(server.hits["busy/1"]) == 1


def test_data_implies_post_unless_x_says_otherwise(server: Server, tmp_path: Path) -> None:
    """As curl's -d: --data without -X is a POST (it was a GET with a body), and
    --data @FILE sends the file (it sent the text "@FILE")."""
    body = tmp_path / "body.json"
    body.write_bytes(b'{"q": 3}\n\xff')
    for args in (["--data", "q=1"], ["-X", "put", "--data", "q=2"], [], ["--data", f"@{body}"]):
        run = whilst("http", "-q", *args, stdin=server.url("/echo/1"))
        assert run.returncode == 0, run.stderr
    assert server.requests == [
        ("POST", b"q=1"), ("PUT", b"q=2"), ("GET", b""), ("POST", b'{"q": 3}\n\xff')
    ]  # fmt: skip


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_lets_running_requests_finish_and_starts_no_more(
    server: Server, tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(server.url(f"/long/{k}") for k in range(6)))
    proc = subprocess.Popen(
        [*WHILST, "http", "-j", "2", "-q", str(urls)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while sum(map(len, server.hits.values())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["200", "200"], (out, err)
    assert sum(map(len, server.hits.values())) == 2  # nothing new started
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted" if status == 130 else "terminated")


def test_a_slow_body_times_out(server: Server, tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    started = time.monotonic()
    run = whilst(
        "http", "--timeout", "0.5", "--results", str(results), "-q", stdin=server.url("/slow/1")
    )
    assert run.returncode == 1
    assert time.monotonic() - started < 10
    assert json.loads(results.read_text())["status"] == "timed_out"


def test_per_host_limit_holds_while_other_hosts_go_on(server: Server) -> None:
    urls = [server.url(f"/wait/{i}") for i in range(12)]
    urls += [server.url(f"/wait/l{i}", host="localhost") for i in range(4)]
    run = whilst("http", "-j", "10", "--per-host", "2", "-q", stdin="\n".join(urls))
    assert run.returncode == 0, run.stderr
    assert server.peak["127.0.0.1"] == 2
    assert server.peak["localhost"] == 2


def test_out_dir_names_are_safe_and_inside_it(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    urls = [
        server.url("/ok/a/../../../etc/passwd"),
        server.url("/ok/..%2F..%2Fx"),
        server.url("/ok/plain.html"),
    ]
    run = whilst("http", "--out", str(out), "-q", stdin="\n".join(urls))
    assert run.returncode == 0, run.stderr
    files = list(out.iterdir())
    assert len(files) == 3
    assert all(f.parent == out and not f.name.startswith(".") for f in files)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != out] == []


@pytest.mark.parametrize(
    ("path", "args"),
    [("/slow/1", ["--timeout", "0.5"]), ("/cut/always", ["--retries", "1"])],
)
def test_out_dir_keeps_no_body_cut_short(
    server: Server, tmp_path: Path, path: str, args: list[str]
) -> None:
    """A body that times out or breaks off leaves nothing under --out, not a file of
    its first bytes under the name a whole body would have (nor its temporary file)."""
    out = tmp_path / "out"
    run = whilst("http", "--out", str(out), "-q", *args, stdin=server.url(path))
    assert run.returncode == 1, run.stderr
    assert list(out.iterdir()) == []


def test_out_dir_keeps_the_body_of_a_retry_alone(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = whilst("http", "--out", str(out), "--retries", "2", "-q", stdin=server.url("/cut/1"))
    assert run.returncode == 0, run.stderr
    (saved,) = out.iterdir()
    assert saved.read_text() == "page 1\n"
    assert not saved.name.startswith(".")


def test_a_connection_error_says_why_without_secrets(tmp_path: Path) -> None:
    """Not just "ClientConnectorError": on stdout, in --results and in the summary."""
    with socket.socket() as closed:  # bound, never listening: connecting is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        refused = f"http://me:{SECRET}@127.0.0.1:{port}/x?token={SECRET}"
        invalid = f"http://me:{SECRET}@127.0.0.1:99999/x"
        results = tmp_path / "r.jsonl"
        run = whilst("http", "-k", "--results", str(results), stdin=f"{refused}\n{invalid}")
    assert run.returncode == 1
    assert SECRET not in run.stdout + run.stderr + results.read_text()
    why = {
        f"http://***@127.0.0.1:{port}/x?token=***": "FetchError: cannot connect to "
        f"127.0.0.1:{port}: connection refused",
        "http://***@127.0.0.1:99999/x": "UsageError: 'http://***@127.0.0.1:99999/x': its port "
        "is not a number from 0 to 65535",  # (a line of a pipe: that line's failure)
    }
    errors = {line.split("\t")[3]: line.split("\t")[4] for line in run.stdout.splitlines()}
    assert errors.keys() == why.keys()
    for url, error in errors.items():
        assert why[url].endswith(error) or error.startswith(why[url].partition(": ")[2]), error
    for record in map(json.loads, results.read_text().splitlines()):
        assert record["error"].startswith(why[record["url"]]), record
    assert any(f"failed: {text}" in run.stderr for text in why.values())


def test_a_redirect_loop_is_said_to_be_one(server: Server) -> None:
    """It was a bare "HTTP 302 from ...", after 11 requests."""
    run = whilst("http", stdin=server.url("/loop/x"))
    assert run.returncode == 1
    assert "HTTP 302 from " in run.stderr
    assert "more than 10 redirects (a loop?)" in run.stderr
    assert len(server.hits["loop/x"]) == 11


def test_secrets_never_reach_any_file_or_output(server: Server, tmp_path: Path) -> None:
    """reliability.md 27: Authorization, Cookie, X-Api-Key, user:password@ and ?api_key=."""
    other = Server()
    try:
        server.other = other
        urls = [
            server.url(f"/ok/1?api_key={SECRET}&page=2").replace("http://", f"http://me:{SECRET}@"),
            server.url(f"/fail/1?token={SECRET}"),
            server.url("/redirect/1"),
            server.url(f"/ok/2?%74oken={SECRET}#access_token={SECRET}"),
            server.url(f"/ok/3?pass={SECRET}&credentials={SECRET}"),
        ]
        files = {name: tmp_path / name for name in ("run.db", "r.jsonl", "r.html", "r.json")}
        run = whilst(
            "http", "-H", f"Authorization: Bearer {SECRET}", "-H", f"Cookie: s={SECRET}",
            "-H", f"X-Api-Key: {SECRET}", "--journal", str(files["run.db"]),
            "--results", str(files["r.jsonl"]), "--report", str(files["r.html"]),
            "--trace", str(files["r.json"]), "--out", str(tmp_path / "out"),
            stdin="\n".join(urls),
        )  # fmt: skip
        assert run.returncode == 1
        assert SECRET not in run.stdout + run.stderr
        assert "***" in run.stdout
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.parent.name != "out":
                assert SECRET.encode() not in path.read_bytes(), path.name
        assert other.auth == [None]  # the redirect to another host got no Authorization
        # nor X-Api-Key (given with -H, sent to the URL's own host only)
    finally:
        other.close()


def test_a_resume_with_a_renewed_token_skips_what_was_done(server: Server, tmp_path: Path) -> None:
    """The request's identity hashed the Authorization header's value: a resume
    with a renewed token was refused, and the token could be guessed from the
    hash. Secret headers count as *** now; the URLs themselves are told apart
    whole (as shown, ?author=alice and ?author=bob were one)."""
    journal = tmp_path / "run.db"
    for token, who in (("OLD", ["alice"]), ("NEW", ["alice", "bob"])):
        urls = [server.url(f"/ok/{name}?author={name}") for name in who]
        run = whilst(
            "http", "-q", "-H", f"Authorization: Bearer {token}", "--journal", str(journal),
            stdin="\n".join(urls),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert [len(server.hits[f"ok/{name}"]) for name in ("alice", "bob")] == [1, 1]
    data = journal.read_bytes()
    for token in ("OLD", "NEW"):
        assert token.encode() not in data
        for size in (8, 16):
            digest = hashlib.blake2b(f"Bearer {token}".encode(), digest_size=size).hexdigest()
            assert digest.encode() not in data


def test_the_session_is_set_up_before_the_first_request_is_timed(
    server: Server, tmp_path: Path
) -> None:
    """Opening the HTTP session (aiohttp's import, its connector) is the run's
    start-up, not the first URL's duration (it read 130 ms for a 2 ms request)."""
    results = tmp_path / "r.jsonl"
    run = whilst("http", "-q", "--results", str(results), stdin=server.url("/ok/1"))
    assert run.returncode == 0, run.stderr
    (line,) = results.read_text().splitlines()
    assert json.loads(line)["duration"] < 0.08


def test_an_authorization_header_wins_over_credentials_in_the_url(server: Server) -> None:
    """As with curl: -H Authorization is what is sent (aiohttp refused the two
    together, failing every such URL)."""
    url = server.url("/auth/1").replace("http://", "http://me:pw@")
    run = whilst("http", "-H", "Authorization: Bearer abc", stdin=url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert server.auth == ["Bearer abc"]


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["http", "{tmp}/urls.txt"], "", "not an http(s) URL"),  # (a file: checked first)
        (["http", "-H", "no colon"], "http://127.0.0.1:9/", "Name: value"),
        (["http", "-X", "BAD METHOD"], "http://127.0.0.1:9/", "is not an HTTP method"),
        (["http", "-X", "GET\r\nX-Evil: 1"], "http://127.0.0.1:9/", "is not an HTTP method"),
        (["http", "-H", "Authorization Bearer sekrit"], "http://127.0.0.1:9/", "Name: value"),
        (["http", "-H", "Bad Name: v"], "http://127.0.0.1:9/", "a header's name is one word"),
        (["http", "-H", "X: a\r\nEvil: 1"], "http://127.0.0.1:9/", "has a line break"),
        (["http", "{tmp}/port.txt"], "", "its port is not a number from 0 to 65535"),
        (["http", "--out", "/proc/version"], "http://127.0.0.1:9/", "--out"),
        (["http", "missing.txt"], "", "cannot be read"),
        (["http", "--data", "@missing.json"], "http://127.0.0.1:9/", "missing.json cannot be read"),
        (["call", "no_such_module_x:f"], "1", "not found"),
        (["call", "json:no_such_function"], "1", "has no"),
        (["http", "-j", "0"], "", "'0' is not a number of jobs"),  # (whilst run's -j 0 only)
        (["call", "json"], "1", "MODULE:FUNCTION"),
        (["call", "./tools.py:f"], "1", "is a file name: give the module's name, tools:f"),
        (["call", "lib/tools.py:f"], "1", "give the module's name, tools:f, with --path lib"),
        (["call", "--mode", "async", "json:dumps"], "1", "use --mode threads"),  # not mode=
        (["call", "--mode", "sync", "-j", "4", "json:dumps"], "1", "-j 4 cannot apply; drop -j"),
        (["call", "--jsonl", "json:dumps", "{tmp}/bad.jsonl"], "", "not JSON"),  # (a file)
        (["call", "--results", "/proc/no/such.jsonl", "json:dumps"], "1", "cannot be written"),
        (["call", "--path", "{tmp}", "broken:f"], "1", "failed to import: SyntaxError"),
        (["call", "--path", "{tmp}", "raising:f"], "1", "failed to import: RuntimeError: boom"),
        (["call", "--path", "{tmp}", "exiting:f"], "1", "called sys.exit(3) as it was imported"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    tmp_path: Path, args: list[str], stdin: str, words: str
) -> None:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a\nftp://example.com/x\n")
    (tmp_path / "broken.py").write_text("def f(x):\n    return x +\n")
    (tmp_path / "raising.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "exiting.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "port.txt").write_text("http://127.0.0.1:99999/\n")
    (tmp_path / "bad.jsonl").write_text("1\n{oops\n")
    run = whilst(*(a.replace("{tmp}", str(tmp_path)) for a in args), stdin=stdin)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("whilst: ")
    assert words in line
    assert "sekrit" not in run.stderr  # a header with its colon missing is not shown


TOOLS = """
import asyncio

def square(x):
    return int(x) ** 2

async def shout(record):
    await asyncio.sleep(0.01)
    if record["name"] == "bad":
        raise ValueError("no bad names")
    return record["name"].upper()
"""


@pytest.mark.parametrize("mode", ["sync", "threads", "processes"])
def test_call_runs_a_function_over_lines(tmp_path: Path, mode: str) -> None:
    (tmp_path / "tools.py").write_text(TOOLS)
    run = whilst(
        "call",
        "-q",
        "-k",
        "--mode",
        mode,
        "--path",
        str(tmp_path),
        "tools:square",
        stdin="1\n2\n3\n",
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(line["item"], line["value"]) for line in lines] == [("1", 1), ("2", 4), ("3", 9)]


GENERATORS = """
def pairs(x):
    yield x
    yield x + "!"

async def apairs(x):
    yield x
    yield x.upper()
"""


@pytest.mark.parametrize(
    ("target", "mode"),
    [("pairs", "threads"), ("pairs", "processes"), ("apairs", "auto"), ("apairs", "processes")],
)
def test_call_gives_a_generator_functions_yields_as_a_list(
    tmp_path: Path, target: str, mode: str
) -> None:
    """A generator's value was its repr ("<generator object ...>"), or in processes
    an error: it cannot be pickled back."""
    (tmp_path / "gens.py").write_text(GENERATORS)
    run = whilst(
        "call", "-q", "-k", "--mode", mode, "--path", str(tmp_path), f"gens:{target}",
        "--journal", str(tmp_path / "run.db"), stdin="a\nb\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    values = [json.loads(line)["value"] for line in run.stdout.splitlines()]
    assert values == ([["a", "a!"], ["b", "b!"]] if target == "pairs" else [["a", "A"], ["b", "B"]])
    # The journal knows the function by its own name (not whilst's list maker):
    # another generator function's run may not resume it.
    other = "gens:pairs" if target == "apairs" else "gens:apairs"
    again = whilst(
        "call", "-q", "--path", str(tmp_path), other, "--journal", str(tmp_path / "run.db"),
        stdin="a\nb\n",
    )  # fmt: skip
    assert again.returncode == 2
    assert f"gens:{target}" in again.stderr


def test_call_says_the_command_lines_words_for_a_timeout(tmp_path: Path) -> None:
    """Its timeout's error said "use mode='processes'", the library's words."""
    (tmp_path / "slow.py").write_text("import time\ndef f(x):\n    time.sleep(1)\n")
    run = whilst(
        "call", "-q", "--mode", "threads", "--timeout", "0.2", "--path", str(tmp_path),
        "slow:f", stdin="1\n",
    )  # fmt: skip
    assert run.returncode == 1
    (line,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert line["status"] == "timed_out"
    for said in (line["error"], run.stderr.splitlines()[-1]):
        assert "use --mode processes for code that must be stopped" in said
        assert "mode='processes'" not in said


def test_call_results_lines_carry_each_item_and_value(tmp_path: Path) -> None:
    (tmp_path / "tools.py").write_text(TOOLS)
    results = tmp_path / "r.jsonl"
    run = whilst(
        "call", "-q", "-k", "--results", str(results), "--path", str(tmp_path), "tools:square",
        stdin="2\n3\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((line["item"], line["value"]) for line in lines) == [("2", 4), ("3", 9)]


LEAVING = """
import atexit, os, sys

def _bye():
    open(os.path.join(os.path.dirname(__file__), "left"), "w").write("atexit ran")
    sys.stdout.write("bye")  # buffered: the program's end must flush it

def note(x):
    atexit.register(_bye)
    return x
"""


def test_the_program_ends_as_python_would_with_atexit_handlers_and_flushed_output(
    tmp_path: Path,
) -> None:
    """The command leaves without tearing the interpreter down (it is faster), yet
    a function's atexit handler still runs, buffered output still comes out (on
    stderr: stdout is the result lines'), and the exit status is the run's."""
    (tmp_path / "leaving.py").write_text(LEAVING)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    run = subprocess.run(
        [*WHILST, "call", "-q", "--mode", "sync", "--path", str(tmp_path), "leaving:note"],
        input="1\n", capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "left").read_text() == "atexit ran"
    assert run.stderr.endswith("bye")
    assert [json.loads(line)["value"] for line in run.stdout.splitlines()] == ["1"]
    bad = whilst("call", "--path", str(tmp_path), "leaving:no_such", stdin="1\n")
    assert bad.returncode == 2, bad.stderr


ODD = """
class Unshowable(Exception):
    def __str__(self):
        raise RuntimeError("no")

def odd(x):
    print("chatter", x)  # a function's own print
    if x == "2":
        return {(1, 2): 3}  # a dict JSON cannot key
    if x == "3":
        return float("nan")
    if x == "4":
        loop = []
        loop.append(loop)
        return loop
    if x == "5":
        raise Unshowable()
    return x
"""


def strict(line: str) -> Any:
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_call_output_is_strict_json_whatever_the_values_and_prints(
    tmp_path: Path, mode: str
) -> None:
    """A value JSON cannot hold is shown as its repr, an exception whose message
    raises fails its own item, and a function's prints go to stderr: every line of
    stdout and of --results parses, and no item is lost."""
    (tmp_path / "odd.py").write_text(ODD)
    results = tmp_path / "r.jsonl"
    run = whilst(
        "call", "-q", "-k", "--mode", mode, "--results", str(results), "--path", str(tmp_path),
        "odd:odd", stdin="1\n2\n3\n4\n5\n6\n",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = [strict(line) for line in run.stdout.splitlines()]
    assert [line["item"] for line in lines] == ["1", "2", "3", "4", "5", "6"]
    values = [line.get("value") for line in lines]
    assert values == ["1", "{(1, 2): 3}", "nan", "[[...]]", None, "6"]
    assert lines[4]["error"] == "Unshowable: (its message could not be shown)"
    assert run.stderr.count("chatter") == 6
    assert len([strict(line) for line in results.read_text().splitlines()]) == 6


def test_call_writes_bytes_that_are_not_utf8_as_escapes_in_strict_json() -> None:
    """As whilst run's --results: \\xNN, not lone surrogates, which strict JSON
    readers refuse (jq made them U+FFFD; Python could not encode them back)."""
    run = subprocess.run(
        [*WHILST, "call", "-q", "os.path:basename"], input=b"\xff\xfe\n", capture_output=True
    )
    assert run.returncode == 0, run.stderr
    line = json.loads(run.stdout.decode("utf-8", "strict"))
    assert line["item"] == line["value"] == "\\xff\\xfe"
    assert line["item"].encode("utf-8")


SLOW = """
import time

def slow(x):
    time.sleep(0.4)
    return {1, 2} if x == "nan" else x
"""


def test_call_streams_each_line_as_its_result_ends(tmp_path: Path) -> None:
    """Stdout kept for results is written line by line: a reader (| head -1, a
    pipeline) gets each result as it ends, not all of them at the end."""
    (tmp_path / "slowmod.py").write_text(SLOW)
    proc = subprocess.Popen(
        [*WHILST, "call", "-q", "-j", "1", "--path", str(tmp_path), "slowmod:slow"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    with proc:
        began = time.monotonic()
        proc.stdin.write("a\nb\nc\nd\ne\nf\ng\n")  # 7 x 0.4 s, one at a time
        proc.stdin.close()
        first = proc.stdout.readline()
        assert time.monotonic() - began < 2.2  # not after all of them (2.8 s)
        assert json.loads(first)["item"] == "a"
        assert proc.wait(timeout=60) == 0


def test_call_runs_each_line_of_a_stream_as_it_comes() -> None:
    """`tail -f | whilst call`: the next line is sent only once the result of the one
    before it came, so reading all the input first would hang."""

    def called(word: str, stdout: IO[bytes]) -> None:
        if word:  # (a blank line is no item)
            assert json.loads(stdout.readline())["item"] == word

    line_by_line(["call", "-q", "json:dumps"], ["a", "", "b", "c"], called)


def test_a_bad_url_on_a_stream_fails_alone(server: Server) -> None:
    """Lines on a pipe run as they come: a bad one cannot stop the run before it
    starts, so it is that line's failure, and the others are fetched."""
    urls = [server.url("/ok/1"), "nope", "# a comment", server.url("/ok/2")]
    run = whilst("http", "-q", "-k", stdin="\n".join(urls))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["200", "failed", "200"]
    assert "'nope' is not an http(s) URL" in lines[1]
    assert "1 of 3 failed" in run.stderr


def test_blank_lines_and_comments_in_a_url_file_are_skipped_as_documented(
    server: Server, tmp_path: Path
) -> None:
    """A line starting with # (after spaces) is a comment, in a file as on a pipe:
    not a URL to fail on, nor a URL to count; the help says so."""
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# pages\n\n{server.url('/ok/1')}\n   # {server.url('/ok/2')}\n\n")
    run = whilst("http", "--results", str(tmp_path / "r.jsonl"), str(urls))
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[3] for line in run.stdout.splitlines()] == [server.url("/ok/1")]
    assert "ok/2" not in server.hits
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    assert "lines starting with # are skipped" in " ".join(whilst("http", "--help").stdout.split())


def test_call_results_keep_text_that_is_not_unicode_and_values_json_cannot(
    tmp_path: Path,
) -> None:
    (tmp_path / "slowmod.py").write_text(SLOW)
    results = tmp_path / "r.jsonl"
    run = subprocess.run(
        [*WHILST, "call", "-q", "-k", "--results", str(results), "--path", str(tmp_path),
         "slowmod:slow"],
        input=b"ok\nb\xffd\nnan\n", capture_output=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [strict(line) for line in results.read_text().splitlines()]
    assert [line["value"] for line in lines] == ["ok", "b\\xffd", "{1, 2}"]  # (as whilst run)
    assert [strict(line)["value"] for line in run.stdout.decode().splitlines()][2] == "{1, 2}"


def test_call_keeps_each_line_as_it_is_and_counts_lines_as_the_file_does() -> None:
    kept = whilst("call", "-q", "-k", "json:dumps", stdin="  b  \n\n\tc\r\n")
    assert [json.loads(line)["item"] for line in kept.stdout.splitlines()] == ["  b  ", "\tc"]


def test_call_jsonl_bad_line_stops_a_file_before_it_runs_and_a_pipe_when_it_comes(
    tmp_path: Path,
) -> None:
    """A file is checked through first; lines on a pipe run as they come, so those
    before a bad line have run when it stops the run."""
    lines = '\n\n{"a": 1}\n\nnope\n2\n'
    (tmp_path / "in.jsonl").write_text(lines)
    from_file = whilst("call", "--jsonl", "json:dumps", str(tmp_path / "in.jsonl"))
    assert (from_file.returncode, from_file.stdout) == (2, "")
    assert "line 5 is not JSON" in from_file.stderr
    from_pipe = whilst("call", "-q", "--jsonl", "json:dumps", stdin=lines)
    assert from_pipe.returncode == 2
    assert [json.loads(line)["item"] for line in from_pipe.stdout.splitlines()] == [{"a": 1}]
    assert "line 5 is not JSON" in from_pipe.stderr


NOISY = """
import atexit
print("noise as it is imported")
atexit.register(print, "noise at exit")

def same(x):
    return x
"""


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_call_stdout_holds_only_result_lines_whatever_the_module_prints(
    tmp_path: Path, mode: str
) -> None:
    (tmp_path / "noisy.py").write_text(NOISY)
    run = whilst("call", "-q", "--mode", mode, "--path", str(tmp_path), "noisy:same", stdin="a\n")
    assert run.returncode == 0, run.stderr
    assert [strict(line)["value"] for line in run.stdout.splitlines()] == ["a"]
    assert "noise as it is imported" in run.stderr
    assert "noise at exit" in run.stderr


def test_call_jsonl_null_is_an_item_from_a_file_a_pipe_or_dev_stdin(tmp_path: Path) -> None:
    data = tmp_path / "n.jsonl"
    data.write_text("1\nnull\n2\n")
    for source, stdin in ((str(data), ""), ("-", "1\nnull\n2\n"), ("/dev/stdin", "1\nnull\n2\n")):
        run = whilst("call", "-q", "-k", "--jsonl", "json:dumps", source, stdin=stdin)
        assert run.returncode == 0, (source, run.stderr)
        assert [json.loads(line)["item"] for line in run.stdout.splitlines()] == [1, None, 2]


def test_a_file_of_lines_has_a_known_total(tmp_path: Path) -> None:
    """A file is read through before the run: its number of items is known, so
    --halt fail=50% counts one failure in ten as 10%, not as half of what ended."""
    (tmp_path / "fm.py").write_text(
        "def f(x):\n    if x == 'b':\n        raise ValueError(x)\n    return x\n"
    )
    ten = tmp_path / "ten.txt"
    ten.write_text("".join(f"{c}\n" for c in "abcdefghij"))
    run = whilst(
        "call", "-q", "-j", "1", "--halt", "soon,fail=50%", "--path", str(tmp_path), "fm:f",
        str(ten),
    )  # fmt: skip
    assert run.returncode == 1
    assert len(run.stdout.splitlines()) == 10
    assert "1 of 10 failed" in run.stderr


def test_call_with_jsonl_reports_failures_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "tools.py").write_text(TOOLS)
    records = "\n".join(json.dumps({"name": n}) for n in ("ada", "bad", "bob"))
    run = whilst("call", "-k", "--jsonl", "--path", str(tmp_path), "tools:shout", stdin=records)
    assert run.returncode == 1
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line.get("value") for line in lines] == ["ADA", None, "BOB"]
    assert lines[1]["error"] == "ValueError: no bad names"
    assert "1 of 3 failed" in run.stderr


def test_secret_looking_query_values_are_shown_as_stars() -> None:
    from whilst._http import redact

    url = "https://me:pw@h/p?jwt=a&sid=b&otp=c&api_key=d&nonce=e&side=f&page=2#access_token=g"
    assert redact(url) == (
        "https://***@h/p?jwt=***&sid=***&otp=***&api_key=***&nonce=***&side=f&page=2"
        "#access_token=***"
    )
