"""``python -m whilst``: the same as the ``whilst`` command."""

from ._cli import main

main()
