"""``whilst http``: fetch many URLs politely, on one event loop.

One aiohttp session pools connections for the run; whilst's scheduler keeps
``-j`` requests in flight, at most ``--per-host`` per host, at ``--rate``.
Connection errors and 429, 502, 503 and 504 are retried (a ``Retry-After`` is
honoured up to ``--max-wait``; one asking for more fails the URL at once, saying
so); other statuses fail. Secrets never leave the process: an item shows
its URL with ``user:password@`` and secret-looking query values as ``***``
(in the journal, results, report and errors), and request headers are never
written anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._errors import Retry, UsageError, WhilstError, after_seconds, message

#: Statuses worth another attempt: the server is busy or a gateway failed.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Query (and fragment) parameters whose values are secrets, by name.
SECRET_PARAMS = re.compile(
    r"(?i)(key|token|secret|pass|pwd|auth|signature|sig|session|cred|bearer|code|jwt|otp|"
    r"^sid$|nonce)"
)
#: Headers never sent on to another origin on a redirect. No header given with -H
#: is ever written anywhere.
SECRET_HEADERS = re.compile(r"(?i)(authorization|cookie|key|token|secret|auth|session|pass)")
#: Redirects followed, at most.
MAX_REDIRECTS = 10
#: A Retry-After of this many seconds or more is said on stderr: the run may seem stuck.
NOTE_WAIT = 2.0
#: An HTTP method is a token (RFC 9110, section 5.6.2).
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def redact(url: str) -> str:
    """The URL as it may be shown: no ``user:password@``, no secret query values."""
    if "@" not in url and "=" not in url:
        return url  # nothing that could be a secret (most URLs: no parsing)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, _params(parts.query), _params(parts.fragment))
    )


def _params(text: str) -> str:
    """``name=value&...`` with the values of secret-looking names (read decoded:
    ``%74oken`` is ``token``) as ``***``."""
    if "=" not in text:
        return text
    shown = []
    for pair in text.split("&"):
        name, sep, _ = pair.partition("=")
        secret = sep and SECRET_PARAMS.search(urllib.parse.unquote_plus(name))
        shown.append(f"{name}=***" if secret else pair)
    return "&".join(shown)


@dataclass(frozen=True)
class Target:
    """One URL to fetch. Its repr is the redacted URL: that is what the journal,
    the report and error messages show."""

    url: str
    problem: str = field(default="", compare=False)  # why it is no URL: its fetch fails so
    shown: str = field(init=False, compare=False)  # redacted, worked out once
    host: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown", redact(self.url))
        try:
            host = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2].lower()
        except ValueError:  # (a problem already)
            host = ""
        object.__setattr__(self, "host", host)

    def __repr__(self) -> str:
        return self.shown

    @property
    def key(self) -> str:
        """Its identity in a journal: a hash of the whole URL. (Of the URL as shown,
        two URLs that differ in a value shown as *** were one: a resume skipped
        ?author=bob, never fetched, once ?author=alice was done.)"""
        return hashlib.blake2b(self.url.encode(), digest_size=16).hexdigest()


def check_url(text: str, strict: bool = True) -> Target:
    """A Target, or a UsageError naming what is wrong with the URL; not ``strict``
    (a line of a stream, come while the run goes), a Target whose fetch fails
    saying so."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        parts = None
    problem = ""
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        problem = f"{redact(text)!r} is not an http(s) URL; give one URL per line"
    else:
        try:
            parts.port  # noqa: B018 - raises for a port out of range, or not a number
        except ValueError:
            problem = f"{redact(text)!r}: its port is not a number from 0 to 65535"
    if problem:
        if strict:
            raise UsageError(problem)
        return Target(text, problem)
    return Target(text)


class HTTPStatusError(WhilstError):
    """The server answered with a status that is not a success."""

    elapsed: float | None = None  # seconds from the request to the answer

    def __init__(self, status: int, target: Target, why: str = "") -> None:
        super().__init__(f"HTTP {status} from {target!r}{why}")
        self.status = status


class TooLongToWait(HTTPStatusError):
    """A busy answer whose Retry-After asks for a longer wait than ``--max-wait``:
    it fails at once, not retried, rather than hold the run that long."""

    def __init__(self, status: int, target: Target, after: float, max_wait: float) -> None:
        super().__init__(
            status,
            target,
            f": the server asks to wait {round(after, 1):.10g} s (Retry-After), more than "
            f"--max-wait {max_wait:.10g} s; not retried (give --max-wait {math.ceil(after)} "
            "to wait for it)",
        )
        self.after, self.max_wait = after, max_wait


