"""What produced a result: library versions, device, git commit, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

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


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
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
