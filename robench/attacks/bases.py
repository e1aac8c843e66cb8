"""The built-in attacks' names, parameters and configuration checks, without torch.

What validating a benchmark reads of an attack (:mod:`robench.bases`): each attack in its own
module (``pgd.py``, ...) extends its class here, so ``robench.attacks.pgd.PGD.Params`` is
:class:`PGDBase.Params`, and ``robench validate`` checks a benchmark's attacks without
importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from robench.bases import AttackBase, DatasetInfo
from robench.errors import ConfigError
from robench.plugin import Params

#: The loss an attack maximises: cross-entropy, or the Carlini–Wagner logit margin
#: ``max_{j≠y} z_j − z_y`` (positive exactly when the example is misclassified).
LossName = Literal["ce", "margin"]


def check_target_classes(attack: str, n_target_classes: int, num_classes: int) -> None:
    """Refuse more target classes than a dataset of ``num_classes`` classes has besides the
    true one (a :class:`~robench.errors.ConfigError` naming ``n_target_classes``)."""
    if n_target_classes > num_classes - 1:
        raise ConfigError(
            f"{n_target_classes} exceeds the number of classes minus one ({num_classes - 1}) "
            f"for attack {attack!r}",
            field="n_target_classes",
        )


class FGSMBase(AttackBase):
    """FGSM's name, norms and parameters (:class:`robench.attacks.fgsm.FGSM`)."""

    name = "fgsm"
    norms = ("linf", "l2")

    class Params(Params):
        random_start: bool = Field(
            False, description="start from a uniform random point of the ε-ball (FGSM-RS)"
        )
        rel_step: float | None = Field(
            None,
            gt=0,
            allow_inf_nan=False,
            description="step α as a multiple of ε; default 1.0, or 1.25 with random_start",
        )
        loss: LossName = Field(
            "ce", description="loss to maximise: cross-entropy or the CW logit margin"
        )


class PGDBase(AttackBase):
    """PGD's name, norms and parameters (:class:`robench.attacks.pgd.PGD`)."""

    name = "pgd"
    norms = ("linf", "l2")

    class Params(Params):
        steps: int = Field(10, ge=1, description="gradient steps per restart")
        rel_step: float | None = Field(
            None,
            gt=0,
            allow_inf_nan=False,
            description="step as a multiple of ε (default 2.5/steps); excludes step_size",
        )
        step_size: float | None = Field(
            None, gt=0, allow_inf_nan=False, description="absolute step; excludes rel_step"
        )
        random_start: bool = Field(
            True, description="start from a uniform random point of the ball"
        )
        restarts: int = Field(1, ge=1, description="random restarts; keeps each example's worst")
        loss: LossName = Field(
            "ce", description="loss to maximise: cross-entropy or the CW logit margin"
        )
        early_stop: bool = Field(
            True,
            description="stop attacking an example at the first point the model misclassifies "
            "(it is adversarial there); false: every example takes every step",
        )

        @model_validator(mode="after")
        def _one_step_rule(self) -> PGDBase.Params:
            if self.rel_step is not None and self.step_size is not None:
                raise ValueError("give either step_size or rel_step, not both")
            return self


class NoiseBase(AttackBase):
    """The random-noise baseline's name, norms and parameters
    (:class:`robench.attacks.noise.RandomNoise`)."""

    name = "noise"
    norms = ("linf", "l2")

    class Params(Params):
        samples: int = Field(10, ge=1, description="noise draws per example")


class APGDParams(Params):
    """The parameters ``apgd`` and ``apgd-t`` share."""

    steps: int = Field(100, ge=1, description="iterations per run (the paper's N)")
    restarts: int = Field(
        1, ge=1, description="runs from random starts, after the first only on unfooled"
    )
    rho: float = Field(
        0.75,
        gt=0,
        le=1,
        description="halve the step when the loss rose in fewer than this fraction of the "
        "steps since the last checkpoint",
    )
    early_stop: bool = Field(
        True,
        description="a fooled example stops costing steps (it keeps its adversarial point)",
    )
    eot_iter: int = Field(
        1,
        ge=1,
        description="gradient passes averaged per step (EOT, for randomised defenses)",
    )

    def run_settings(self) -> dict[str, int | float | bool]:
        """These parameters as keyword arguments of :func:`robench.attacks._apgd.apgd_outcome`
        and :func:`~robench.attacks._apgd.apgdt_outcome`."""
        return {name: getattr(self, name) for name in APGDParams.model_fields}


class APGDBase(AttackBase):
    """APGD's name, norms and parameters (:class:`robench.attacks.apgd.APGD`)."""

    name = "apgd"
    norms = ("linf", "l2")

    class Params(APGDParams):
        loss: Literal["ce", "dlr"] = Field(
            "ce", description="loss to maximise: cross-entropy or the difference of logits ratio"
        )


