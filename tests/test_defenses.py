"""Defense contract tests over every registered defense, and the built-ins' behaviour."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench.config import PluginUse
from robench.dataset import Data
from robench.defense import TrainContext
from robench.registry import build_registry
from robench.reproducibility import eval_subset
from robench.threat import ThreatModel
from robench.training import TrainingConfig, crop_flip, lr_factor

REGISTRY = build_registry()  # the built-ins and installed plugins
#: the defenses that train (``checkpoint`` loads weights instead: tests/test_checkpoint.py)
DEFENSES = [e for e in REGISTRY.entries("defense") if e.cls.trains]


@pytest.fixture(scope="module")
def digits():
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    train = eval_subset(ds.load("train", None), 400, seed=0)
    test = ds.load("test", None)
    return info, train, test


def make_ctx(info, seed: int = 0, **training) -> TrainContext:
    def make_attack(spec):
        entry = REGISTRY.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, info.bounds), **spec.params)

    cfg = TrainingConfig(**{"epochs": 2, "lr": 3e-3, **training})
    return TrainContext(cfg, torch.device("cpu"), seed, info, make_attack)


def build(info, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return REGISTRY.get("model", "small-cnn").cls().build(info)


@pytest.mark.parametrize("entry", DEFENSES, ids=lambda e: e.name)
def test_every_defense_returns_a_trained_logit_model(entry, digits):
    info, train, test = digits
    defense = entry.cls(**entry.cls.example_params)
    model = build(info)
    before = [p.detach().clone() for p in model.parameters()]
    epochs = []
    ctx = make_ctx(info, epochs=6)
    ctx = TrainContext(**{**ctx.__dict__, "progress": lambda e, n, loss: epochs.append(loss)})
    trained = defense.fit(model, train, ctx)
    assert isinstance(trained, nn.Module)
    assert len(epochs) == 6 and all(loss == loss for loss in epochs)  # reported, no NaN
    with torch.no_grad():
        logits = trained.eval()(test.x[:64])
    assert logits.shape == (64, info.num_classes) and torch.isfinite(logits).all()
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))  # logits, not probs
    accuracy = (logits.argmax(1) == test.y[:64]).float().mean()
    assert accuracy > 0.5  # learned something in 6 epochs on 400 digits
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())
    # restore() rebuilds fit's module untrained: the stored weights load into it exactly
    restored = defense.restore(build(info, seed=1), ctx)
    shapes = {k: v.shape for k, v in trained.state_dict().items()}
    assert {k: v.shape for k, v in restored.state_dict().items()} == shapes
    restored.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(restored.eval()(test.x[:64]), logits)


def _fit(name: str, info, train, **params) -> nn.Module:
    use = PluginUse(
        REGISTRY.get("defense", name), REGISTRY.get("defense", name).cls.Params(**params)
    )
    return use.instantiate().fit(build(info), train, make_ctx(info))


def test_mixed_with_only_the_adversarial_term_is_madry_training(digits):
    info, train, _ = digits
    attack = {"name": "pgd", "eps": 0.1, "steps": 2}
    madry = _fit("adversarial", info, train, attack=attack)
    mixed = _fit("mixed", info, train, attack=attack, clean_weight=0.0, adv_weight=1.0)
    for a, b in zip(madry.parameters(), mixed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_mixed_forms_train_and_differ(digits):
    info, train, test = digits
    attack = {"name": "fgsm", "eps": 0.1}
    nsl = _fit("mixed", info, train, attack=attack, clean_weight=1.0, adv_weight=0.2)
    replace = _fit(
        "mixed",
        info,
        train,
        attack=attack,
        replace=True,
        adv_fraction=0.5,
        clean_weight=0.5,
        adv_weight=0.5,
    )
    with torch.no_grad():
        a, b = nsl(test.x[:32]), replace(test.x[:32])
    assert not torch.allclose(a, b)


def test_mixed_rejects_inconsistent_weights():
    params = REGISTRY.get("defense", "mixed").cls.Params
    attack = {"name": "fgsm", "eps": 0.1}
    with pytest.raises(ValidationError, match="leaves no clean examples"):
        params(attack=attack, replace=True, adv_fraction=1.0, clean_weight=0.5)
    with pytest.raises(ValidationError, match="must be > 0"):
        params(attack=attack, clean_weight=0.0, adv_weight=0.0)


def test_training_is_seeded(digits):
    info, train, _ = digits
    a = _fit("standard", info, train)
    b = _fit("standard", info, train)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_learning_rate_schedules():
    total = 100
    cyclic = TrainingConfig(schedule="cyclic")
    peak = max(range(total), key=lambda s: lr_factor(cyclic, s, total))
    assert 35 <= peak <= 41 and lr_factor(cyclic, total - 1, total) < 0.05
    step = TrainingConfig(schedule="step", milestones=(0.5,), gamma=0.1)
    assert lr_factor(step, 10, total) == 1.0 and lr_factor(step, 60, total) == pytest.approx(0.1)
    cosine = TrainingConfig(schedule="cosine")
    assert lr_factor(cosine, 0, total) == 1.0 and lr_factor(cosine, 99, total) < 0.01
    assert lr_factor(TrainingConfig(), 57, total) == 1.0
    with pytest.raises(ValidationError):
        TrainingConfig(milestones=(1.5,))


def test_crop_flip_keeps_shape_range_and_is_seeded():
    x = torch.rand(8, 3, 32, 32)
    a = crop_flip(x, torch.Generator().manual_seed(1))
    b = crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_train_examples_limits_the_training_set(digits):
    info, train, _ = digits
    seen = []

    def loss(m, x, y):
        seen.append(len(y))
        return nn.functional.cross_entropy(m(x), y)

    ctx = make_ctx(info, epochs=1, batch_size=50, train_examples=120)
    ctx.train(build(info), Data(train.x, train.y), loss)
    assert sum(seen) == 120


def test_eps_warmup_ramps_the_inner_attack_linearly(digits):
    from robench.defenses._inner import InnerAttack

    info, train, _ = digits
    params = REGISTRY.get("defense", "adversarial").cls.Params(
        attack={"name": "fgsm", "eps": 0.2}, eps_warmup=0.5
    )
    ctx = make_ctx(info, epochs=2, batch_size=100)  # 400 examples: 8 steps, 4 of them ramping
    schedule = InnerAttack(params, ctx, train)
    eps = [next(schedule).threat.eps for _ in range(8)]
    assert eps == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2, 0.2])
