"""What produced a result: library versions, device, git commit, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from robench.config import AttackUse, Benchmark
    from robench.dataset import DatasetInfo
    from robench.registry import Registry

#: Distributions whose versions are recorded with every result when installed.
LIBRARIES = (
    "robench",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pydantic",
    "pluggy",
    "scikit-learn",
    "safetensors",
    "adversarial-robustness-toolbox",
    "foolbox",
)


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}  # with its build tag
    for name in (*LIBRARIES, *extra):
        if name in out:
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def versions_line(names: tuple[str, ...]) -> str:
    """``"robench 0.1.0; torch 2.14.1+cu130; ..."``: the versions of ``names`` installed here
    (a column of the benchmark scripts' CSVs)."""
    found = versions(names)
    return "; ".join(f"{k} {found[k]}" for k in names if k in found)


def device_label(device: torch.device) -> str:
    """``"NVIDIA H200 (cuda, 16 threads)"`` or ``"x86_64 (cpu, 1 threads)"``: the device a
    benchmark script measured on, for its CSV's ``device`` column and its printout."""
    dev = device_info(device)
    return f"{dev.get('gpu', dev['cpu'])} ({device}, {dev['torch_threads']} threads)"


def write_measurements(df: Any, output: Path, device: torch.device, names: tuple[str, ...]) -> None:
    """A benchmark script's table, with its ``device`` and ``versions`` columns, to ``output``
    (a CSV; folders made as needed); says where."""
    df["device"], df["versions"] = device_label(device), versions_line(names)
    output.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(output, index=False)
    print(f"written to {output}")


def device_info(device: torch.device) -> dict[str, Any]:
    """The device, and what CPU numbers depend on: float reductions (convolutions, matrix
    products, sums) are split across threads, so the thread count changes results slightly."""
    import os

    info: dict[str, Any] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ROBENCH_CPU_CHUNK_MB")
            if k in os.environ
        },
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
    info["cpu"] = platform.processor() or platform.machine()
    info["platform"] = platform.platform()
    return info


def git_state(where: Path) -> dict[str, Any]:
    """The commit of the git checkout holding ``where`` and whether it has local changes."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line() -> list[str]:
    return list(sys.argv)


def run_record(
    bench: Benchmark,
    registry: Registry,
    info: DatasetInfo,
    data_root: Path,
    device: torch.device,
    n_train: int,
    n_eval: int,
    extra_attacks: list[AttackUse],
) -> dict[str, Any]:
    """The provenance of a benchmark run, written beside its results: resolved config, seeds,
    dataset, the plugins used (``extra_attacks``: those the runner adds, e.g. sanity attacks)
    with their distributions and versions, device and git state."""
    from robench.specs import AttackSpec

    used = [bench.dataset.entry, bench.model.entry]
    for d in bench.defenses:
        used += [d.entry, (d.model or bench.model).entry]
        used += [
            registry.get("attack", v.name)
            for v in d.params.__dict__.values()
            if isinstance(v, AttackSpec)
        ]
    used += [a.entry for a in (*bench.attacks, *extra_attacks)]
    where = bench.source.resolve().parent if bench.source else Path.cwd()
    return {
        "benchmark": bench.name,
        "status": "running",
        "started": now(),
        "command": command_line(),
        "config_file": str(bench.source) if bench.source else None,
        "overrides": list(bench.overrides),
        "only": {table: list(labels) for table, labels in bench.only.items()},
        "config": bench.resolved(),
        "seeds": {
            "benchmark": bench.seed,
            "training": {d.label: list(d.seeds) for d in bench.defenses},
            "eval_subset": bench.seed,
            "cells": "per row (column 'seed'), derived from the row's training seed "
            "(column 'train_seed') and the cell's defense, attack, norm and ε",
        },
        "dataset": {
            "name": info.name,
            "note": info.note,
            "data_root": str(data_root),
            "train_examples": n_train,
            "eval_examples": n_eval,
        },
        "versions": versions(tuple(sorted({e.distribution for e in used}))),
        "plugins": [
            {
                "kind": e.kind,
                "name": e.name,
                "plugin": e.plugin,
                "distribution": e.distribution,
                "version": e.version,
            }
            for e in dict.fromkeys(used)
        ],
        "device": device_info(device),
        "git": git_state(where),
    }
