"""The inner attack of adversarial-training defenses, with an optional ε warm-up."""

from __future__ import annotations

import math

from robench.attack import Attack
from robench.dataset import Data
from robench.defense import TrainContext
from robench.defenses.bases import InnerAttackParams


class InnerAttack:
    """Gives the attack for each training batch in turn: ``next(schedule)``."""

    def __init__(self, params: InnerAttackParams, ctx: TrainContext, train: Data) -> None:
        cfg = ctx.training
        n = len(train) if cfg.train_examples is None else min(len(train), cfg.train_examples)
        self.ramp_steps = params.eps_warmup * cfg.epochs * math.ceil(n / cfg.batch_size)
        self.spec, self.ctx = params.attack, ctx
        self.full = ctx.make_attack(self.spec)
        if "early_stop" in type(self.full.params).model_fields and (
            "early_stop" not in self.spec.params
        ):
            # training wants the highest-loss point of every step, not the first misclassified
            # one (early stopping is an evaluation speed-up; for training it weakens PGD-AT)
            params = {**self.spec.params, "early_stop": False}
            self.spec = self.spec.model_copy(update={"params": params})
            self.full = ctx.make_attack(self.spec)
        self.step = 0
        # the ε warm-up's batch counter: a training resumed after an epoch goes on from it
        ctx.keep_state("inner_attack", self)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

    def __iter__(self) -> InnerAttack:
        return self

    def __next__(self) -> Attack:
        self.step += 1
        if self.step >= self.ramp_steps:
            return self.full
        eps = self.spec.eps * self.step / self.ramp_steps
        return self.ctx.make_attack(self.spec.model_copy(update={"eps": eps}))
