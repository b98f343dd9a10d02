"""``python -m relayml`` is the ``relay`` command."""

from relayml.cli import main

main()
