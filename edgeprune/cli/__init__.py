"""The ``edgeprune`` command line (typer + rich)."""
