"""``dask``: tasks on a Dask cluster, the scheduler keeping everything else.

Batches of items travel as one Dask task each (tiny tasks share the cluster's
round trip, sized from measured time as in processes mode), submitted as slots
free up: at most ``limit`` batches (two each for tiny tasks) are ever in the
cluster, so a huge input never sits in Dask's scheduler. Limits, retries,
timeouts, the journal, progress and the report are whilst's, as on a laptop.

A worker lost mid-task: Dask runs its tasks again on another worker (up to its
``allowed-failures``, 3 by default); past that the task ends ``crashed`` and
whilst's ``retries`` apply. A timed-out attempt's future is cancelled; a task
already running on a worker thread runs on there (Dask cannot stop a thread),
so slots send around that worker until a probe pinned to it runs: until it
has a thread free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import urllib.parse
from typing import Any

from .._errors import UsageError, WorkerCrashed
from .._options import cpu_count
from . import _worker
from ._base import ClusterMode, Outcomes, unwire

#: Seconds to wait for the scheduler to take a cancel.
CANCEL_WAIT = 5.0


def _run_on_worker(payload: tuple[list[str], bytes], items: list[Any]) -> tuple[Any, ...]:
    """Runs on a Dask worker: the batch, and where it ran."""
    from distributed import get_worker

    start, ends, values, wired = _worker.run_batch(_worker.load_function(payload), items)
    return start, ends, values, wired, get_worker().address


def _probe() -> None:
    """Runs on a worker once it has a thread free."""


def check_address(address: str, insecure: bool = False) -> None:
    """A cluster address: TLS, or this machine, unless ``insecure``: tasks and
    their values travel as pickles, which anyone on the path could rewrite."""
    parts = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme == "tls" or insecure:
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"cluster {address} is not on this machine and not tls://: pickled tasks would "
            "cross the network unprotected; use a tls:// address, or pass "
            "cluster_insecure=True (--cluster-insecure) if the network is yours"
        )


class DaskMode(ClusterMode):
    """Batches go where Dask places them; a slot's lane is the worker it last ran on."""

    name = "dask"
    timeout_note = "its Dask future was cancelled (a task already running on a worker runs on)"
    _client: Any = None
    _own_cluster: Any = None
    _own_client = False
    #: Workers given up on (an attempt abandoned there may still hold its thread):
    #: each until its probe, pinned to it, has run. Made in open.
    _held: dict[str, tuple[Any, asyncio.Task[None]]]
    _workers: list[str]  # the cluster's, when a worker was last held
    _asking: asyncio.Future[dict[str, Any]] | None = None  # see _running_on

    async def open(self) -> None:
        self._payload = self.payload()
        self._held = {}
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError(
                "mode='dask' needs Dask: pip install 'dask[distributed]' (whilst's extra: "
                "'whilst[dask]')"
            ) from None
        cluster = self.cluster
        if isinstance(cluster, Client):
            self._client = cluster  # the caller's, asynchronous or not: used as it is
            return
        if cluster is None:
            self._own_cluster = await LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=min(self.limit, cpu_count()),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # (None is Dask's 8787, maybe taken: a warning)
                asynchronous=True,
            )
            cluster = self._own_cluster
        else:
            check_address(str(cluster), self.insecure)
        self._client = await Client(cluster, asynchronous=True)  # type: ignore[no-untyped-call]
        self._own_client = True
        if self._own_cluster is not None:
            await self._client.wait_for_workers(len(self._own_cluster.workers))

    def _placement(self) -> dict[str, Any]:
        """Where a batch may go: where Dask places it (a worker with a thread free),
        but around held workers while there are others. A batch is never pinned to
        one worker: a task restricted to workers that all died waits forever when
        others start, even loosely restricted (Dask 2026.8 takes such a task back
        up only on a worker it names), and a task that kills its worker goes on to
        kill the others before Dask gives up on it."""
        if not self._held:
            return {}
        free = [w for w in self._workers if w not in self._held]
        return {"workers": free, "allow_other_workers": True} if free else {}

    def _hold(self, worker: str) -> None:
        """An attempt sent to ``worker`` was given up on: it may still run there,
        and what follows it would wait behind it. Slots send elsewhere until a
        probe pinned to the worker has run (at once, on a worker with a thread
        free)."""
        if worker in self._held:
            return
        client = self._client
        try:
            probe = client.submit(_probe, pure=False, workers=[worker], allow_other_workers=False)
        except Exception:  # (the client closing): the attempt's own end is what matters
            return

        async def release() -> None:
            try:
                await _result(client, probe)
            except Exception:
                pass  # it was cancelled, or the worker lost: nothing waits for it
            finally:
                self._held.pop(worker, None)

        self._held[worker] = (probe, asyncio.ensure_future(release()))

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        client = self._client
        future = client.submit(
            _run_on_worker, self._payload, items, pure=False, **self._placement()
        )
        try:
            start, ends, values, wired, where = await _result(client, future)
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":  # Dask ran out of workers to try
                raise WorkerCrashed(None) from exc
            raise
        finally:
            if not future.done():  # given up on (a timeout, the run stopping)
                if (running_on := await self._running_on(future.key)) is not None:
                    self._hold(running_on)
                await _cancel(future)
        self._where[slot] = where  # the slot's lane, until its next batch runs elsewhere
        return Outcomes(start, ends, values, unwire(wired), workers=[where] * len(values))

    async def _running_on(self, key: Any) -> str | None:
        """The worker a task was handed to (running or waiting there), if any; and
        the cluster's workers as they are now, kept. One question to the scheduler
        at a time, shared by every batch given up on meanwhile (a halt gives up
        on all of them at once)."""
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._processing())
        try:
            processing = await asyncio.shield(self._asking)
        except Exception:  # (the client closing): the attempt's own end is what matters
            return None
        self._workers = list(processing)  # every worker, each with what it was handed
        return next((w for w, keys in processing.items() if key in keys), None)

    async def _processing(self) -> dict[str, Any]:
        client = self._client
        if getattr(client, "asynchronous", False):
            return await client.processing()  # type: ignore[no-any-return]
        return await asyncio.to_thread(client.processing)

    def worker(self, slot: int) -> str:
        return self._where.get(slot, "dask")

    async def close(self, *, abort: bool = False) -> None:
        try:
            for probe, release in list(getattr(self, "_held", {}).values()):
                await _cancel(probe)
                release.cancel()
            if self._own_client and self._client is not None:
                await self._client.close()
        finally:
            if self._own_cluster is not None:
                await self._own_cluster.close()


async def _cancel(future: Any) -> None:
    """Cancel a Dask future, waiting a while for the scheduler to take it (an
    asynchronous client's cancel is a coroutine: dropped, it would never be sent)."""
    cancelled = future.cancel()
    if inspect.isawaitable(cancelled):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cancelled, CANCEL_WAIT)


async def _result(client: Any, future: Any) -> Any:
    """A Dask future's result, awaited without blocking the loop or holding a thread
    while it waits: an asynchronous client's future is awaitable; a synchronous
    client's tells a callback (in a thread of Dask's) when it is done, and its
    result is then fetched in a thread (a round trip to the worker holding it)."""
    if getattr(client, "asynchronous", False):
        return await future
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished(_: Any) -> None:
        def tell() -> None:
            if not done.done():
                done.set_result(None)

        with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
            loop.call_soon_threadsafe(tell)

    future.add_done_callback(finished)
    await done
    return await asyncio.to_thread(future.result)
