"""Modes: where one attempt runs. Each is a small adapter behind :class:`Mode`,
imported by name only when a run asks for it, so ``import whilst`` stays light."""

from __future__ import annotations

import importlib

from ._base import Call, Mode, Outcomes

_REGISTRY = {
    "sync": "whilst._modes._sync:SyncMode",
    "async": "whilst._modes._async:AsyncMode",
    "threads": "whilst._modes._threads:ThreadsMode",
    "processes": "whilst._modes._processes:ProcessesMode",
    "dask": "whilst._modes._dask:DaskMode",
    "ray": "whilst._modes._ray:RayMode",
}


def mode_class(name: str) -> type[Mode]:
    """The adapter registered under ``name`` (already checked by the options)."""
    module, _, attr = _REGISTRY[name].partition(":")
    cls: type[Mode] = getattr(importlib.import_module(module), attr)
    return cls


__all__ = ["Call", "Mode", "Outcomes", "mode_class"]
