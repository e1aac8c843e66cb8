"""The training settings: the ``[training]`` table (:class:`TrainingConfig`) and its
``best_checkpoint`` table (:class:`BestCheckpoint`), without torch (what ``robench validate``
imports); :mod:`robench.training` trains with them, :mod:`robench.heldout` picks the best epoch.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from robench.specs import Epsilon, NormName, Precision, parse_eps

#: a PGD step: a positive number or a fraction string such as "2/255"
Step = Annotated[float, BeforeValidator(parse_eps), Field(gt=0, allow_inf_nan=False)]


class BestCheckpoint(BaseModel):
    """The ``best_checkpoint`` table of ``[training]``, e.g.
    ``best_checkpoint = { held_out = 1000, eps = "8/255", steps = 10 }``."""

    model_config = ConfigDict(frozen=True)

    held_out: int = Field(
        1000,
        ge=1,
        description="training examples held out of training (a seeded random subset of those "
        "it would use) to pick the best epoch on",
    )
    norm: NormName = "linf"
    eps: Epsilon = Field(
        description="the PGD budget of the held-out accuracy (0: the best epoch by clean accuracy)"
    )
    steps: int = Field(10, ge=1, description="PGD steps")
    step_size: Step | None = Field(
        None, description="PGD step (default eps/4: Rice et al.'s 2/255 at 8/255)"
    )
    random_start: bool = Field(
        True, description="start PGD at a uniform random point of the ball (the same every epoch)"
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="stop training after this many epochs without a better one (unset: train "
        "every epoch)",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            from robench.registry import did_you_mean

            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    raise ValueError(
                        f"no key {key!r}{did_you_mean(str(key), known)} "
                        f"(accepted: {', '.join(known)})"
                    )
        return data

    @property
    def alpha(self) -> float:
        """The PGD step."""
        return self.step_size if self.step_size is not None else self.eps / 4


#: ``schedule`` values (:mod:`robench.schedules`)
Schedule = Literal["constant", "cosine", "step", "cyclic", "one-cycle", "multi-step"]


class TrainingConfig(BaseModel):
    """How a defense trains its model (the ``[training]`` table, overridable per defense).

    The learning-rate schedules are documented in :mod:`robench.schedules`, the best-epoch
    selection (``best_checkpoint``) in :mod:`robench.heldout`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: fields added after models were stored under keys whose training record lacks them: the
    #: record of a training cell (:meth:`key_record`) leaves each out while it holds its
    #: default, so that every existing configuration keeps its key
    KEY_OPTIONAL: ClassVar[tuple[str, ...]] = (
        "milestone_epochs",
        "one_cycle_anneal",
        "div_factor",
        "final_div_factor",
        "no_decay",
        "best_checkpoint",
    )

    epochs: int = Field(5, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, description="(peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = Field(
        "constant", description="the learning-rate schedule, stepped per batch (robench.schedules)"
    )
    warmup: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of training spent ramping the lr up (one-cycle: torch's "
        "pct_start, 0.3 when unset; cyclic: 0.4 when unset)",
    )
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="'step' schedule: fractions of training where lr *= gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    milestone_epochs: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (),
        validate_default=True,
        description="'multi-step' schedule: the epochs after which lr *= gamma, increasing "
        "(PGD-AT on CIFAR-10: [100, 150] of 200 epochs; TRADES: [75] of 100)",
    )
    one_cycle_anneal: Literal["cos", "linear"] = Field(
        "cos", description="'one-cycle': how the lr rises and falls (torch's anneal_strategy)"
    )
    div_factor: float = Field(
        25.0, ge=1, allow_inf_nan=False, description="'one-cycle': it starts at lr / div_factor"
    )
    final_div_factor: float = Field(
        1e4,
        ge=1,
        allow_inf_nan=False,
        description="'one-cycle': it ends at lr / (div_factor * final_div_factor)",
    )
    no_decay: tuple[Literal["norm", "bias"], ...] = Field(
        (),
        description="parameters weight decay leaves alone: 'norm', the weights and biases of "
        "normalisation layers (batch, group, layer, instance norm); 'bias', every bias",
    )
    best_checkpoint: BestCheckpoint | None = Field(
        None,
        description="hold out training examples, measure their PGD accuracy after every epoch "
        "and return the best epoch's weights (robench.heldout; unset: the last epoch's)",
    )
    augment: Literal["none", "crop-flip"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    train_examples: int | None = Field(
        None, ge=1, description="train on the first N examples of a seeded shuffle (all: unset)"
    )
    precision: Precision = Field(
        "fp32",
        description="'bf16': bfloat16 autocast around each training batch's forward and loss, "
        "the inner attack's crafting included (fast on GPUs and on CPUs with native bf16; "
        "elsewhere emulated and slow, with a warning)",
    )
    channels_last: bool = Field(
        False,
        description="model and batches in channels_last memory format (faster convolutions on "
        "GPUs; the trained model keeps it)",
    )
    compile: bool = Field(
        False,
        description="train through torch.compile(model), compiled by a warm-up step before the "
        "first epoch (not counted in any epoch); falls back to eager training, with a warning, "
        "where compiling fails",
    )

    @field_validator("milestone_epochs")
    @classmethod
    def _epochs_for_multi_step(cls, v: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        schedule = info.data.get("schedule")
        if schedule == "multi-step" and not v:
            raise ValueError(
                "schedule 'multi-step' needs milestone_epochs: the epochs after which the lr is "
                "multiplied by gamma, e.g. [100, 150]"
            )
        if schedule != "multi-step" and v:
            raise ValueError(f"applies to schedule 'multi-step' only (schedule is {schedule!r})")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("must be strictly increasing")
        return v

    @field_validator("one_cycle_anneal", "div_factor", "final_div_factor")
    @classmethod
    def _one_cycle_only(cls, v: Any, info: ValidationInfo) -> Any:
        schedule = info.data.get("schedule")
        assert info.field_name is not None
        if schedule != "one-cycle" and v != cls.model_fields[info.field_name].default:
            raise ValueError(f"applies to schedule 'one-cycle' only (schedule is {schedule!r})")
        return v

    @field_validator("no_decay", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("no_decay")
    @classmethod
    def _canonical(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))  # the same set, the same key

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("milestones must be fractions of training strictly between 0 and 1")
        return self

    @property
    def effective_warmup(self) -> float:
        """``warmup``, except when it is unset: 'cyclic' ramps up for 2/5 of training (Fast
        AT's one-cycle schedule), 'one-cycle' for 0.3 (torch's ``pct_start``)."""
        if self.warmup == 0.0:
            if self.schedule == "cyclic":
                return 0.4  # Fast AT's one-cycle schedule (Wong et al. 2020)
            if self.schedule == "one-cycle":
                return 0.3
        return self.warmup

    def key_record(self) -> dict[str, Any]:
        """The settings as a training cell records them (:func:`robench.store.training_cell`):
        :meth:`model_dump` (JSON) without the :attr:`KEY_OPTIONAL` fields at their defaults."""
        record = self.model_dump(mode="json")
        for name in self.KEY_OPTIONAL:
            if getattr(self, name) == type(self).model_fields[name].default:
                del record[name]
        return record
