"""Madry et al. (2018) PGD adversarial training with its usual settings."""

from __future__ import annotations

from typing import Any

from robench.defenses._preset import AdversarialPreset
from robench.defenses.bases import PGDATBase
from robench.specs import AttackSpec


class PGDAT(PGDATBase, AdversarialPreset):
    """PGD-AT (Madry et al. 2018): PGD-k from a random start, step 2.5·ε/k unless given.

    Each batch is attacked with ``steps`` projected gradient steps from a uniform random point
    of the ε-ball, and the model trains on those examples only. The step is ``step_size``
    (absolute) or ``rel_step``·ε, by default 2.5·ε/steps (Madry's rule: enough to cross the
    ball from any start; 2/255 for PGD-10 at 8/255)::

        [[defenses]]
        name = "pgd-at"
        eps = "8/255"
        steps = 10

    The same as ``adversarial`` with ``attack = { name = "pgd", eps = …, steps = 10 }``.
    """

    params: PGDATBase.Params

    def attack_spec(self) -> AttackSpec:
        p = self.params
        spec: dict[str, Any] = {"name": "pgd", "norm": p.norm, "eps": p.eps, "steps": p.steps}
        spec["random_start"] = True
        if p.step_size is not None:
            spec["step_size"] = p.step_size
        if p.rel_step is not None:
            spec["rel_step"] = p.rel_step
        return AttackSpec.model_validate(spec)
