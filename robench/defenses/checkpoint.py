"""A model trained elsewhere: its weights from a file, scored like any trained defense.

``[[defenses]] name = "checkpoint"``, ``path = "model.safetensors"`` (relative to the benchmark
file) loads the weights into the benchmark's ``[model]`` (or the defense's own ``model``) and
trains nothing. Two formats:

- ``.safetensors`` (the safetensors library): tensors only, by construction;
- anything else is read with ``torch.load(weights_only=True)``: a ``state_dict``, or a dict
  holding one under ``key`` (found by itself under ``state_dict``, ``model_state_dict``,
  ``model`` or ``net``). PyTorch's restricted unpickler refuses any object that is not a tensor
  or a plain container, so a file that carries code is refused, never run.

A ``module.`` prefix on every key (``nn.DataParallel``) is dropped. Keys that do not match the
model, or shapes that differ, are one line naming the first of them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from robench.dataset import Data
from robench.defense import Defense, TrainContext
from robench.defenses.bases import WRAPPER_KEYS, CheckpointBase
from robench.errors import ConfigError, error_line

#: keys named in a one-line error at most
SHOWN = 3


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def read_weights(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, by name, on the CPU; :class:`ConfigError` (one line)
    for a file that cannot be read as weights."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"checkpoint {path} refused: torch.load(weights_only=True) reads tensors only, and "
            f"this file holds something else ({error_line(err)})"
        ) from None
    except Exception as err:  # corrupt, truncated, not a checkpoint at all
        raise ConfigError(
            f"checkpoint {path} is not loadable: {error_line(err)}; expected a .safetensors "
            "file or a PyTorch state_dict saved with torch.save"
        ) from None
    return _state_dict(obj, path, key)


def _state_dict(obj: object, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise ConfigError(f"checkpoint {path} has no key {key!r} (it holds: {found})")
        obj = obj[key]
    elif isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if wrapped:
            obj = obj[wrapped[0]]
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(
            f"checkpoint {path} holds no state_dict (a dict of tensors by name); "
            'set key = "..." if it is stored under a key'
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        odd = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise ConfigError(
            f"checkpoint {path}: not every entry is a tensor ({_listing(odd)}); "
            'set key = "..." to the entry that holds the state_dict'
        )
    if all(k.startswith("module.") for k in tensors):  # saved from nn.DataParallel
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``weights`` into ``model`` exactly (every key, every shape), or raise one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        raise ConfigError(
            f"checkpoint {path} does not fit the model: {'; '.join(parts)} "
            f"({len(weights)} tensors in the file, {len(expected)} in the model)"
        )
    for k, t in expected.items():
        if weights[k].shape != t.shape:
            raise ConfigError(
                f"checkpoint {path} does not fit the model: {k} has shape "
                f"{tuple(weights[k].shape)} in the file, {tuple(t.shape)} in the model"
            )
    model.load_state_dict(weights, strict=True)


class Checkpoint(CheckpointBase, Defense):
    """A model trained elsewhere: weights from a .safetensors or PyTorch state_dict file."""

    example_params = {"path": "model.safetensors"}  # noqa: RUF012

    params: CheckpointBase.Params

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        path = self.params.path
        if not path.is_file():
            raise ConfigError(f"checkpoint file not found: {path}")
        load_weights(model, read_weights(path, self.params.key), path)
        return model.to(ctx.device).eval()
