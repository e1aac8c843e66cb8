"""Crash points for the kill-and-resume tests: where a test kills a run with SIGKILL.

``ROBENCH_KILL_AT="cell-write:3"`` makes the process send itself SIGKILL the 3rd time it reaches
:func:`point` ``("cell-write")`` (``:1`` when no count is given). The points sit inside the
writes whose atomicity the tests prove: ``cell-write`` (inside a cell's SQLite transaction,
before it commits), ``atomic-write`` (a file's new content written to its temporary file, not
yet renamed over the old), ``model-write`` (a trained model's weights stored, its sidecar not
yet), ``epoch`` (an epoch's training checkpoint written). Unset (always, outside tests), a point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_VAR = "ROBENCH_KILL_AT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Kill this process here (SIGKILL: no cleanup, as ``kill -9``) if a test asked for it."""
    wanted = os.environ.get(_VAR)
    if not wanted:
        return
    where, _, count = wanted.partition(":")
    if where != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
