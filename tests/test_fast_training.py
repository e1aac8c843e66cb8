"""The GPU training path (uint8 data on the device, device augmentation, bf16, channels_last,
compile) with its CPU fallbacks, and the fast-at / pgd-at presets, on scikit-learn's digits."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robench import precision, training
from robench.config import load_benchmark
from robench.dataset import Data
from robench.defense import TrainContext
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.reproducibility import eval_subset
from robench.specs import AttackSpec
from robench.threat import ThreatModel
from robench.training import TrainingConfig, as_uint8, crop_flip, train_loop
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry()
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def digits():
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    return info, eval_subset(ds.load("train", None), 600, seed=0), ds.load("test", None)


def make_attack(info, spec):
    entry = REGISTRY.get("attack", spec.name)
    return entry.cls(ThreatModel(spec.norm, spec.eps, info.bounds), **spec.params)


def make_ctx(info, device: str = "cpu", **settings) -> TrainContext:
    cfg = TrainingConfig(**{"epochs": 2, "lr": 3e-3, **settings})
    return TrainContext(cfg, torch.device(device), 0, info, functools.partial(make_attack, info))


def build(info) -> nn.Module:
    torch.manual_seed(0)
    return REGISTRY.get("model", "small-cnn").cls().build(info)


def fit(name: str, info, train: Data, device: str = "cpu", training=None, **params) -> nn.Module:
    defense = REGISTRY.get("defense", name).cls(**params)
    return defense.fit(build(info), train, make_ctx(info, device, **(training or {})))


def train_plain(info, train: Data, **settings) -> nn.Module:
    """Standard training through :func:`train_loop` directly (2 epochs unless given)."""
    cfg = TrainingConfig(**{"epochs": 2, "lr": 3e-3, **settings})
    model = build(info)
    ce = nn.functional.cross_entropy
    return train_loop(model, train, cfg, lambda m, x, y: ce(m(x), y), device="cpu", seed=0)


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


def eight_bit(data: Data) -> Data:
    """The digits rounded to 8-bit levels k/255, as a loader of 8-bit images gives them."""
    return Data((data.x * 255).round() / 255, data.y)


def robust_accuracy(model: nn.Module, attack, test: Data) -> float:
    x_adv = attack(model, test.x, test.y)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == test.y).float().mean().item()


# --- the presets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "attack"),
    [
        ("fast-at", {"name": "fgsm", "eps": 0.1}),
        ("pgd-at", {"name": "pgd", "eps": 0.1, "steps": 10}),
    ],
)
def test_presets_beat_standard_training_under_their_own_attack(name, attack, digits):
    info, train, test = digits
    settings = {"epochs": 8}
    standard = fit("standard", info, train, training=settings)
    preset = fit(name, info, train, training=settings, eps=0.1)
    scorer = make_attack(info, AttackSpec.model_validate(attack))
    with torch.no_grad():
        clean = (preset(test.x).argmax(1) == test.y).float().mean().item()
    assert clean > 0.85
    assert robust_accuracy(preset, scorer, test) > robust_accuracy(standard, scorer, test) + 0.1


def test_presets_are_adversarial_training_with_their_published_attack(digits):
    info, train, _ = digits
    fast = fit("fast-at", info, train, training={"schedule": "cyclic"}, eps=0.1)
    fgsm_rs = {"name": "fgsm", "eps": 0.1, "random_start": True, "rel_step": 1.25}
    same = fit("adversarial", info, train, training={"schedule": "cyclic"}, attack=fgsm_rs)
    assert params_equal(fast, same)
    pgd = fit("pgd-at", info, train, eps=0.1, steps=4)
    madry = fit("adversarial", info, train, attack={"name": "pgd", "eps": 0.1, "steps": 4})
    assert params_equal(pgd, madry)  # PGD's own default step is Madry's 2.5·ε/steps


def test_fast_at_trains_with_a_cyclic_schedule_unless_one_is_set(tmp_path, digits):
    info, _, _ = digits
    defaults = REGISTRY.get("defense", "fast-at").cls.training_defaults
    assert make_ctx(info).with_training_defaults(defaults).training.schedule == "cyclic"
    ctx = make_ctx(info, schedule="constant")
    assert ctx.with_training_defaults(defaults) is ctx

    def schedules(**training_tables) -> list[str]:
        defenses = [{"name": "fast-at", "eps": 0.1}, {"name": "pgd-at", "eps": 0.1}]
        if "own" in training_tables:
            defenses[0]["training"] = training_tables.pop("own")
        bench = load_benchmark(tiny_config(tmp_path, defenses=defenses, **training_tables))
        return [d.training.schedule for d in bench.defenses]  # what the results record

    assert schedules() == ["cyclic", "constant"]
    assert schedules(training={"schedule": "cosine"}) == ["cosine", "cosine"]
    assert schedules(own={"schedule": "step"}) == ["step", "constant"]


def test_preset_and_training_options_are_validated(tmp_path):
    def error(**overrides) -> str:
        with pytest.raises(ConfigError) as info:
            load_benchmark(tiny_config(tmp_path, **overrides))
        message = str(info.value)
        assert "\n" not in message
        return message

    assert error(training={"precision": "fp16"}).startswith("training.precision: ")
    assert "'fp32' or 'bf16'" in error(training={"precision": "fp16"})
    assert error(training={"channels_last": "maybe"}).startswith("training.channels_last: ")
    assert error(training={"compile": "often"}).startswith("training.compile: ")
    own = {"name": "pgd-at", "eps": 0.1, "training": {"precision": "half"}}
    assert error(defenses=[own]).startswith("defenses[0].training.precision: ")
    assert error(defenses=[{"name": "fast-at"}]).startswith("defenses[0].eps: ")
    bad_step = {"name": "fast-at", "eps": 0.1, "rel_step": 0}
    assert error(defenses=[bad_step]).startswith("defenses[0].rel_step: ")
    both = {"name": "pgd-at", "eps": 0.1, "step_size": "2/255", "rel_step": 0.25}
    assert "either step_size or rel_step" in error(defenses=[both])
    pgd = REGISTRY.get("defense", "pgd-at").cls(eps="8/255", step_size="2/255")
    assert pgd.attack_spec().params["step_size"] == pytest.approx(2 / 255)
    with pytest.raises(ValidationError):
        TrainingConfig(precision="fp16")


# --- the training set on the device ----------------------------------------------------------


def test_as_uint8_accepts_exactly_8_bit_images():
    levels = torch.arange(256, dtype=torch.uint8)
    x = levels.float().div(255).view(1, 1, 16, 16)  # every level, as a loader gives them
    q = as_uint8(x)
    assert q is not None and q.dtype == torch.uint8 and torch.equal(q.view(-1), levels)
    assert torch.equal(q.float().div(255), x)  # the device conversion gives back the same floats
    assert as_uint8(x + 5e-7) is not None  # float noise within 1e-6 is tolerated
    assert as_uint8(x + 1e-5) is None
    assert as_uint8(torch.full((1, 1, 2, 2), 1 / 16)) is None  # digits are k/16, not 8-bit
    assert as_uint8(torch.full((1, 1, 2, 2), 256 / 255)) is None  # out of range
    assert as_uint8(torch.full((1, 1, 2, 2), -1 / 255)) is None
    assert as_uint8(levels.view(1, 1, 16, 16)) is None  # not float images


def test_uint8_storage_trains_exactly_like_float_storage(monkeypatch, digits):
    info, train, _ = digits
    data = eight_bit(train)
    stored = []
    original = training.DeviceImages.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        stored.append(self.data.dtype)

    monkeypatch.setattr(training.DeviceImages, "__init__", spy)
    settings = {"augment": "crop-flip", "batch_size": 50}
    as_bytes = train_plain(info, data, **settings)
    monkeypatch.setattr(training, "as_uint8", lambda x: None)
    as_floats = train_plain(info, data, **settings)
    assert stored == [torch.uint8, torch.float32]
    assert params_equal(as_bytes, as_floats)


def test_crop_flip_is_seeded_on_the_data_device_and_works_on_uint8():
    q = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    a = crop_flip(q, torch.Generator(device=q.device).manual_seed(4))
    b = crop_flip(q, torch.Generator(device=q.device).manual_seed(4))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, q)
    as_float = crop_flip(q.float() / 255, torch.Generator(device=q.device).manual_seed(4))
    assert torch.equal(a.float() / 255, as_float)  # augmenting bytes = augmenting floats


# --- precision, memory format, compile -------------------------------------------------------


def test_channels_last_training_on_cpu(digits):
    info, train, _ = digits
    # three channels, so that channels_last is a layout of its own (with one it is NCHW too)
    rgb = dataclasses.replace(info, shape=(3, 8, 8), mean=info.mean * 3, std=info.std * 3)
    data = eight_bit(Data(train.x.expand(-1, 3, -1, -1).contiguous(), train.y))
    layouts = []

    def loss(m, x, y):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return nn.functional.cross_entropy(m(x), y)

    models = []
    for channels_last in (True, False):
        cfg = TrainingConfig(epochs=2, lr=3e-3, channels_last=channels_last, augment="crop-flip")
        models.append(train_loop(build(rgb), data, cfg, loss, device="cpu", seed=0))
    n = len(layouts) // 2
    assert n and all(layouts[:n]) and not any(layouts[n:])
    convs = [m.weight for m in models[0].modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    for p, q in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(p, q)  # the same training, in another memory layout


def test_bf16_trains_under_autocast_on_cpu(monkeypatch, digits):
    info, train, test = digits
    seen = []

    def loss(m, x, y):
        seen.append(torch.is_autocast_enabled("cpu"))
        return nn.functional.cross_entropy(m(x), y)

    cfg = TrainingConfig(epochs=6, lr=3e-3, precision="bf16")
    model = train_loop(build(info), train, cfg, loss, device="cpu", seed=0)
    assert seen and all(seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not params_equal(model, train_plain(info, train, epochs=6))
    with torch.no_grad():
        assert (model(test.x).argmax(1) == test.y).float().mean() > 0.8
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    with pytest.warns(RuntimeWarning, match=r"\[training\].*emulated"):
        train_plain(info, eval_subset(train, 64, seed=0), precision="bf16", epochs=1)


def test_compile_falls_back_to_eager_where_it_fails(monkeypatch, digits):
    info, train, _ = digits

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    with pytest.warns(RuntimeWarning, match="without torch.compile.*no C\\+\\+ compiler$"):
        compiled = train_plain(info, train, compile=True, batch_size=64)
    assert params_equal(compiled, train_plain(info, train, batch_size=64))


def test_compile_warm_up_leaves_no_trace(monkeypatch, digits):
    """torch.compile (with dynamo's eager backend: no C++ toolchain, fast) trains like eager
    mode: the warm-up's batch-norm updates and random draws (the attack's start) are undone."""
    info, train, _ = digits
    small = eval_subset(train, 150, seed=0)
    real = torch.compile
    calls = []

    def eager_backend(model):
        calls.append(model)
        return real(model, backend="eager")

    def bn_net() -> nn.Module:
        torch.manual_seed(0)
        conv = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten()]
        return nn.Sequential(*conv, nn.Linear(8 * 8 * 8, 10))

    monkeypatch.setattr(torch, "compile", eager_backend)
    defense = REGISTRY.get("defense", "adversarial").cls(
        attack={"name": "fgsm", "eps": 0.1, "random_start": True}
    )
    trained = []
    for compile in (True, False):
        ctx = make_ctx(info, batch_size=64, compile=compile)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trained.append(defense.fit(bn_net(), small, ctx))
        assert not [w for w in caught if "torch.compile" in str(w.message)]  # no fallback
    assert len(calls) == 1
    for p, q in zip(*(m.state_dict().values() for m in trained), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_bf16_channels_last_training_on_cuda(digits):
    info, train, test = digits
    seen = []

    def loss(m, x, y):
        seen.append(
            (torch.is_autocast_enabled("cuda"), x.is_contiguous(memory_format=torch.channels_last))
        )
        return nn.functional.cross_entropy(m(x), y)

    x = torch.rand(6, 3, 8, 8, device="cuda")
    gens = [torch.Generator(device="cuda").manual_seed(2) for _ in range(2)]
    assert torch.equal(crop_flip(x, gens[0]), crop_flip(x, gens[1]))

    cfg = TrainingConfig(
        epochs=6, lr=3e-3, precision="bf16", channels_last=True, augment="crop-flip"
    )
    model = build(info)
    train_loop(model, eight_bit(train), cfg, loss, device=torch.device("cuda"), seed=0)
    assert seen and all(autocast and layout for autocast, layout in seen)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert (model(test.x.cuda()).argmax(1).cpu() == test.y).float().mean() > 0.8
    fast = fit(
        "fast-at", info, train, "cuda", {"precision": "bf16", "channels_last": True}, eps=0.1
    )
    assert all(torch.isfinite(p).all() for p in fast.parameters())


def test_training_pgd_takes_every_step_unless_told_otherwise(digits):
    from robench.defenses._inner import InnerAttack, InnerAttackParams

    info, train, _ = digits
    ctx = make_ctx(info)
    inner = InnerAttack(InnerAttackParams(attack={"name": "pgd", "eps": 0.1}), ctx, train)
    assert inner.full.params.early_stop is False  # early stop is for evaluation only
    told = InnerAttackParams(attack={"name": "pgd", "eps": 0.1, "early_stop": True})
    assert InnerAttack(told, ctx, train).full.params.early_stop is True
    fgsm = InnerAttack(InnerAttackParams(attack={"name": "fgsm", "eps": 0.1}), ctx, train)
    assert "early_stop" not in fgsm.spec.params
