"""Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free")."""

from __future__ import annotations

from robench.defenses._preset import AdversarialPreset
from robench.defenses.bases import FastATBase
from robench.specs import AttackSpec


class FastAT(FastATBase, AdversarialPreset):
    """Fast AT (Wong et al. 2020): FGSM from a random start, step 1.25·ε, cyclic learning rate.

    Each batch is attacked with FGSM-RS: a uniform random point of the ε-ball, then one
    gradient step α = ``rel_step``·ε (1.25·ε in the paper, which reports catastrophic
    overfitting for much larger steps), and the model trains on those examples only. The
    learning-rate schedule is ``cyclic`` (linear up for 2/5 of training, then down to 0) unless
    the benchmark's ``[training]`` table or the defense's ``training`` table sets ``schedule``.
    The paper's CIFAR-10 recipe (PreActResNet-18, 86 % clean, 46 % PGD-50 at 8/255)::

        [[defenses]]
        name = "fast-at"
        eps = "8/255"
        training = { epochs = 15, batch_size = 128, optimizer = "sgd", lr = 0.2,
                     weight_decay = 5e-4, augment = "crop-flip", precision = "bf16" }

    The same as ``adversarial`` with ``attack = { name = "fgsm", eps = …, random_start = true,
    rel_step = 1.25 }`` and ``schedule = "cyclic"``.
    """

    params: FastATBase.Params

    def attack_spec(self) -> AttackSpec:
        p = self.params
        return AttackSpec.model_validate(
            {
                "name": "fgsm",
                "norm": p.norm,
                "eps": p.eps,
                "random_start": True,
                "rel_step": p.rel_step,
            }
        )
