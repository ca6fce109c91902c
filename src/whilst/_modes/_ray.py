"""``ray``: tasks on a Ray cluster, the scheduler keeping everything else.

As in Dask mode: batches sized from measured time, one Ray task each, submitted
as slots free up (at most ``limit`` batches in the cluster), limits, retries,
timeouts, the journal, progress and the report whilst's own. A timed-out
attempt is cancelled with ``ray.cancel(force=True)``, which kills the worker
process running it. A worker lost mid-task: Ray runs the task again (up to 3
times, ``max_retries``); past that the task ends ``crashed`` and whilst's
``retries`` apply. With no ``cluster``, Ray is started on this machine for the
run (or the running ``ray.init`` of the caller is used, and left running).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .._errors import RemoteError, UsageError, WorkerCrashed
from .._options import cpu_count
from . import _worker
from ._base import ClusterMode, Outcomes, unwire
from ._dask import check_address


def _run_in_ray(payload: tuple[list[str], bytes], items: list[Any]) -> tuple[Any, ...]:
    """Runs in a Ray worker: the batch, and where it ran."""
    start, ends, values, wired = _worker.run_batch(_worker.load_function(payload), items)
    return start, ends, values, wired, f"ray-pid-{os.getpid()}"


class RayMode(ClusterMode):
    """Each slot sends batches to Ray; Ray picks the worker."""

    name = "ray"
    timeout_note = "its Ray task was cancelled and the worker process running it killed"
    _own = False  # Ray was started for this run

    async def open(self) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(
                "mode='ray' needs Ray: pip install ray (whilst's extra: 'whilst[ray]')"
            ) from None
        self._payload = self.payload()
        if not ray.is_initialized():
            if self.cluster is not None:
                check_address(str(self.cluster).removeprefix("ray://"), self.insecure)
            ray.init(
                address=self.cluster,
                num_cpus=None if self.cluster else min(self.limit, cpu_count()),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._own = True
        self._remote = ray.remote(_run_in_ray).options(max_retries=3, num_cpus=1)

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        import ray

        ref = self._remote.remote(self._payload, items)
        try:
            start, ends, values, wired, where = await ref
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)  # kills the worker process running it
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            raise WorkerCrashed(None) from exc
        except ray.exceptions.RayTaskError as exc:  # whilst's own code failed there
            raise RemoteError(str(exc)) from None
        self._where[slot] = where
        # The worker named at hand-over was a guess: say where the batch really ran.
        return Outcomes(start, ends, values, unwire(wired), workers=[where] * len(values))

    def worker(self, slot: int) -> str:
        return self._where.get(slot, f"ray-{slot}")

    async def close(self, *, abort: bool = False) -> None:
        if self._own:
            import ray

            ray.shutdown()
