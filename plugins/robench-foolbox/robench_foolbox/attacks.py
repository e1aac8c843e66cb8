"""The generated attack classes, one per adaptable Foolbox attack, as attributes of this module.

``ATTACKS`` maps robench names (``foolbox.LinfPGD``) to classes; each class is also reachable
here under its Python name (``foolbox_LinfPGD``), so that it pickles like a written class.
"""

from __future__ import annotations

from robench_foolbox.adapter import FoolboxAttack, make_attack
from robench_foolbox.catalog import specs

#: robench name → generated attack class, sorted by name
ATTACKS: dict[str, type[FoolboxAttack]] = {}

for _spec in specs():
    _cls = make_attack(_spec)
    ATTACKS[_cls.name] = _cls
    globals()[_cls.__qualname__] = _cls
del _spec, _cls

__all__ = ["ATTACKS"]