class APGDTBase(AttackBase):
    """APGD-T's name, norms, parameters and check (:class:`robench.attacks.apgd_t.APGDT`)."""

    name = "apgd-t"
    norms = ("linf", "l2")

    class Params(APGDParams):
        n_target_classes: int = Field(
            9, ge=1, description="target classes: the 2nd to (n+1)-th highest clean logits"
        )

    @classmethod
    def check(cls, params: Params, info: DatasetInfo) -> None:
        check_target_classes(cls.name, params.n_target_classes, info.num_classes)


class FABBase(AttackBase):
    """FAB's name, norms, parameters and check (:class:`robench.attacks.fab.FAB`)."""

    name = "fab"
    norms = ("linf", "l2")

    class Params(Params):
        steps: int = Field(100, ge=1, description="iterations per run (per restart and target)")
        restarts: int = Field(
            1, ge=1, description="runs per target; the first from the clean point, then random"
        )
        targeted: bool = Field(
            False, description="FAB-T: aim at each of the n_target_classes likeliest other classes"
        )
        n_target_classes: int = Field(
            9, ge=1, description="targeted: the highest-scoring other classes to aim at"
        )
        eta: float = Field(1.05, ge=1, allow_inf_nan=False, description="overshoot η ≥ 1")
        alpha_max: float = Field(
            0.1, ge=0, le=1, description="largest bias α of a step towards the clean point"
        )
        beta: float = Field(
            0.9, gt=0, le=1, description="backward step towards the clean point when fooled"
        )
        early_stop: bool = Field(
            True,
            description="finite ε: an example is done once its best adversarial fits the ball",
        )

    @classmethod
    def check(cls, params: Params, info: DatasetInfo) -> None:
        if params.targeted:
            check_target_classes(cls.name, params.n_target_classes, info.num_classes)


class SquareBase(AttackBase):
    """Square's name, norms and parameters (:class:`robench.attacks.square.Square`)."""

    name = "square"
    norms = ("linf", "l2")

    class Params(Params):
        n_queries: int = Field(
            5000,
            ge=1,
            description="queries (forward passes) per example and restart, the initial point "
            "included",
        )
        p_init: float = Field(
            0.8,
            gt=0,
            le=1,
            allow_inf_nan=False,
            description="fraction of each channel's pixels the first squares cover (halved on "
            "the paper's schedule)",
        )
        restarts: int = Field(
            1, ge=1, description="runs from fresh initial points, on the examples not yet fooled"
        )


#: AutoAttack's versions
Version = Literal["standard", "rand"]

#: the components of each version, in the order they run
COMPONENTS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


class AutoAttackBase(AttackBase):
    """AutoAttack's name, norms, parameters and check
    (:class:`robench.attacks.autoattack.AutoAttack`)."""

    name = "autoattack"
    norms = ("linf", "l2")

    class Params(Params):
        version: Version = Field(
            "standard", description="'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'rand'"
        )
        steps: int = Field(100, ge=1, description="iterations of APGD, APGD-T and FAB-T")
        n_target_classes: int = Field(
            9, ge=1, description="target classes of APGD-T and FAB-T (the highest-scoring)"
        )
        n_queries: int = Field(5000, ge=1, description="queries of Square")
        eot_iter: int = Field(20, ge=1, description="'rand': gradient draws averaged per step")
        components: list[str] | None = Field(
            None, description="run only these of the version's components (default: all)"
        )

        @model_validator(mode="after")
        def _known_components(self) -> AutoAttackBase.Params:
            allowed = COMPONENTS[self.version]
            if self.components is not None:
                unknown = [c for c in self.components if c not in allowed]
                if unknown or not self.components:
                    raise ValueError(
                        f"components of version {self.version!r} are {', '.join(allowed)}; "
                        f"got {', '.join(unknown) if unknown else 'none'}"
                    )
            return self

    @classmethod
    def check(cls, params: Params, info: DatasetInfo) -> None:
        if any(c in ("apgd-t", "fab-t") for c in chosen_components(params)):
            check_target_classes(cls.name, params.n_target_classes, info.num_classes)


def chosen_components(p: AutoAttackBase.Params) -> tuple[str, ...]:
    """The components of AutoAttack with parameters ``p`` that run, in order."""
    return tuple(c for c in COMPONENTS[p.version] if p.components is None or c in p.components)


#: the base of each built-in attack, by name (:meth:`robench.registry.Registry.get_base`)
BASES: dict[str, type[AttackBase]] = {
    cls.name: cls
    for cls in (
        FGSMBase,
        PGDBase,
        NoiseBase,
        APGDBase,
        APGDTBase,
        FABBase,
        SquareBase,
        AutoAttackBase,
    )
}
