"""``python -m flows.cli``: the ``redflow`` command."""
from . import main

main()
