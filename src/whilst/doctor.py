"""``python -m whilst.doctor SCRIPT [ARGS]``: the same as ``whilst doctor``.

In code, :func:`whilst.watch` does the same for a block::

    with whilst.watch() as doctor:
        asyncio.run(main())
    for finding in doctor.findings():
        print(finding.kind, finding.file, finding.line, finding.fix)
"""

from ._doctor import Doctor, Finding

__all__ = ["Doctor", "Finding"]

if __name__ == "__main__":
    import sys

    from ._cli import cli

    sys.argv[0] = "whilst doctor"
    cli.main(["doctor", *sys.argv[1:]], prog_name="whilst")
