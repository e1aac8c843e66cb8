"""RobustBench's model zoo: its names, its checkpoint files, and loading them as tensors only.

The loading mirrors ``robustbench.utils.load_model`` of RobustBench 1.1.1 (the same
architectures from ``robustbench.model_zoo.model_dicts``, the same files
``<model_dir>/<dataset>/<threat_model>/<name>.pt`` and ``<name>.pt_m<i>.pt`` for ensembles,
the same key fixes and lenient loading), with one difference: checkpoints are read with
``torch.load(weights_only=True)``, so a file that carries code is refused, never run.

robustbench is imported on first use (it takes seconds: timm and ~40 architecture modules),
not when robench loads the plugin.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import pickle
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from robench.errors import ConfigError, error_line

DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = ("Linf", "L2", "corruptions")
#: RobustBench's input shape and number of classes per dataset
SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
#: the attribute a module built by the ``robustbench`` model carries: ``(dataset, threat, name)``
#: when it holds RobustBench's weights
WEIGHTS_ATTR = "robustbench_weights"

# RobustBench 1.1.1 load_model: models whose checkpoint holds the weights under "last"
_LAST = ("Kireev2021Effectiveness", "Andriushchenko2020Understanding")
# ... ImageNet Swin models whose checkpoints need timm's filter for newer timm versions
_SWIN_FILTER = (
    "Liu2023Comprehensive_Swin-B",
    "Liu2023Comprehensive_Swin-L",
    "Mo2022When_Swin-B",
    "RodriguezMunoz2024Characterizing_Swin-B",
    "RodriguezMunoz2024Characterizing_Swin-L",
)
# ... ImageNet models whose architecture has no "model." wrapper around the network
_NO_MODEL_PREFIX = (
    "Singh2023Revisiting_ConvNeXt-T-ConvStem",
    "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem",
    "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem",
    "Peng2023Robust",
    "Chen2024Data_WRN_50_2",
    "Xu2024MIMIR_Swin-B",
    "Xu2024MIMIR_Swin-L",
)
# ... composite models whose several checkpoints load into bespoke places
_COMPOSITE = ("Bai2023Improving", "Bai2024MixedNUTS")
#: characters of a load error kept in a one-line message
_MAX = 300


@functools.cache
def robustbench() -> SimpleNamespace:
    """RobustBench's ``model_dicts``, ``BenchmarkDataset``, ``ThreatModel`` and ``utils``."""
    with warnings.catch_warnings():
        # timm and geotorch, imported by the zoo, warn about deprecated torch APIs
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import robustbench  # noqa: F401
        except ImportError:
            # robustbench 1.1.1's __init__ imports its data loaders (pkg_resources, which
            # setuptools ≥ 81 no longer has) and its AutoAttack evaluation (module `autoattack`,
            # which PyPI's pyautoattack does not provide). The model zoo needs neither: register
            # the package without running its __init__, then import the zoo's own modules.
            spec = importlib.util.find_spec("robustbench")
            if spec is None or spec.submodule_search_locations is None:
                raise
            sys.modules["robustbench"] = importlib.util.module_from_spec(spec)
        utils = importlib.import_module("robustbench.utils")
        zoo = importlib.import_module("robustbench.model_zoo")
        enums = importlib.import_module("robustbench.model_zoo.enums")
    return SimpleNamespace(
        model_dicts=zoo.model_dicts,
        BenchmarkDataset=enums.BenchmarkDataset,
        ThreatModel=enums.ThreatModel,
        utils=utils,
    )


def _models(dataset: str, threat_model: str) -> dict[str, dict[str, Any]]:
    rb = robustbench()
    by_threat = rb.model_dicts.get(rb.BenchmarkDataset(dataset), {})
    return by_threat.get(rb.ThreatModel(threat_model), {})


