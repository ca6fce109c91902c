"""Reading a worker process's answer that plain ``pickle.loads`` cannot: an
object in it that fails to build here (an exception whose ``__init__`` wants
other arguments, a class this process cannot import) fails its own task, and the
rest of the batch keeps its values."""

from __future__ import annotations

import functools
import io
import itertools
import pickle
from collections.abc import Callable
from typing import Any, ClassVar


class _Unreadable:
    """Stands in for an object a worker sent back that cannot be rebuilt here (an
    exception whose ``__init__`` wants other arguments, a class not importable)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __setstate__(self, state: Any) -> None:
        pass


_BUILD = pickle._Unpickler.dispatch[pickle.BUILD[0]]


def _unreadable(error: BaseException, *args: Any, **kwargs: Any) -> _Unreadable:
    return _Unreadable(error)


class _Tolerant(pickle._Unpickler):
    """The pure-Python unpickler, with each object that fails to build replaced by
    an :class:`_Unreadable`: the rest of a worker's answer survives it."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    stack: list[Any]
    append: Callable[[Any], None]

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            return functools.partial(_unreadable, exc)

    def _build(self, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except Exception as exc:
            return _Unreadable(exc)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        stack[-1] = self._build(lambda: func(*args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._build(lambda: cls.__new__(cls, *args)))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._build(lambda: cls.__new__(cls, *args, **kwargs)))

    def load_build(self) -> None:
        try:
            _BUILD(self)  # type: ignore[arg-type]  # (pops the state, sets it on the object below)
        except Exception as exc:
            self.stack[-1] = _Unreadable(exc)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def _holds_unreadable(value: Any, depth: int = 0) -> _Unreadable | None:
    """The first :class:`_Unreadable` in ``value`` (in its containers or its
    attributes, a few levels down), or None."""
    if isinstance(value, _Unreadable):
        return value
    if depth > 20:
        return None
    if isinstance(value, dict):
        parts: Any = itertools.chain(value.keys(), value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        parts = value
    else:
        parts = getattr(value, "__dict__", {}).values()
    for part in parts:
        if (found := _holds_unreadable(part, depth + 1)) is not None:
            return found
    return None


def read_answer(data: bytes) -> tuple[int, Any]:
    """A worker's answer ``(tag, outcomes)``: a value or an error that cannot be
    rebuilt here fails its own task, with why (the others keep theirs); for when
    plain ``pickle.loads`` failed."""
    tag, outcomes = _Tolerant(io.BytesIO(data)).load()
    if type(outcomes) is int:
        return tag, outcomes
    start, ends, values, wired = outcomes
    for i, value in enumerate(values):
        if (bad := _holds_unreadable(value)) is not None:
            values[i] = None
            kind = "" if value is bad else f" of type {type(value).__name__}"
            wired[i] = (
                None,
                f"TypeError: the task returned a value{kind} that cannot be rebuilt here "
                f"from the worker's pickle ({type(bad.error).__name__}: {bad.error})",
                "",
            )
    for i, (error, text, tb) in wired.items():
        if _holds_unreadable(error) is not None:
            wired[i] = (None, text, tb)  # its text (a RemoteError) instead
    return tag, (start, ends, values, wired)