class Busy(Retry):
    """A busy answer (429, 502, 503, 504): retried with --retries, after the wait
    its Retry-After asks for."""

    elapsed: float | None = None  # seconds from the request to the answer

    def __init__(self, status: int, message: str, after: float | str | None) -> None:
        super().__init__(after, message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, str(self), self.after))


class FetchError(WhilstError):
    """The request failed before a status came back (connection refused or reset,
    a body cut short...); the message names the cause, the URL redacted."""

    elapsed: float | None = None  # seconds from the request to the failure


@dataclass
class Fetched:
    """What a fetch returns: its status, size, and where the body went."""

    status: int
    bytes: int
    elapsed: float
    saved: str | None = None


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.rpartition("@")[2].lower()


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None (the
    usual backoff) when there is none or it makes no sense."""
    return after_seconds(value) if value else None


def check_method(method: str | None, data: str | None) -> str:
    """The method to send, upper-cased: ``-X``'s, else POST with ``--data`` (as
    curl's ``-d``) and GET without; a UsageError when it is not an HTTP token."""
    if method is None:
        return "GET" if data is None else "POST"
    if not METHOD.fullmatch(method):
        raise UsageError(
            f"-X {method!r} is not an HTTP method: give one word of letters, digits and "
            "!#$%&'*+-.^_`|~ such as GET, POST or PUT"
        )
    return method.upper()


def safe_name(target: Target) -> str:
    """A file name for a URL's body: its host and path with anything but letters,
    digits, dot, dash and underscore made ``_`` (no way out of ``--out``), and a
    short hash so that different URLs never share a file."""
    parts = urllib.parse.urlsplit(target.url)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{target.host}{parts.path}").strip("._")[:120]
    return f"{stem or 'body'}-{target.key[:10]}"


@dataclass
class Fetcher:
    """The task of ``whilst http``: one request per call, on a session shared by
    the run (opened on the run's loop by the first call; :meth:`close` at the end)."""

    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    out: Path | None = None
    connections: int = 100
    #: The longest wait a Retry-After may ask for; a longer one fails the URL at once.
    max_wait: float = 60.0
    journal_identity: str = "whilst http"  # what a journal of this run records
    report_title: ClassVar[str] = "whilst http"
    mode_reason: ClassVar[str] = "requests overlap on one event loop (aiohttp)"
    #: Told of a long Retry-After (see NOTE_WAIT), once per host while it lasts.
    note: Callable[[str], None] | None = None
    #: A URL a resume skips prints nothing: its value is not wanted back.
    journal_values: ClassVar[bool] = False
    _session: Any = None
    _quiet: dict[str, float] = field(default_factory=dict)  # host -> no note until then

    async def open(self) -> None:
        """The session, on the run's loop (before the run: its set-up is no task's time)."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,  # never through a proxy from the environment
            )

    async def __call__(self, target: Target) -> Fetched:
        import aiohttp

        if target.problem:
            raise UsageError(target.problem)
        if self._session is None:
            await self.open()
        started = time.perf_counter()
        try:
            try:
                async with await self._follow(target) as response:
                    if response.status in RETRY_STATUSES:
                        after = retry_after(response.headers.get("Retry-After"))
                        if after is not None and after > self.max_wait:
                            raise TooLongToWait(response.status, target, after, self.max_wait)
                        if after is not None and after >= NOTE_WAIT:
                            self._tell_wait(response.status, target, after)
                        message = f"HTTP {response.status} from {target!r}"
                        raise Busy(response.status, message, after)
                    if response.status >= 400:
                        raise HTTPStatusError(response.status, target)
                    size, saved = await self._body(response, target)
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise FetchError(f"{_reason(exc, target)} (fetching {target!r})") from None
        except (HTTPStatusError, Busy, FetchError) as exc:
            exc.elapsed = time.perf_counter() - started  # (for --results)
            raise
        return Fetched(response.status, size, time.perf_counter() - started, saved)

    def _tell_wait(self, status: int, target: Target, after: float) -> None:
        now = time.monotonic()
        if self.note is None or self._quiet.get(target.host, 0.0) > now:
            return
        self._quiet[target.host] = now + after
        self.note(
            f"whilst: HTTP {status} from {target.host} asks to wait {round(after, 1):.10g} s "
            "(Retry-After): its URLs are retried after that wait, while --retries last"
        )

    async def _follow(self, target: Target) -> Any:
        """The response, redirects followed by hand: a secret-looking header given
        with -H (Authorization, Cookie, X-Api-Key...) goes to the URL's own origin
        only, never on to another host or port."""
        url, method, data, headers = target.url, self.method, self.data, self.headers
        if "@" in url and any(k.lower() == "authorization" for k in headers):
            url = _without_userinfo(url)  # -H Authorization wins, as with curl
        origin = None  # worked out at the first redirect (most requests have none)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.request(
                method, url, headers=headers, data=data, allow_redirects=False
            )
            location = response.headers.get("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.release()
            url = urllib.parse.urljoin(url, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, data = "GET", None
            origin = origin or _origin(target.url)
            if _origin(url) != origin:
                headers = {k: v for k, v in headers.items() if not SECRET_HEADERS.search(k)}
        raise HTTPStatusError(
            response.status, target, f": more than {MAX_REDIRECTS} redirects (a loop?)"
        )

    async def _body(self, response: Any, target: Target) -> tuple[int, str | None]:
        size, read = 0, response.content.readany  # what has come, until the end
        if self.out is None:
            while chunk := await read():
                size += len(chunk)
            return size, None
        # The body goes to a hidden file of its own ("x": never another's, nor
        # through a symlink), renamed onto its name once whole: a body cut short
        # (an error, a timeout, Ctrl-C) is removed, never left as if it had come.
        name = safe_name(target)
        path, part = self.out / name, self.out / f".{name}.{secrets.token_hex(4)}.part"
        f = open(part, "xb")  # noqa: ASYNC230, SIM115 - a local disk; closed below
        try:
            with f:
                while chunk := await read():
                    size += len(chunk)
                    f.write(chunk)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size, str(path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(error: BaseException, target: Target) -> str:
    """Why a request failed, from the exception's fields: its message is not shown,
    as aiohttp's carry the URL, secrets and all."""
    import aiohttp

    if isinstance(error, aiohttp.InvalidURL):
        # yarl's reason (the exception's cause) may quote the netloc: no user:password
        cause = error.__cause__
        why = message(cause) if cause is not None else error.description or ""
        userinfo = urllib.parse.urlsplit(target.url).netloc.rpartition("@")[0]
        if userinfo:
            why = why.replace(userinfo, "***")
        return f"the URL is invalid: {_lower(why)}" if why else "the URL is invalid"
    if isinstance(error, aiohttp.ClientConnectorError):
        host = f"[{error.host}]" if ":" in error.host else error.host
        return f"cannot connect to {host}:{error.port}: {_os_reason(error.os_error)}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "the body was cut short or malformed"
    if isinstance(error, OSError):
        return _os_reason(error)
    return type(error).__name__


