"""robench-foolbox: Foolbox 3's L∞ and L2 attacks as robench attacks, named ``foolbox.<Name>``.

Registered through the ``robench`` entry-point group like any third-party plugin. One robench
attack class is generated per attack exported by :mod:`foolbox.attacks` (aliases included) that
works in an L∞ or L2 threat model; :data:`EXCLUDED` says why each other one is left out and
:data:`SKIPPED` lists unknown Foolbox attacks that could not be adapted automatically.
"""

from __future__ import annotations

import robench
from robench_foolbox import _foolbox  # noqa: F401  (first: loads Foolbox quietly)
from robench_foolbox.adapter import FoolboxAttack
from robench_foolbox.attacks import ATTACKS
from robench_foolbox.catalog import EXCLUDED, SKIPPED

__version__ = "0.1.0"


@robench.hookimpl
def robench_register_attacks(register):
    for cls in ATTACKS.values():
        register(cls)


@robench.hookimpl
def robench_register_exclusions(exclude):
    """The Foolbox attacks left out, with the reason: ``foolbox.EADAttack`` answers why."""
    for name, reason in {**EXCLUDED, **SKIPPED}.items():
        exclude("attack", f"foolbox.{name}", reason)


__all__ = [
    "ATTACKS",
    "EXCLUDED",
    "SKIPPED",
    "FoolboxAttack",
    "robench_register_attacks",
    "robench_register_exclusions",
]
