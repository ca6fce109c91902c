"""The HTTP benchmark's server and hand-written peer, run as their own processes.

``python _http_peers.py serve LATENCY`` answers every GET after LATENCY
seconds and prints its port; ``python _http_peers.py fetch N`` fetches the
URLs on stdin with one aiohttp session and N requests in flight (an
``asyncio.Semaphore`` and ``gather``): what a user writes by hand, run with
``asyncio.run``; ``fetch-uvloop N`` runs the same on uvloop.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web


async def serve(latency: float) -> None:
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(latency)
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/{name}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()


async def fetch(limit: int) -> None:
    urls = sys.stdin.read().split()
    gate = asyncio.Semaphore(limit)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> int:
            async with gate, session.get(url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*map(one, urls))
    assert all(status == 200 for status in statuses)


if __name__ == "__main__":
    what, value = sys.argv[1], sys.argv[2]
    if what == "serve":
        asyncio.run(serve(float(value)))
    elif what == "fetch-uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(fetch(int(value)))
    else:
        asyncio.run(fetch(int(value)))
