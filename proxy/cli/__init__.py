"""The `linguagate` command and its subcommands (serve, keys, policies, report, ledger-migrate,
compress, align, compressor-worker, dashboard). The entry point is `proxy.cli:main`.

The top of the import graph: it may import every stage package and the wiring.
"""

from proxy.cli.commands import main

__all__ = ["main"]
