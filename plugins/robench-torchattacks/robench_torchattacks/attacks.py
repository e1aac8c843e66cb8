"""The generated attack classes, one per catalogue entry, as attributes of this module.

``ATTACKS`` maps robench names (``torchattacks.PGD``) to classes; each class is also reachable
here under its Python name (``torchattacks_PGD``), so that it pickles like a written class.
Building them imports neither torchattacks nor anything the adapter does not already need.
"""

from __future__ import annotations

from robench_torchattacks.adapter import TorchattacksAttack, make_attack
from robench_torchattacks.catalogue import SPECS

#: robench name → generated attack class, in catalogue order
ATTACKS: dict[str, type[TorchattacksAttack]] = {}

for _spec in SPECS:
    _cls = make_attack(_spec)
    ATTACKS[_cls.name] = _cls
    globals()[_cls.__qualname__] = _cls
del _spec, _cls

__all__ = ["ATTACKS"]
