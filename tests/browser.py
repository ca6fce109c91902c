"""Real headless Chromium for the report tests, driven over the DevTools protocol.

``Page(path)`` opens a local file in Debian's ``chromium`` (installed by
``.ci/run``), waits for it to load, and lets a test evaluate JavaScript in it
and take a screenshot. Network is off: the page must need none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--window-size=1200,900",
]


class Page:
    """One page of a headless Chromium of its own; use as an async context manager."""

    def __init__(self, path: Path) -> None:
        self.url = path.resolve().as_uri()
        self._ids = itertools.count(1)
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.errors: list[str] = []  # uncaught exceptions and console errors of the page

    async def __aenter__(self) -> Page:
        assert CHROMIUM is not None, "chromium is not installed (.ci/run installs it)"
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - starts at once, waits for nothing
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helper processes go with it
        )
        endpoint = await asyncio.to_thread(self._endpoint)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://{endpoint}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Runtime.enable")  # before the page loads: its errors are heard
        await self.send("Page.navigate", url=self.url)
        for _ in range(200):  # up to 10 s for the page to load and draw
            where = await self.evaluate("[location.href, document.readyState]")
            if where == [self.url, "complete"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError(f"{self.url} did not load: {where}")
        return self

    def _endpoint(self) -> str:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found:  # keep reading its log, so that a full pipe never blocks it
                self._drain = threading.Thread(target=self._proc.stderr.read, daemon=True)
                self._drain.start()
                return found.group(1)
        raise RuntimeError("chromium exited before it listened")

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        await self._session.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        await asyncio.to_thread(self._drain.join, 10)  # the log ends with chromium
        assert self._proc.stderr is not None
        self._proc.stderr.close()
        self._profile.cleanup()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = json.loads((await self._ws.receive()).data)
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(str(message["params"]["exceptionDetails"]))
            called = message.get("method") == "Runtime.consoleAPICalled"
            if called and message["params"]["type"] == "error":
                self.errors.append(str(message["params"]["args"]))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message["result"])

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page."""
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        reply = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(reply["data"])
