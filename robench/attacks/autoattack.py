"""AutoAttack (Croce & Hein, ICML 2020): the ensemble robustness papers and RobustBench report."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import torch
from torch import nn

from robench import chunks, precision
from robench.attack import Attack
from robench.attacks.bases import AutoAttackBase, chosen_components


class AutoAttack(AutoAttackBase, Attack):
    """AutoAttack: APGD-CE, APGD-T, FAB-T and Square, each on what the earlier left robust.

    The parameter-free ensemble of Croce & Hein (ICML 2020), built from robench's native
    attacks, as the paper defines it:

    - ``version = "standard"``: APGD-CE (``steps`` = 100 iterations, no restarts), then APGD-T
      (targeted DLR loss towards each of the ``n_target_classes`` = 9 highest-scoring other
      classes, ``steps`` iterations each), then FAB-T (targeted, the same targets, ``steps``
      iterations each), then Square (``n_queries`` = 5000);
    - ``version = "rand"``, for randomised defenses: APGD-CE and APGD-DLR, each averaging its
      gradient over ``eot_iter`` = 20 draws of the model (expectation over transformation).

    Each component runs only on the examples every earlier one left robust (those the model
    misclassifies without attack are not attacked: they count as not robust), and an example
    keeps the first adversarial point found, so the result is the per-example worst case over
    the components. ``components`` runs a subset of the version's (in the version's order),
    e.g. ``["apgd-ce", "apgd-t"]``, the cheaper configuration the quickstart uses; the paper's
    number is the full ensemble's. :meth:`fooled_by` counts the examples each component fooled
    (the results table's ``fooled_by`` column). Every "fooled" decision is the model's own, in
    full precision, after projecting into the ε-ball: FAB-T, a minimisation attack, may return
    points outside it, which only count if their projection still fools the model.

    A note for comparisons: torchattacks' ``AutoAttack(version="standard")`` runs its
    components with their defaults of 10 iterations, not the paper's 100; ``steps = 10`` here
    reproduces that configuration.
    """

    gradient_free_components = ("square",)
    example_params: ClassVar[dict[str, Any]] = {"steps": 5, "n_queries": 20, "n_target_classes": 2}

    params: AutoAttackBase.Params

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fooled: Counter[str] = Counter()

    def component_names(self) -> tuple[str, ...]:
        """The components that run, in order."""
        return chosen_components(self.params)

    def components(self) -> list[tuple[str, Attack]]:
        """The component attacks, built for this attack's threat model, in run order."""
        from robench.attacks.apgd import APGD
        from robench.attacks.apgd_t import APGDT
        from robench.attacks.fab import FAB
        from robench.attacks.square import Square

        p, threat = self.params, self.threat
        eot = p.eot_iter if p.version == "rand" else 1
        build = {
            "apgd-ce": lambda: APGD(threat, steps=p.steps, loss="ce", eot_iter=eot),
            "apgd-dlr": lambda: APGD(threat, steps=p.steps, loss="dlr", eot_iter=eot),
            "apgd-t": lambda: APGDT(threat, steps=p.steps, n_target_classes=p.n_target_classes),
            "fab-t": lambda: FAB(
                threat, steps=p.steps, targeted=True, n_target_classes=p.n_target_classes
            ),
            "square": lambda: Square(threat, n_queries=p.n_queries),
        }
        return [(name, build[name]()) for name in self.component_names()]

    def cost(self) -> float:
        return sum(attack.cost() for _, attack in self.components())

    def fooled_by(self) -> dict[str, int]:
        """Per component, the examples it fooled first, over every call of this attack."""
        return {name: self._fooled[name] for name in self.component_names()}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        robust = _correct(model, x, y)
        for name, attack in self.components():
            todo = robust.nonzero().flatten()
            if not len(todo):
                break
            found = attack.run(model, x[todo].clone(), y[todo]).detach()
            found = self.threat.project(found.to(x.dtype), x[todo])
            fooled = ~_correct(model, found, y[todo])
            x_adv[todo[fooled]] = found[fooled]
            robust[todo[fooled]] = False
            self._fooled[name] += int(fooled.sum())
        return x_adv


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the model, in its own precision, classifies each example correctly."""
    with torch.no_grad(), precision.full_precision(x.device.type):
        return chunks.forward(model, x).argmax(dim=1) == y
