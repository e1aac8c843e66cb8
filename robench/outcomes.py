"""Per-example outcomes, kept beside the results table (``outcomes.npz``).

For every defense the file holds which evaluation examples it classifies correctly without
attack, and for every attack × ε which of them are still classified correctly after the attack
(False where clean was already wrong). With them the worst case over any subset of attacks can
be recomputed after the run, without attacking again::

    from robench.outcomes import read_outcomes

    out = read_outcomes("results/mnist")
    out.worst_case("pgd-at", "linf", 0.3, attacks=["fgsm", "pgd-40"]).mean()
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robench.checks import SANITY_PREFIX
from robench.results import atomic_write

FILENAME = "outcomes.npz"
_INDEX = "example_index"


def _key(defense: str, attack: str, norm: str, eps: float) -> str:
    return json.dumps([defense, attack, norm, float(eps)])


@dataclass(frozen=True)
class Outcomes:
    """Per-example outcomes of one run: boolean vectors over the same evaluation examples."""

    #: the evaluation examples' positions in the dataset's test split
    example_index: np.ndarray
    #: (defense, attack, norm, eps) → robust per example; attack "clean" holds clean accuracy
    #: with norm "" and eps 0
    vectors: dict[tuple[str, str, str, float], np.ndarray]

    def get(self, defense: str, attack: str, norm: str = "", eps: float = 0.0) -> np.ndarray:
        try:
            return self.vectors[(defense, attack, norm, float(eps))]
        except KeyError:
            raise KeyError(f"no outcomes for {defense!r} / {attack!r} {norm} eps={eps:g}") from None

    def attacks(self, defense: str, norm: str, eps: float, *, sanity: bool = False) -> list[str]:
        """The attacks with outcomes for this defense and budget; with ``sanity``, the
        sanity attacks too (which the results' worst-case rows leave out)."""
        return [
            a
            for d, a, n, e in self.vectors
            if (d, n, e) == (defense, norm, float(eps))
            and (sanity or not a.startswith(SANITY_PREFIX))
        ]

    def worst_case(
        self, defense: str, norm: str, eps: float, attacks: Iterable[str] | None = None
    ) -> np.ndarray:
        """Per example: robust to every one of ``attacks`` (by default all of this budget's,
        the sanity attacks excepted: the results' worst-case rows)."""
        names = list(attacks) if attacks is not None else self.attacks(defense, norm, eps)
        if not names:
            raise ValueError(f"no attacks given or recorded for {defense!r} at {norm} {eps:g}")
        return np.logical_and.reduce([self.get(defense, a, norm, eps) for a in names])


def read_outcomes(folder: str | Path) -> Outcomes:
    """Read ``outcomes.npz`` from a run folder (or the file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / FILENAME
    with np.load(path) as npz:
        index = npz[_INDEX]
        vectors = {}
        for name in npz.files:
            if name == _INDEX:
                continue
            defense, attack, norm, eps = json.loads(name)
            vectors[(defense, attack, norm, float(eps))] = np.unpackbits(npz[name])[
                : len(index)
            ].astype(bool)
    return Outcomes(index, vectors)


class OutcomeWriter:
    """Collects per-example outcomes and rewrites ``outcomes.npz`` atomically on each add."""

    def __init__(self, folder: Path, example_index: np.ndarray) -> None:
        self.path = folder / FILENAME
        self.arrays: dict[str, np.ndarray] = {_INDEX: np.asarray(example_index, dtype=np.int64)}

    def add(self, defense: str, attack: str, norm: str, eps: float, robust) -> None:
        vector = np.asarray(robust.cpu() if hasattr(robust, "cpu") else robust, dtype=bool)
        self.arrays[_key(defense, attack, norm, eps)] = np.packbits(vector)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays)
        atomic_write(self.path, buffer.getvalue())
