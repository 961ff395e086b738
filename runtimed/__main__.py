"""``python -m runtimed`` is the ``runtimed`` command."""

from .cli import main

main(prog_name="runtimed")
