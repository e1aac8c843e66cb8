"""Trained models as durable, content-addressed artifacts under a run's output folder.

A *training cell* is what determines a trained model: the dataset (name, resolved parameters,
and the SHA-256 of its training split's tensors, by value: the same data read from another
folder or machine is the same cell, other data is not), the model (name, parameters),
the defense (name, parameters, inner attack specs included), the resolved training settings, the
training seed, and the versions of robench, torch and every plugin distribution involved. Its
*key* is the SHA-256 of the canonical JSON of that record (:func:`training_cell`,
:func:`cell_key`). The defense's label, the attacks and the evaluation settings are not part of
it: adding an attack or evaluating on more examples reuses the trained models. Neither is the
device: a model trained on a GPU is a model of the same configuration (the sidecar records where
it was trained).

Layout, under ``<output_dir>/models/``:

- ``<key20>.safetensors``: the trained module's ``state_dict`` (weights only, the safetensors
  library; ``<key20>`` is the first 20 hex digits of the key);
- ``<key20>.json``: the sidecar: the full key, the training cell, the weights file's name, size
  and SHA-256, versions, device, training seconds, per-epoch losses, creation time and robench's
  git commit;
- ``<key20>.resume.pt``: while the model trains, the state after its last finished epoch
  (:mod:`robench.resume`), from which an interrupted training resumes; deleted once the model
  is stored.

Every write is atomic (a temporary file in the same folder, fsync, ``os.replace``), the weights
first and the sidecar last: a model is stored only when its sidecar exists, carries the key and
names a weights file of the recorded size and SHA-256. A run killed between the two writes, a
missing or corrupt weights file, or a sidecar of another key leaves nothing that a later run
reads back (it trains again).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn

from robench import faults
from robench.results import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from robench.config import Benchmark, DefenseUse, PluginUse
    from robench.dataset import DatasetInfo
    from robench.registry import Entry, Registry
    from robench.specs import AttackSpec

#: the store's folder under the output folder
MODELS_DIR = "models"
#: hex digits of the key in file names (80 bits); the sidecar holds all 64 and is checked
SHORT = 20
#: the layout of the training-cell record; changing what a key covers bumps it
CELL_FORMAT = 2


class StoreError(Exception):
    """A stored model that cannot be used (one line saying why)."""


def _plugin(u: PluginUse) -> dict[str, Any]:
    return {"name": u.entry.name, "params": u.params.model_dump(mode="json")}


def inner_attacks(value: Any) -> list[AttackSpec]:
    """The attack specs anywhere inside a plugin's parameters (a defense's inner attack)."""
    from robench.specs import AttackSpec

    if isinstance(value, AttackSpec):
        return [value]
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return [s for v in value.values() for s in inner_attacks(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in inner_attacks(v)]
    return []


def cell_entries(bench: Benchmark, d: DefenseUse, registry: Registry) -> list[Entry]:
    """The plugins a training cell of ``d`` uses: dataset, model, defense, inner attacks."""
    entries = [bench.dataset.entry, (d.model or bench.model).entry, d.entry]
    return entries + [registry.get("attack", s.name) for s in inner_attacks(d.params)]


def training_cell(
    bench: Benchmark,
    d: DefenseUse,
    seed: int,
    info: DatasetInfo,
    registry: Registry,
    train_digest: str,
) -> dict[str, Any]:
    """The record that determines the model ``d`` trains with ``seed``: what its key hashes.
    ``train_digest``: the training split's SHA-256 (:func:`robench.cellkeys.examples_digest`);
    ``info.note`` (which names the folder read) is left out, so that a data root spelt or
    placed differently keeps the keys."""
    import robench

    model = d.model or bench.model
    entries = cell_entries(bench, d, registry)
    return {
        "format": CELL_FORMAT,
        "dataset": {**_plugin(bench.dataset), "train": train_digest},
        "model": _plugin(model),
        "defense": _plugin(d),
        "training": d.training.key_record(),
        "seed": seed,
        "versions": {
            "robench": robench.__version__,
            "torch": torch.__version__,
            "plugins": sorted({f"{e.distribution} {e.version}" for e in entries}),
        },
    }


def canonical_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cell_key(record: dict[str, Any]) -> str:
    """The full key (64 hex digits) of a training-cell record."""
    return hashlib.sha256(canonical_json(record).encode()).hexdigest()


def short(key: str) -> str:
    """The key as file names and the results' ``model_key`` column give it."""
    return key[:SHORT]


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state_dict as contiguous CPU tensors, each with storage of its own
    (safetensors refuses tensors that share memory, e.g. tied weights)."""
    out = {}
    for k, v in module.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise StoreError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


@dataclass(frozen=True)
class Stored:
    """A model found in the store."""

    key: str
    weights: Path
    record: dict[str, Any]

    @property
    def train_seconds(self) -> float:
        return float(self.record.get("train_seconds") or 0.0)

    @property
    def created(self) -> str:
        return str(self.record.get("created", "?"))


class ModelStore:
    """The trained models of an output folder (``<output_dir>/models``)."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / MODELS_DIR

    def paths(self, key: str) -> tuple[Path, Path]:
        """The weights file and the sidecar of ``key``."""
        name = short(key)
        return self.dir / f"{name}.safetensors", self.dir / f"{name}.json"

    def resume_path(self, key: str) -> Path:
        """The per-epoch resume file of ``key``'s training (:mod:`robench.resume`)."""
        return self.dir / f"{short(key)}.resume.pt"

    def lookup(self, key: str) -> tuple[Stored | None, str]:
        """The stored model of ``key``, or None with why a sidecar found is not usable ("" when
        there is none: nothing stored)."""
        weights, sidecar = self.paths(key)
        if not sidecar.is_file():
            return None, ""  # never stored, or killed before its sidecar was written
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            return None, f"its sidecar {sidecar.name} is unreadable ({type(exc).__name__})"
        if not isinstance(record, dict) or record.get("key") != key:
            return None, f"its sidecar {sidecar.name} is of another training cell"
        if record.get("weights") != weights.name:
            return None, f"its sidecar {sidecar.name} does not name {weights.name}"
        if not weights.is_file():
            return None, f"its weights file {weights.name} is missing"
        return Stored(key, weights, record), ""

    def load(self, stored: Stored) -> dict[str, torch.Tensor]:
        """The stored weights, checked against the sidecar's size and SHA-256."""
        from safetensors.torch import load

        try:
            data = stored.weights.read_bytes()
        except OSError as exc:
            raise StoreError(f"{stored.weights.name} is unreadable: {exc.strerror}") from None
        if len(data) != stored.record.get("bytes") or (
            hashlib.sha256(data).hexdigest() != stored.record.get("sha256")
        ):
            raise StoreError(
                f"{stored.weights.name} is corrupt (its size or SHA-256 differs from the sidecar's)"
            )
        try:
            return dict(load(data))
        except Exception as exc:
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(f"{stored.weights.name} is not loadable: {line}") from None

    def save(self, key: str, weights: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
        """Store ``weights`` under ``key``: the weights file, then the sidecar (``record`` plus
        the key and the weights file's name, size and SHA-256). Returns the sidecar."""
        from safetensors.torch import save

        weights_path, sidecar = self.paths(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        sidecar.unlink(missing_ok=True)  # a model being replaced is not stored meanwhile
        data = save(weights)
        atomic_write(weights_path, data)
        faults.point("model-write")  # a test's kill between the weights and the sidecar
        full = {
            "key": key,
            "weights": weights_path.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **record,
        }
        text = json.dumps(full, indent=2, default=str) + "\n"
        atomic_write(sidecar, text.encode())
        return sidecar