def zoo_names(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """The names of RobustBench's zoo for ``dataset`` and ``threat_model``, sorted."""
    return sorted(_models(dataset, threat_model))


def _timm_name(name: str, dataset: str, threat_model: str) -> str:
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"


def unsupported(name: str, dataset: str, threat_model: str) -> str | None:
    """Why robench-robustbench cannot load this zoo model, or None when it can."""
    import timm

    entry = _models(dataset, threat_model)[name]
    if timm.is_model(_timm_name(name, dataset, threat_model)):
        return "its weights come through timm from the Hugging Face Hub, not as a checkpoint file"
    if entry.get("gdrive_id") is None:
        return "RobustBench lists no checkpoint for it"
    if isinstance(entry["gdrive_id"], list) and name.startswith(_COMPOSITE):
        return "it is a composite of several checkpoints that load into bespoke places"
    return None


def check_name(name: str, dataset: str, threat_model: str) -> None:
    """A one-line :class:`ValueError` for a name this plugin cannot load."""
    known = zoo_names(dataset, threat_model)
    if name not in known:
        from robench.registry import did_you_mean

        elsewhere = [
            f"{d} {t}"
            for d in DATASETS
            for t in THREAT_MODELS
            if (d, t) != (dataset, threat_model) and name in _models(d, t)
        ]
        hint = (
            f"; it is a {' and a '.join(elsewhere)} model: set dataset and threat_model"
            if elsewhere
            else did_you_mean(name, known)
        )
        raise ValueError(
            f"unknown RobustBench {dataset} {threat_model} model {name!r}{hint} ({len(known)} "
            f"models: robench_robustbench.zoo_names({dataset!r}, {threat_model!r}))"
        )
    reason = unsupported(name, dataset, threat_model)
    if reason is not None:
        raise ValueError(
            f"RobustBench {dataset} {threat_model} model {name!r} is not supported by "
            f"robench-robustbench: {reason}"
        )


def checkpoint_paths(name: str, dataset: str, threat_model: str, model_dir: Path) -> list[Path]:
    """Where RobustBench keeps this model's checkpoint(s) under ``model_dir`` (none for an
    ImageNet ``Standard`` model: torchvision's weights come with its architecture)."""
    if dataset == "imagenet" and "Standard" in name:
        return []
    path = model_dir / dataset / threat_model / f"{name}.pt"
    ids = _models(dataset, threat_model)[name]["gdrive_id"]
    if isinstance(ids, list):
        return [path.with_name(f"{path.name}_m{i}.pt") for i in range(len(ids))]
    return [path]


def download(name: str, dataset: str, threat_model: str, paths: list[Path]) -> None:
    """Fetch the missing checkpoint files with RobustBench's own downloader (gdown)."""
    ids = _models(dataset, threat_model)[name]["gdrive_id"]
    ids = ids if isinstance(ids, list) else [ids]
    for gdrive_id, path in zip(ids, paths, strict=True):
        if path.is_file():
            continue
        partial = path.with_name(path.name + ".download")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.redirect_stdout(sys.stderr):  # its notes: not on robench's stdout
                robustbench().utils.download_gdrive_new(gdrive_id, partial)
            if not partial.is_file():
                raise OSError("the downloader wrote no file")
            os.replace(partial, path)
        except Exception as err:
            partial.unlink(missing_ok=True)
            raise ConfigError(
                f"could not download RobustBench model {name!r} (Google Drive id {gdrive_id}) "
                f"to {path}: {error_line(err)}; put the file there by hand, or check the "
                "connection"
            ) from None


def read_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; one-line :class:`ConfigError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"checkpoint {path} refused: torch.load(weights_only=True) reads tensors only, and "
            f"this file holds something else ({error_line(err)})"
        ) from None
    except Exception as err:  # corrupt, truncated, an HTML page instead of a checkpoint
        raise ConfigError(
            f"checkpoint {path} is not loadable: {error_line(err)}; delete it to download it again"
        ) from None


def _state_dict(checkpoint: Any, key: str | None, path: Path) -> Any:
    if key is None:
        return checkpoint
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        found = ", ".join(map(str, checkpoint)) if isinstance(checkpoint, dict) else "no dict"
        raise ConfigError(f"checkpoint {path} has no key {key!r} (it holds: {found})")
    return checkpoint[key]


def _unwrap(checkpoint: Any, path: Path) -> dict[str, Any]:
    """The state_dict: the checkpoint's ``state_dict`` entry if it has one, else itself."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"checkpoint {path} holds no state_dict (a dict of tensors by name), but a "
            f"{type(checkpoint).__name__}"
        )
    return checkpoint


def _safe_load(model: nn.Module, name: str, state_dict: Any, dataset: str, path: Path):
    rb = robustbench()
    try:
        safe = getattr(rb.utils, "_safe_load_state_dict", None)
        if safe is None:  # a RobustBench without its lenient loader: load strictly
            model.load_state_dict(state_dict, strict=True)
            return model
        return safe(model, name, state_dict, rb.BenchmarkDataset(dataset))
    except Exception as err:
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        text = text if len(text) <= _MAX else text[: _MAX - 1] + "…"
        raise ConfigError(
            f"checkpoint {path} does not fit RobustBench model {name!r}: "
            f"{type(err).__name__}: {text}"
        ) from None


def load_weights(model: nn.Module, name: str, dataset: str, threat_model: str, paths: list[Path]):
    """Load the checkpoint files into ``model`` (built by the zoo) as RobustBench does."""
    utils = robustbench().utils
    rm = utils.rm_substr_from_state_dict
    if not paths:  # an ImageNet Standard model: torchvision's weights, already loaded
        return model
    if len(paths) == 1:  # one checkpoint
        (path,) = paths
        checkpoint = read_checkpoint(path)
        if name.startswith(_LAST[0]) or name == _LAST[1]:
            checkpoint = _state_dict(checkpoint, "last", path)
        state_dict = rm(rm(_unwrap(checkpoint, path), "module."), "model.")
        if dataset == "imagenet":
            if name in _SWIN_FILTER:
                try:
                    from timm.models.swin_transformer import checkpoint_filter_fn

                    state_dict = checkpoint_filter_fn(state_dict, model.model)
                except Exception:  # as RobustBench: keep the keys as they are
                    pass
            if name not in _NO_MODEL_PREFIX:
                state_dict = utils.add_substr_to_state_dict(state_dict, "model.")
        return _safe_load(model, name, state_dict, dataset, path)
    for i, path in enumerate(paths):  # an ensemble: one checkpoint per member
        checkpoint = read_checkpoint(path)
        state_dict = rm(_unwrap(checkpoint, path), "module.")
        model.models[i] = _safe_load(model.models[i], name, state_dict, dataset, path).eval()
    return model


def build(name: str, dataset: str, threat_model: str) -> nn.Module:
    """The zoo's architecture for ``name``, freshly initialised (on the CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _models(dataset, threat_model)[name]["model"]()
