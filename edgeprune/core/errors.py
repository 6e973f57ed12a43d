"""User-facing errors.

An :class:`EdgepruneError` is a problem with the user's input or environment (unknown model, bad
checkpoint, impossible budget, corrupt artifact). The CLI prints its message as one line and exits
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """An error caused by input the user can fix; its message is shown as is."""


def first_line(exc: BaseException) -> str:
    """The first line of a library exception, whose full text is often pages long."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ParityError(EdgepruneError):
    """The exported graph does not reproduce eager PyTorch within tolerance."""
