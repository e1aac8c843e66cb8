"""Finished evaluation cells, stored append-only under a run's output folder (``cells.sqlite``).

An *evaluation cell* is one model scored one way: clean, or one attack at one budget. Its key is
the SHA-256 of its record (:func:`robench.store.cell_key`): the trained model's key, the
evaluation examples (hashed by value), the evaluation settings that change outcomes, the attack
(name, parameters, norm, ε, seed, the transfer source's model key, whether it also attacks the
clean-misclassified examples, in a cascade the keys of the earlier attacks it ran after), and the
versions of robench, torch and the attack's plugin distribution. A cell stored by another robench
or plugin version has another key, so it is never mixed in: it is recomputed.

What is stored per cell is what was measured (:class:`Measured`: counts, accuracies, timing,
the model checks' flags for a clean cell) and the per-example outcome vector (bit-packed).
Everything else in a results row (labels, names, the benchmark) comes from the benchmark being
run, so a cell is reused under new labels too when its key is the same.

Why SQLite: it is in Python's standard library, every cell is one ``INSERT`` in its own
transaction (a kill at any instant leaves the transaction committed or rolled back, never half
written: SQLite's journal guarantees it), nothing is ever rewritten whole, and a run reads back a
single cell by key without loading the rest. Parquet would need a file per cell (or a rewrite)
for the same guarantees. ``results.csv`` and ``outcomes.npz`` are produced from the cells when a
run finishes.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robench import faults
from robench.store import canonical_json, cell_key

#: the store's file under the output folder
FILENAME = "cells.sqlite"
#: the layout of an evaluation-cell record and of the table; changing either bumps it
FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,      -- SHA-256 of the canonical JSON in `cell`
    model_key TEXT NOT NULL,   -- the scored model's key
    kind TEXT NOT NULL,        -- 'clean' | 'attack'
    cell TEXT NOT NULL,        -- the cell's record (what the key hashes)
    measured TEXT NOT NULL,    -- JSON of Measured
    outcome BLOB NOT NULL,     -- per example (np.packbits): correct clean / still robust
    n INTEGER NOT NULL,        -- examples in `outcome`
    created TEXT NOT NULL
)
"""
_INSERT = "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class Measured:
    """What scoring one cell measured: the part of a results row that is stored."""

    n_correct: int
    accuracy: float
    seconds: float
    #: attack cells: accuracy on the adversarial examples of every example (None: not run)
    adv_accuracy: float | None = None
    n_attacked: int | None = None
    n_violations: int = 0
    max_violation: float = 0.0
    #: a cascade's attacks so far ("+"-joined; "" outside a cascade)
    attacks: str = ""
    #: an ensemble attack: the examples each component fooled ("apgd-ce 412, apgd-t 3, ...")
    fooled_by: str = ""
    #: clean cells: the model checks' flags ("; "-joined)
    flags: str = ""

    def fooled_counts(self) -> tuple[tuple[str, int], ...]:
        """:attr:`fooled_by` as (component, examples) pairs."""
        pairs = (part.rsplit(" ", 1) for part in self.fooled_by.split(", ") if part)
        return tuple((name, int(n)) for name, n in pairs)


@dataclass(frozen=True)
class StoredCell:
    """A finished cell as read back: its key, what was measured, its outcome vector."""

    key: str
    measured: Measured
    outcome: np.ndarray  # bool, one per evaluation example


class CellStore:
    """The evaluation cells of one output folder. One connection per run (one writer: a run
    holds its output folder alone, :mod:`robench.rundir`)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit off by default: `with self.db:` commits or rolls back one transaction
        self.db = sqlite3.connect(self.path, isolation_level="DEFERRED")
        self.db.execute("PRAGMA synchronous = FULL")  # durable at commit, not just consistent
        with self.db:
            self.db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CellStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> StoredCell | None:
        """The finished cell of ``key``, or None (never stored, or unreadable: recomputed)."""
        found = self.db.execute(
            "SELECT measured, outcome, n FROM cells WHERE key = ?", (key,)
        ).fetchone()
        if found is None:
            return None
        try:
            measured = Measured(**json.loads(found[0]))
            bits = np.frombuffer(found[1], dtype=np.uint8)
            outcome = np.unpackbits(bits)[: int(found[2])].astype(bool)
        except (TypeError, ValueError):
            return None
        if len(outcome) != int(found[2]):
            return None
        return StoredCell(key, measured, outcome)

    def put(
        self,
        key: str,
        record: dict[str, Any],
        measured: Measured,
        outcome: np.ndarray,
        created: str,
    ) -> StoredCell:
        """Store a finished cell (one transaction: all of it or nothing); return it as
        :meth:`get` would read it back."""
        outcome = np.asarray(outcome, dtype=bool)
        values = (
            key,
            str(record.get("model", "")),
            str(record.get("kind", "")),
            canonical_json(record),
            json.dumps(dataclasses.asdict(measured)),
            np.packbits(outcome).tobytes(),
            len(outcome),
            created,
        )
        with self.db:
            self.db.execute(_INSERT, values)
            faults.point("cell-write")  # a test's kill inside the transaction
        stored = self.get(key)
        assert stored is not None
        return stored

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0])

    def export(self, model: str | None = None) -> list[tuple]:
        """The stored cells (of the model keyed ``model``, or all) as raw rows, what
        :meth:`merge` takes: how an executor's tasks and the run's own store exchange cells."""
        if model is None:
            return self.db.execute("SELECT * FROM cells").fetchall()
        return self.db.execute("SELECT * FROM cells WHERE model_key = ?", (model,)).fetchall()

    def merge(self, rows: list[tuple]) -> int:
        """Store raw rows from another store's :meth:`export` (one transaction); returns how
        many there were."""
        with self.db:
            self.db.executemany(_INSERT, rows)
        return len(rows)


def evaluation_cell(kind: str, **parts: Any) -> tuple[dict[str, Any], str]:
    """An evaluation cell's record (``kind`` and ``parts``, with the format) and its key."""
    record = {"format": FORMAT, "kind": kind, **parts}
    return record, cell_key(record)
