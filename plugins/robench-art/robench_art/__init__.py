"""robench-art: the Adversarial Robustness Toolbox's attacks and defences as robench plugins.

- ``art.<ClassName>`` attacks: every ART evasion attack that applies to a PyTorch image
  classifier under an L∞ or L2 threat model (:mod:`robench_art.attacks`); budgeted attacks get
  ε and the norm from robench's threat model, minimisation attacks (Carlini-Wagner, DeepFool,
  decision-based attacks) run once and are scored at every ε by projection.
- ``art.<ClassName>`` defenses: ART's image preprocessing defences (JPEG compression, feature
  squeezing, spatial smoothing), trained through, with their true input gradient or ART's BPDA
  estimate (:mod:`robench_art.defenses`).

The ART classes not adapted, and why: :data:`EXCLUDED` (attacks) and :data:`EXCLUDED_DEFENCES`.
Registered through the ``robench`` entry-point group (``art = "robench_art"``); ART is imported
when the registry is built, not when this module is.
"""

from __future__ import annotations

import robench
from robench_art.catalogue import BUDGETED, DEFENCES, EXCLUDED, EXCLUDED_DEFENCES, MINIMISING

__version__ = "0.1.0"
__all__ = ["BUDGETED", "DEFENCES", "EXCLUDED", "EXCLUDED_DEFENCES", "MINIMISING"]


@robench.hookimpl
def robench_register_attacks(register):
    from robench_art.attacks import attack_classes

    for cls in attack_classes():
        register(cls)


@robench.hookimpl
def robench_register_exclusions(exclude):
    """The ART classes left out, with the reason: ``art.PixelAttack`` answers why."""
    for name, reason in EXCLUDED.items():
        exclude("attack", f"art.{name}", reason)
    for name, reason in EXCLUDED_DEFENCES.items():
        exclude("defense", f"art.{name}", reason)


@robench.hookimpl
def robench_register_defenses(register):
    from robench_art.defenses import defense_classes

    for cls in defense_classes():
        register(cls)
