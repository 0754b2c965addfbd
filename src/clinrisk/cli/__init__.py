"""The ``clinrisk`` command line: a thin Typer layer over the library (one module per area).

The root app is assembled in :mod:`clinrisk.cli.app` (the console script's entry point), not here: a use
case's own CLI imports the shared options from :mod:`clinrisk.cli.common`, which runs this package's
``__init__`` first, so the app that mounts those plugin CLIs must live outside it (no import cycle).
"""
