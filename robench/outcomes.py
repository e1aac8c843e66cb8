"""Per-example outcomes, kept beside the results table (``outcomes.npz``).

For every defense the file holds which evaluation examples it classifies correctly without
attack, and for every attack × ε which of them are still classified correctly after the attack
(False where clean was already wrong). With them the worst case over any subset of attacks can
be recomputed after the run, without attacking again::

    from robench.outcomes import read_outcomes

    out = read_outcomes("results/mnist")
    out.worst_case("pgd-at", "linf", 0.3, attacks=["fgsm", "pgd-40"]).mean()
    out.worst_case("nsl-base", "linf", 0.3, seed=1)   # a defense trained with several seeds
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robench.checks import SANITY_PREFIX
from robench.results import atomic_write, partial_name

FILENAME = "outcomes.npz"
_INDEX = "example_index"
_CASCADE = "cascade"


def _key(defense: str, seed: int, attack: str, norm: str, eps: float) -> str:
    return json.dumps([defense, int(seed), attack, norm, float(eps)])


@dataclass(frozen=True)
class Outcomes:
    """Per-example outcomes of one run: boolean vectors over the same evaluation examples."""

    #: the evaluation examples' positions in the dataset's test split
    example_index: np.ndarray
    #: (defense, training seed, attack, norm, eps) → robust per example; attack "clean" holds
    #: clean accuracy with norm "" and eps 0
    vectors: dict[tuple[str, int, str, str, float], np.ndarray]
    #: a cascade run (``[evaluation] cascade = true``): each attack's vector is cumulative
    #: (robust to it and every attack before it at that budget), so only the full worst case
    #: can be recomputed
    cascade: bool = False

    def seeds(self, defense: str) -> list[int]:
        """The training seeds with outcomes for ``defense``."""
        return sorted({s for d, s, *_ in self.vectors if d == defense})

    def _seed(self, defense: str, seed: int | None) -> int:
        if seed is not None:
            return seed
        seeds = self.seeds(defense)
        if len(seeds) != 1:
            found = f"seeds {seeds}: pass seed=" if seeds else "no outcomes"
            raise KeyError(f"{defense!r}: {found}")
        return seeds[0]

    def get(
        self,
        defense: str,
        attack: str,
        norm: str = "",
        eps: float = 0.0,
        *,
        seed: int | None = None,
    ) -> np.ndarray:
        """Per example: robust to ``attack`` at ``norm``/``eps`` (or correct clean, for
        ``"clean"``). ``seed`` is needed only where the defense was trained with several."""
        seed = self._seed(defense, seed)
        try:
            return self.vectors[(defense, seed, attack, norm, float(eps))]
        except KeyError:
            what = f"{defense!r} (seed {seed}) / {attack!r} {norm} eps={eps:g}"
            raise KeyError(f"no outcomes for {what}") from None

    def attacks(
        self,
        defense: str,
        norm: str,
        eps: float,
        *,
        seed: int | None = None,
        sanity: bool = False,
    ) -> list[str]:
        """The attacks with outcomes for this defense and budget; with ``sanity``, the
        sanity attacks too (which the results' worst-case rows leave out)."""
        seed = self._seed(defense, seed)
        return [
            a
            for d, s, a, n, e in self.vectors
            if (d, s, n, e) == (defense, seed, norm, float(eps))
            and (sanity or not a.startswith(SANITY_PREFIX))
        ]

    def worst_case(
        self,
        defense: str,
        norm: str,
        eps: float,
        attacks: Iterable[str] | None = None,
        *,
        seed: int | None = None,
    ) -> np.ndarray:
        """Per example: robust to every one of ``attacks`` (by default all of this budget's,
        the sanity attacks excepted: the results' worst-case rows)."""
        seed = self._seed(defense, seed)
        if attacks is not None and self.cascade:
            raise ValueError(
                "a cascade run's per-attack outcomes are cumulative: the worst case over a "
                "subset of its attacks cannot be recomputed (run with cascade = false)"
            )
        if attacks is None:
            attacks = self.attacks(defense, norm, eps, seed=seed)
        names = list(attacks)
        if not names:
            raise ValueError(f"no attacks given or recorded for {defense!r} at {norm} {eps:g}")
        return np.logical_and.reduce([self.get(defense, a, norm, eps, seed=seed) for a in names])


def read_outcomes(folder: str | Path) -> Outcomes:
    """Read ``outcomes.npz`` from a run folder (or the file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / FILENAME
    with np.load(path) as npz:
        index = npz[_INDEX]
        cascade = bool(npz[_CASCADE][0]) if _CASCADE in npz.files else False
        vectors = {}
        for name in npz.files:
            if name in (_INDEX, _CASCADE):
                continue
            defense, seed, attack, norm, eps = json.loads(name)
            vectors[(defense, int(seed), attack, norm, float(eps))] = np.unpackbits(npz[name])[
                : len(index)
            ].astype(bool)
    return Outcomes(index, vectors, cascade)


class OutcomeWriter:
    """Collects a run's per-example outcomes (read back from its cell store,
    :mod:`robench.cellstore`) and writes them once: :meth:`finish` into ``outcomes.npz``,
    :meth:`write_partial` into ``outcomes.partial.npz`` when the run is interrupted."""

    def __init__(self, folder: Path, example_index: np.ndarray, cascade: bool = False) -> None:
        self.path = folder / FILENAME
        self.partial = folder / partial_name(FILENAME)
        self.arrays: dict[str, np.ndarray] = {
            _INDEX: np.asarray(example_index, dtype=np.int64),
            _CASCADE: np.array([cascade]),
        }

    def add(self, defense: str, seed: int, attack: str, norm: str, eps: float, robust) -> None:
        vector = np.asarray(robust.cpu() if hasattr(robust, "cpu") else robust, dtype=bool)
        self.arrays[_key(defense, seed, attack, norm, eps)] = np.packbits(vector)

    def _write(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays)
        atomic_write(path, buffer.getvalue())

    def write_partial(self) -> None:
        """The run was interrupted: keep its outcomes so far in ``outcomes.partial.npz``."""
        self._write(self.partial)

    def finish(self) -> None:
        """The run finished: its outcomes replace ``outcomes.npz``."""
        self._write(self.path)
        self.partial.unlink(missing_ok=True)
