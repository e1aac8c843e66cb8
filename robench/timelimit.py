"""Time limits on cells (``[execution] cell_timeout`` and ``train_timeout``).

A cell past its limit is stopped by an exception raised in the thread that runs it (a
``SIGALRM`` timer, :func:`signal.setitimer`), recorded as the cell's error, and the run goes on.
The exception arrives between two Python bytecodes: a plugin looping in Python, or waiting in
``time.sleep``, stops at once; one blocked inside a single C call (one huge tensor operation, a
library's compiled loop) stops when that call returns. Only in the main thread of a process
(signals are delivered there) and where ``setitimer`` exists (not on Windows); elsewhere the limit
is not enforced, and :func:`enforceable` says so.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class CellTimeout(Exception):
    """A cell ran past its time limit."""


def enforceable() -> bool:
    """Whether a limit can be enforced here: the main thread, on a platform with setitimer."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str, setting: str) -> Iterator[None]:
    """Raise :class:`CellTimeout` (``"{what} took more than {seconds} s ({setting})"``) in the
    block once ``seconds`` have passed; no limit when ``seconds`` is None or where it cannot be
    enforced. Limits nest: an inner block's timer replaces the outer one's for its duration, and
    the outer one is re-armed with what it had left."""
    if not seconds or not enforceable():
        yield
        return

    def expire(signum, frame) -> None:
        raise CellTimeout(f"{what} took more than {seconds:g} s ({setting})")

    previous = signal.signal(signal.SIGALRM, expire)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # an enclosing limit: re-arm it with what remains of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (seconds - left), 1e-3))
