"""How long a thread of this process has computed, waiting for a CPU included.

Shared by ``whilst doctor`` (is a blocked loop computing or waiting?) and auto
mode (are its first tasks CPU-bound?): each asks of a thread, not of the
process, and each must not mistake a CPU-bound thread on a busy machine, which
gets a CPU part of the time, for one that waits for I/O.
"""

from __future__ import annotations

import os


def busy_seconds(native_id: int) -> float | None:
    """Seconds the thread (by its ``threading.get_native_id()``) has been on a CPU
    or ready to run and waiting for one: Linux's schedstat, in nanoseconds. Where
    the kernel keeps none, its CPU time alone, in clock ticks. None elsewhere."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            on_cpu, ready, _ = f.read().split()
        if int(on_cpu):  # (all zeros: a kernel that keeps no schedstat)
            return (int(on_cpu) + int(ready)) / 1e9
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
