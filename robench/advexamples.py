"""A few adversarial examples kept per cell, so that a report can show them without attacking
again (``examples.npz`` beside ``outcomes.npz``).

The *watched* examples are the first :data:`KEEP` of the evaluation set (itself a seeded random
subset of the test split: the same examples for every defense, attack and ε of a benchmark).
For every cell robench keeps, of those it attacked, the adversarial example, the model's
predicted label on it and the size of its perturbation (the exact L∞ or L2 norm); for the clean
cell, the clean images, their labels and the model's predictions. A cell's part on the
clean-misclassified examples (a cell of its own) keeps those it attacked, so the two parts
together cover every watched example that the attack ran on; in a cascade an example fooled by
an earlier attack is not attacked again, and has no adversarial example of the later attacks.

**Compact.** Images of 8-bit data (every clean value a multiple of 1/255, in [0, 1]) are kept
as ``uint8``: an adversarial example's perturbation is rounded towards the clean image, so the
kept image stays inside the ε-ball; the predicted labels are the model's on the exact
adversarial example, and the perturbation norms are exact. Other data is kept as ``float16``.
About 8 × 784 bytes per MNIST cell, 8 × 3,072 per CIFAR-10 cell, before compression.

**Stored with the cells.** The cell store (``cells.sqlite``, :mod:`robench.cellstore`) holds
them in a table of its own, ``examples``, under the cell's key (the cells' keys and table are
unchanged): a cell reused by a later run brings its examples along. Each is written in its own
transaction just before its cell; a kill between the two leaves an example record that the
recomputed cell replaces. Cells stored before robench kept examples have none (they are not
attacked again for them: a report says which are missing; ``robench run --fresh`` recomputes).
At the end of each model's cells, that model's examples are written into ``examples.npz``
(replacing the entries of the same defense and training seed): :func:`read_examples`.
"""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robench.results import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from robench.cellstore import CellStore
    from robench.scoring import AttackOutcome

#: how many evaluation examples are watched: the first KEEP of the evaluation set
KEEP = 8
#: the file beside ``outcomes.npz``
FILENAME = "examples.npz"
#: the layout of ``examples.npz`` and of the stored records; changing either bumps it
FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    key TEXT PRIMARY KEY,      -- the cell's key (cells.key)
    data BLOB NOT NULL,        -- np.savez_compressed of the kept arrays
    created TEXT NOT NULL
)
"""
#: the slack when a perturbation is rounded towards the clean image (in 1/255 levels)
_SLACK = 1e-3


def on_8bit_grid(x: np.ndarray) -> bool:
    """Whether every value of ``x`` is in [0, 1] and a multiple of 1/255 (8-bit data)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or x.min() < 0 or x.max() > 1:
        return False
    levels = x * 255
    return bool(np.abs(levels - np.round(levels)).max() < 1e-3)


def encode_images(x: np.ndarray, clean: np.ndarray | None = None) -> np.ndarray:
    """``x`` (float images) compactly: ``uint8`` where ``clean`` (the clean images, else
    ``x`` itself) is 8-bit data, with the perturbation ``x − clean`` rounded towards zero, so
    an adversarial example stays in its ε-ball; otherwise ``float16``."""
    x = np.asarray(x, dtype=np.float32)
    ref = x if clean is None else np.asarray(clean, dtype=np.float32)
    if not on_8bit_grid(ref):
        return x.astype(np.float16)
    base = np.round(ref * 255)
    step = (x - ref) * 255
    step = np.trunc(step + np.sign(step) * _SLACK)
    return np.clip(base + step, 0, 255).astype(np.uint8)


