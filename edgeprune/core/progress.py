"""One progress protocol for every long library call: ``progress(done, total, message="")``.

``done`` of ``total`` steps are finished (``total`` None when unknown); ``message`` says what is
happening now ("" when only the count moved). A library function takes ``progress: Optional[Progress]``
and reports through :func:`say` / :func:`advance`; the CLI adapts it to rich with :func:`rich_status`
or :func:`rich_bar`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: Optional[int], message: str = "") -> None: ...


def say(progress: Optional[Progress], message: str) -> None:
    """Report a message (no count) through ``progress``, if any."""
    if progress is not None:
        progress(0, None, message)


def advance(progress: Optional[Progress], done: int, total: Optional[int], message: str = "") -> None:
    """Report ``done`` of ``total`` through ``progress``, if any."""
    if progress is not None:
        progress(done, total, message)


def prefixed(progress: Optional[Progress], prefix: str) -> Optional[Progress]:
    """``progress`` with every message prefixed by ``prefix: `` (for one step of a larger job)."""
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{prefix}: {message}" if message else "")


def messages(show: Callable[[str], Any]) -> Progress:
    """A Progress that shows only the messages (a rich status's ``update``, a console's ``print``)."""
    def report(done: int, total: Optional[int], message: str = "") -> None:
        if message:
            show(message)
    return report


def counts(show: Callable[[int, Optional[int]], Any]) -> Progress:
    """A Progress that shows only the counts."""
    def report(done: int, total: Optional[int], message: str = "") -> None:
        if total is not None:
            show(done, total)
    return report


def rich_status(status: Any) -> Progress:
    """Messages to a ``rich`` status spinner (``console.status(...)``)."""
    return messages(status.update)


def rich_bar(bar: Any, task: Any, offset: int = 0, *, set_total: bool = False,
             log: Optional[Callable[[str], Any]] = None) -> Progress:
    """Counts (plus ``offset``) and messages (as the description) to a ``rich.progress.Progress`` task.

    ``set_total``: each count also sets the task's total (plus ``offset``), for a job that learns its
    size as it goes (``tune``). ``log``: where messages without a count go (a console's ``print``, as
    lines above the bar) instead of the description; messages with a count still describe the task."""
    def report(done: int, total: Optional[int], message: str = "") -> None:
        if message and total is None and log is not None:
            log(message)
            return
        fields: dict[str, Any] = {"description": message} if message else {}
        if total is not None:
            fields["completed"] = offset + done
            if set_total:
                fields["total"] = offset + total
        if fields:
            bar.update(task, **fields)
    return report
