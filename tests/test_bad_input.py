"""Bad input fails at the call, in one sentence naming the fix, before any task starts."""

from __future__ import annotations

import threading

import pytest

import whilst

from conftest import anap

ran: list[object] = []


def record(x: object) -> object:
    ran.append(x)
    return x


@pytest.fixture(autouse=True)
def nothing_ran() -> object:
    ran.clear()
    yield
    assert ran == [], "a task started despite bad input"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"limit": 0}, whilst.UsageError, "limit must be at least 1"),
        ({"limit": -3}, whilst.UsageError, "limit must be at least 1"),
        ({"limit": "3"}, TypeError, "limit must be a whole number"),
        ({"limit": 2.5}, TypeError, "limit must be a whole number"),
        ({"mode": "fast"}, ValueError, "unknown mode 'fast': choose one of auto, sync"),
        ({"mode": "sync", "limit": 4}, ValueError, "mode='sync' runs one task at a time"),
    ],
)
@pytest.mark.parametrize("form", ["map", "imap"])
def test_bad_options(form: str, kwargs: dict[str, object], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        getattr(whilst, form)(record, [1, 2], **kwargs)


def test_summary_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="summary= takes True or False, got 'yes'"):
        whilst.map(record, [1], summary="yes")  # type: ignore[arg-type]


def test_auto_says_an_empty_input_ran_nothing() -> None:
    run = whilst.imap(record, [])
    assert list(run) == []
    assert run.summary is not None
    assert run.summary.mode_reason == (
        "auto ran no tasks (the input was empty, or a journal had them all)"
    )


def test_ordered_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="ordered must be True or False"):
        whilst.imap(record, [1], ordered="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["map", "imap", "aimap"])
def test_fn_must_be_callable(form: str) -> None:
    with pytest.raises(TypeError, match="fn must be a function to call on each item"):
        getattr(whilst, form)([1, 2], record)


@pytest.mark.parametrize("form", ["map", "imap", "aimap"])
def test_items_must_be_iterable(form: str) -> None:
    with pytest.raises(TypeError, match="items must be an iterable"):
        getattr(whilst, form)(record, 42)


def test_a_plain_function_in_async_mode_names_threads() -> None:
    with pytest.raises(whilst.UsageError, match="use mode='threads'") as info:
        whilst.map(record, [1], mode="async")
    assert "record" in str(info.value)


async def agen(x: object) -> object:
    ran.append(x)
    yield x


@pytest.mark.parametrize("mode", ["auto", "async", "threads"])
def test_an_async_generator_function_is_refused_in_every_mode(mode: str) -> None:
    with pytest.raises(TypeError, match=r"async generator function .* return the value"):
        whilst.map(agen, [1], mode=mode)


def test_an_unpicklable_function_in_processes_mode() -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        ran.append(x)
        with lock:
            return x

    with pytest.raises(TypeError, match=r"cannot be pickled.*use mode='threads'"):
        whilst.map(uses_lock, [1, 2], mode="processes")
    # imap: refused at its call (it was at the first next()), one sentence, no chain
    with pytest.raises(TypeError, match=r"cannot be pickled") as caught:
        whilst.imap(uses_lock, [1, 2], mode="processes")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_an_unpicklable_item_fails_only_its_task() -> None:
    lock = threading.Lock()
    results = list(whilst.imap(repr, [1, lock, 3], mode="processes"))
    assert [r.ok for r in results] == [True, False, True]
    assert "cannot be pickled" in str(results[1].error)


def test_an_unpicklable_value_fails_only_its_task() -> None:
    results = list(whilst.imap(make_lock_if_two, [1, 2, 3], mode="processes"))
    assert [r.ok for r in results] == [True, False, True]
    assert "cannot be sent back from a worker process" in str(results[1].error)


def make_lock_if_two(x: int) -> object:
    return threading.Lock() if x == 2 else x


def test_usage_errors_are_whilst_errors() -> None:
    assert issubclass(whilst.UsageError, whilst.WhilstError)
    assert issubclass(whilst.UsageError, ValueError)
    assert issubclass(whilst.UsageTypeError, TypeError)
    assert anap  # keeps the import honest for processes mode's by-name pickling
