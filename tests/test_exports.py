"""The public surface is exactly what design.md promises; a drift fails here."""

import whilst

EXPECTED = {
    "AsyncRun",
    "Journal",
    "Progress",
    "Result",
    "Retry",
    "Run",
    "Status",
    "Summary",
    "TaskCancelled",
    "TaskTimeout",
    "TasksFailed",
    "UsageError",
    "UsageTypeError",
    "WhilstError",
    "WorkerCrashed",
    "__version__",
    "aimap",
    "amap",
    "imap",
    "map",
    "watch",
}


def test_all_is_the_public_surface() -> None:
    assert set(whilst.__all__) == EXPECTED
    for name in whilst.__all__:
        assert hasattr(whilst, name), name


def test_public_names_are_not_reexported_from_private_paths_only() -> None:
    public = {n for n in dir(whilst) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(whilst, n)).__name__ == "module"}
    assert public - modules == EXPECTED - {"__version__"}


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, whilst; heavy = [m for m in ('aiohttp', 'rich', 'click', 'cloudpickle', "
        "'sqlite3', 'dask', 'ray') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_status_words() -> None:
    assert [s.value for s in whilst.Status] == [
        "ok",
        "failed",
        "timed_out",
        "cancelled",
        "crashed",
        "poisoned",
        "skipped",
    ]
    assert whilst.Status.OK == "ok"