def decode_images(a: np.ndarray) -> np.ndarray:
    """Images kept by :func:`encode_images` as float32 in [0, 1] (8-bit: level / 255)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    return a.astype(np.float32)


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


class ExampleStore:
    """The kept examples of a cell store (its ``examples`` table), by cell key."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        with self.db:
            self.db.execute(_SCHEMA)

    def put(self, key: str, arrays: dict[str, np.ndarray], created: str) -> None:
        """Store the arrays of cell ``key`` (one transaction), replacing any."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?)", (key, _pack(arrays), created)
            )

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of cell ``key``; None when none are stored (or they are unreadable)."""
        found = self.db.execute("SELECT data FROM examples WHERE key = ?", (key,)).fetchone()
        return None if found is None else _unpack(found[0])

    def export(self, keys: list[str] | None = None) -> list[tuple]:
        """The stored records of the cells ``keys`` (all: None) as raw rows, what
        :meth:`merge` takes: for an executor whose tasks store cells elsewhere (the cells'
        own rows travel with :meth:`robench.cellstore.CellStore.export`)."""
        if keys is None:
            return self.db.execute("SELECT * FROM examples").fetchall()
        rows = []
        for key in keys:
            rows += self.db.execute("SELECT * FROM examples WHERE key = ?", (key,)).fetchall()
        return rows

    def merge(self, rows: list[tuple]) -> int:
        """Store raw rows from another store's :meth:`export` (one transaction)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO examples VALUES (?, ?, ?)", rows)
        return len(rows)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return (
        t.detach().float().cpu().contiguous().numpy()
        if t.is_floating_point()
        else (t.detach().cpu().numpy())
    )


def perturbation_norm(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    """Per example, the size of ``x_adv − x`` in ``norm`` ("linf" or "l2")."""
    if not len(x):
        return np.zeros(0, dtype=np.float32)
    delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.sqrt((delta**2).sum(axis=1))
    return size.astype(np.float32)


@dataclass
class CellExamples:
    """The kept adversarial examples of one attack at one budget on one model."""

    #: positions among the watched examples (0 … KEEP − 1) that the attack ran on
    pos: np.ndarray
    #: their adversarial examples (float32, decoded) and the model's predictions on them
    x: np.ndarray
    pred: np.ndarray
    #: the exact size of each perturbation in the budget's norm
    dist: np.ndarray


@dataclass
class ModelExamples:
    """The watched examples of one model (defense, training seed): clean and per cell."""

    defense: str
    seed: int
    #: the model's key as the results' ``model_key`` column gives it
    model_key: str
    #: the clean images (float32), their labels and the model's clean predictions
    x: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    #: (attack label, norm, ε) → its kept examples (both parts of a cell merged)
    cells: dict[tuple[str, str, float], CellExamples] = field(default_factory=dict)


def _key(defense: str, seed: int, attack: str, norm: str, eps: float, name: str) -> str:
    return json.dumps([defense, int(seed), attack, norm, float(eps), name])


class ExampleLog:
    """The kept examples of one model's cells in a run (:class:`robench.modelcells.
    ModelCells`): each computed cell's are stored (:meth:`store_clean`, :meth:`store_cell`),
    each cell's, computed or reused, are read back from the store (:meth:`clean`,
    :meth:`cell`), and :meth:`write` puts them into ``examples.npz``."""

    def __init__(self, cells: CellStore, defense: str, seed: int) -> None:
        self.store = ExampleStore(cells.db)
        self.defense, self.seed = defense, seed
        self.clean_arrays: dict[str, np.ndarray] | None = None
        #: (attack label, norm, ε) → the stored arrays of each of its parts
        self.parts: dict[tuple[str, str, float], list[dict[str, np.ndarray]]] = {}

    def store_clean(
        self, key: str, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, created: str
    ) -> None:
        """Keep the watched examples of a computed clean cell: images, labels, predictions."""
        clean = _numpy(x)
        arrays = {
            "pos": np.arange(len(clean), dtype=np.int16),
            "x": encode_images(clean),
            "y": _numpy(y).astype(np.int64),
            "pred": _numpy(pred).astype(np.int64),
        }
        self.store.put(key, arrays, created)

    def store_cell(
        self, key: str, norm: str, out: AttackOutcome, x: torch.Tensor, created: str
    ) -> None:
        """Keep the watched examples of a computed attack cell (``out.examples``; ``x``: the
        evaluation set, whose images are the clean ones)."""
        if out.examples is None:
            return
        pos, x_adv, pred = out.examples
        order = pos.argsort()
        pos, x_adv, pred = pos[order], x_adv[order], pred[order]
        clean, adv = _numpy(x[pos]), _numpy(x_adv)
        arrays = {
            "pos": _numpy(pos).astype(np.int16),
            "x": encode_images(adv, clean),
            "pred": _numpy(pred).astype(np.int64),
            "dist": perturbation_norm(adv, clean, norm),
        }
        self.store.put(key, arrays, created)

    def clean(self, key: str) -> None:
        """The clean cell ``key`` (computed or reused): its watched examples, if stored."""
        self.clean_arrays = self.store.get(key)

    def cell(self, where: tuple[str, str, float], key: str) -> None:
        """A part of the cell of attack ``where`` = (label, norm, ε), stored under ``key``."""
        found = self.store.get(key)
        if found is not None:
            self.parts.setdefault(where, []).append(found)

    def write(self, folder: Path, model_key: str) -> str:
        """Replace this model's entries of ``folder/examples.npz`` with its kept examples
        (nothing is written when its clean cell kept none). Returns why the file could not be
        written ("" when it was, or there was nothing to write): never raises for that."""
        if self.clean_arrays is None:
            return ""
        try:
            self._write(folder, model_key)
        except OSError as exc:
            return f"{folder / FILENAME}: {exc.strerror or exc}"
        return ""

    def _write(self, folder: Path, model_key: str) -> None:
        assert self.clean_arrays is not None
        arrays = _read_arrays(folder / FILENAME)
        mine = json.dumps([self.defense, int(self.seed)])[:-1]
        arrays = {k: v for k, v in arrays.items() if not k.startswith(mine + ",")}
        arrays["format"] = np.array([FORMAT])
        where = (self.defense, self.seed)
        for name, value in self.clean_arrays.items():
            arrays[_key(*where, "clean", "", 0.0, name)] = value
        arrays[_key(*where, "clean", "", 0.0, "model_key")] = np.array(model_key)
        for (attack, norm, eps), parts in self.parts.items():
            for name, value in _join(parts).items():
                arrays[_key(*where, attack, norm, eps, name)] = value
        atomic_write(folder / FILENAME, _pack(arrays))


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts of one cell (its main part, its part on the clean-misclassified examples)
    as one record ordered by position; a part that kept nothing adds nothing (its empty
    image array may have another dtype)."""
    names = ("pos", "x", "pred", "dist")
    usable = [p for p in parts if all(n in p for n in names)]
    if not usable:
        return {}
    kept = [p for p in usable if len(p["pos"])] or usable[:1]
    joined = {n: np.concatenate([p[n] for p in kept]) for n in names}
    order = np.argsort(joined["pos"], kind="stable")
    return {n: v[order] for n, v in joined.items()}


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``examples.npz`` of this format ({} if none, or unreadable)."""
    if not path.is_file():
        return {}
    arrays = _unpack(path.read_bytes())
    if not arrays or int(arrays.get("format", np.array([0]))[0]) != FORMAT:
        return {}
    return arrays


def read_examples(folder: str | Path) -> dict[tuple[str, int], ModelExamples]:
    """The kept examples of a run folder (or of an ``examples.npz``), by (defense, training
    seed); {} when there are none. An entry whose ``model_key`` differs from the results'
    row of that defense and seed is from another run of the folder."""
    path = Path(folder)
    if path.is_dir():
        path = path / FILENAME
    arrays = _read_arrays(path)
    grouped: dict[tuple[str, int], dict[tuple[str, str, float], dict[str, np.ndarray]]] = {}
    for name, value in arrays.items():
        if name == "format":
            continue
        defense, seed, attack, norm, eps, part = json.loads(name)
        cell = grouped.setdefault((defense, int(seed)), {}).setdefault((attack, norm, eps), {})
        cell[part] = value
    out: dict[tuple[str, int], ModelExamples] = {}
    for (defense, seed), cells in grouped.items():
        clean = cells.pop(("clean", "", 0.0), None)
        if clean is None or not {"x", "y", "pred", "model_key"} <= set(clean):
            continue
        model = ModelExamples(
            defense,
            seed,
            str(clean["model_key"]),
            decode_images(clean["x"]),
            clean["y"],
            clean["pred"],
        )
        for (attack, norm, eps), a in cells.items():
            if {"pos", "x", "pred", "dist"} <= set(a):
                kept = CellExamples(
                    a["pos"].astype(np.int64), decode_images(a["x"]), a["pred"], a["dist"]
                )
                model.cells[(attack, norm, float(eps))] = kept
        out[(defense, seed)] = model
    return out