def _os_reason(error: OSError) -> str:
    """``connection refused``: asyncio's strerror names the call that failed
    ("Connect call failed"), not why; an SSL or a DNS error has its own text."""
    import ssl

    errno = error.errno
    if isinstance(errno, int) and errno > 0 and not isinstance(error, ssl.SSLError):
        return _lower(os.strerror(errno))
    return _lower(error.strerror or message(error)) or type(error).__name__


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` (aiohttp refuses both it and an
    Authorization header)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def retryable(error: BaseException) -> bool:
    """What ``whilst http --retries`` retries: connection errors (and busy statuses,
    which raise whilst.Retry)."""
    return isinstance(error, (FetchError, asyncio.TimeoutError))


def read_body(data: str | None) -> bytes | None:
    """``--data``'s body: the text, or with ``@FILE`` (as curl) that file's bytes."""
    if data is None or not data.startswith("@"):
        return None if data is None else data.encode()
    path = data[1:]
    if path in ("", "-"):
        raise UsageError(f"--data {data}: give a file's name after @, such as @body.json")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--data {data}: {path} cannot be read ({exc.strerror})") from None


def request_identity(method: str, headers: dict[str, str], data: bytes | None) -> str:
    """What a journal of ``whilst http`` records as its function: the request
    but for the values of secret headers (Authorization, a renewed token, is the
    same request), which no hash may carry: it could be guessed."""
    shown = sorted(
        (name, "***" if SECRET_HEADERS.search(name) else value) for name, value in headers.items()
    )
    digest = hashlib.blake2b(repr((method, shown, data)).encode(), digest_size=8)
    return f"whilst http {digest.hexdigest()}"


def parse_headers(given: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header in given:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():  # (the text is not shown: it may be a secret)
            raise UsageError("a -H value is not a header: write it as 'Name: value'")
        name, value = name.strip(), value.strip()
        if not METHOD.fullmatch(name):  # a header's name is a token, as a method is
            raise UsageError(
                f"-H {name!r}: a header's name is one word of letters, digits and "
                "-!#$%&'*+.^_`|~ (no spaces)"
            )
        if any(c in value for c in "\r\n\0"):  # (it would start another header)
            raise UsageError(f"-H {name}: its value has a line break or NUL; give it on one line")
        headers[name] = value
    return headers


def check_out(out: Path | None) -> None:
    """``--out DIR``: created if missing, and writable; checked before anything runs."""
    if out is None:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be created: {exc.strerror}") from None
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} cannot be written (permission denied)")
