"""Workarounds for limitations of ART's attacks, each used by one catalogue entry.

Each keeps ART's algorithm as it is; they only make an attack usable from robench (quiet, no
stray files, NumPy 2, whole batches).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np


def zoo_batch(kwargs: dict[str, Any]) -> None:
    # ART's ZOO without resizing fails on batches of more than one example (IndexError in
    # its Adam state); with resizing (ART's default) whole batches work
    if not kwargs.get("use_resize", True):
        kwargs["batch_size"] = 1


def quiet_sub_attacks(attack: Any) -> None:
    # ART's AutoAttack builds its standard attacks with verbose=True (progress bars)
    for sub in getattr(attack, "attacks", []):
        if hasattr(sub, "verbose"):
            sub.verbose = False


def quiet_attacker(kwargs: dict[str, Any]) -> None:
    # UniversalPerturbation builds its inner attack (DeepFool by default) with ART's defaults,
    # verbose=True (a progress bar per call): pass verbose=False where the attack takes it
    from art.attacks.evasion import UniversalPerturbation

    path = UniversalPerturbation.attacks_dict.get(kwargs.get("attacker"))
    if path is None:  # ART reports the unknown attacker
        return
    module, _, name = path.rpartition(".")
    if "verbose" in getattr(importlib.import_module(module), name).attack_params:
        kwargs["attacker_params"] = {"verbose": False, **(kwargs.get("attacker_params") or {})}


@functools.cache
def _scratch_dir() -> str:
    path = tempfile.mkdtemp(prefix="robench-art-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@contextlib.contextmanager
def geoda_workarounds() -> Iterator[None]:
    # ART 1.20's GeoDA (1) builds its DCT basis with np.mat, removed in NumPy 2.0 (np.asmatrix
    # is the same function under its other name), and (2) caches that basis as
    # "2d_dct_basis_*.npy" in the current directory: run it in a scratch directory instead
    added = not hasattr(np, "mat")
    if added:
        np.mat = np.asmatrix
    cwd = os.getcwd()
    os.chdir(_scratch_dir())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "the matrix subclass", PendingDeprecationWarning)
            yield
    finally:
        os.chdir(cwd)
        if added:
            del np.mat
