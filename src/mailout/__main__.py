"""``python -m mailout``: the same as the ``mailout`` command."""

from mailout.cli import main

main()
