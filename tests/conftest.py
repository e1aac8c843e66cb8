"""Shared fixtures: the offline data root and small helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The tests' own catalogue cache (robench.catalogue), never the user's ~/.cache/robench: its
# subprocesses inherit it. A test that needs a fresh one sets its own.
os.environ["ROBENCH_CATALOGUE"] = os.path.join(
    tempfile.mkdtemp(prefix="robench-tests-"), "catalogue.json"
)


def _data_root() -> Path:
    env = os.environ.get("ROBENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root holding real MNIST and the CIFAR-10 pieces (../shared/data here)."""
    root = _data_root()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"no offline data under {root} (set ROBENCH_DATA)")
    return root


@pytest.fixture(autouse=True)
def _bf16_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    # robench runs precision "bf16" in fp32 on devices without native bfloat16 (emulated bf16
    # is slower); the tests exercise the bf16 code paths on any CPU, where autocast emulates
    # it. A test of the fallback itself sets bf16_native back.
    from robench import precision

    monkeypatch.setattr(precision, "bf16_native", lambda device: True)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Datasets read the offline data root unless a test says otherwise.
    monkeypatch.setenv("ROBENCH_DATA", str(_data_root()))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
