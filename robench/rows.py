"""A results row as a typed record: :class:`Row`, one per finished (or failed) cell.

The runner builds each model's base :class:`Row` once and derives every row of that model from
it with :meth:`Row.as_clean`, :meth:`Row.as_attack`, :meth:`Row.with_measured`,
:meth:`Row.as_failed` and :meth:`Row.as_worst_case`. The fields are the results table's columns
(:data:`robench.results.COLUMNS`, whose comments say what each holds), the computed interval
columns aside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from robench.cellstore import Measured


@dataclass(frozen=True)
class Row:
    benchmark: str
    defense: str
    train_seed: int
    defense_name: str
    defense_plugin: str
    model: str
    model_key: str
    n_examples: int
    kind: str = "clean"
    attack: str = "clean"
    attack_name: str = ""
    attack_plugin: str = ""
    source: str = ""
    norm: str = ""
    eps: float = 0.0
    n_correct: int | None = None
    accuracy: float | None = None
    adv_accuracy: float | None = None
    clean_accuracy: float | None = None
    n_attacked: int | None = None
    n_violations: int | None = None
    max_violation: float | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    seed: int | None = None
    attacks: str = ""
    fooled_by: str = ""
    flags: str = ""
    status: str = "ok"
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def as_clean(self) -> Row:
        """The defense's clean row (seeded with the training seed)."""
        return dataclasses.replace(self, kind="clean", attack="clean", seed=self.train_seed)

    def as_attack(
        self,
        label: str,
        name: str,
        plugin: str,
        norm: str,
        eps: float,
        seed: int,
        source: str = "",
        sanity: bool = False,
    ) -> Row:
        """The row of attack ``label`` at ``norm``/``eps`` (a sanity attack: kind ``sanity``)."""
        return dataclasses.replace(
            self,
            kind="sanity" if sanity else "attack",
            attack=label,
            attack_name=name,
            attack_plugin=plugin,
            source=source,
            norm=norm,
            eps=eps,
            seed=seed,
        )

    def with_measured(self, m: Measured) -> Row:
        """This row with what its cell measured (fresh or read back from the store)."""
        return dataclasses.replace(
            self,
            n_correct=m.n_correct,
            accuracy=m.accuracy,
            adv_accuracy=m.adv_accuracy,
            n_attacked=m.n_attacked,
            n_violations=m.n_violations,
            max_violation=m.max_violation,
            seconds=m.seconds,
            attacks=m.attacks or self.attacks,
            fooled_by=m.fooled_by,
            flags=m.flags or self.flags,
            status="ok",
            error="",
        )

    def as_failed(self, error: str, seconds: float | None = None) -> Row:
        """This row as a failed cell, with its one-line ``error``."""
        row = dataclasses.replace(self, status="error", error=error)
        return row if seconds is None else dataclasses.replace(row, seconds=seconds)

    def as_worst_case(
        self, norm: str, eps: float, n_correct: int, attacks: list[str], missing: list[str]
    ) -> Row:
        """The per-example worst case at ``norm``/``eps`` over ``attacks`` (``missing``: the
        attacks of that budget that failed, left out)."""
        return dataclasses.replace(
            self,
            kind="worst-case",
            attack="worst-case",
            norm=norm,
            eps=eps,
            n_correct=n_correct,
            accuracy=n_correct / self.n_examples,
            seed=self.train_seed,
            attacks="+".join(attacks),
            seconds=0.0,
            error=f"without failed attacks: {', '.join(missing)}" if missing else "",
        )
