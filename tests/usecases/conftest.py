"""Register the toy use case (tests/usecases/toy.py) for the duration of a test or module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from clinrisk import usecases

TOY = "toy"


@contextlib.contextmanager
def toy_registered() -> Iterator[None]:
    """The toy plugin is registered (one REGISTRY line, as a real use case would be) inside the block."""
    usecases.register(TOY, "tests.usecases.toy:USECASE")
    try:
        yield
    finally:
        usecases.unregister(TOY)
