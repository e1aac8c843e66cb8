"""robench-torchattacks: torchattacks' L∞ and L2 attacks as robench attacks, named
``torchattacks.<ClassName>``.

A third-party plugin: it imports nothing from robench but :mod:`robench.api` (and its tests
:mod:`robench.testing`), and registers through the ``robench`` entry-point group. Registering
imports neither torchattacks nor anything heavy (the catalogue is written out, and checked
against the installed torchattacks by the tests); torchattacks loads when an attack first runs.

- :data:`ATTACKS`: robench name → attack class; ε-bounded attacks get ε (and the norm) from
  the benchmark, minimisation attacks (CW, DeepFool, EADEN) run once per defense and are
  scored at every ε by projection;
- :data:`EXCLUDED`: torchattacks' classes left out, with the reason for each (registered as
  exclusions: a benchmark asking for one gets the reason, ``robench list --excluded`` shows
  them).
"""

from __future__ import annotations

from robench.api import hookimpl
from robench_torchattacks.adapter import TorchattacksAttack
from robench_torchattacks.attacks import ATTACKS
from robench_torchattacks.catalogue import EXCLUDED, SPECS

__version__ = "0.1.0"


@hookimpl
def robench_register_attacks(register):
    for cls in ATTACKS.values():
        register(cls)


@hookimpl
def robench_register_exclusions(exclude):
    """torchattacks' attacks left out, with the reason: ``torchattacks.JSMA`` answers why."""
    for name, reason in EXCLUDED.items():
        exclude("attack", f"torchattacks.{name}", reason)


__all__ = [
    "ATTACKS",
    "EXCLUDED",
    "SPECS",
    "TorchattacksAttack",
    "robench_register_attacks",
    "robench_register_exclusions",
]
