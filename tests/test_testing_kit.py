"""robench.testing, the contract checks for a plugin's own tests: they pass robench's own plugins
and fail deliberately broken ones with one line naming the plugin and what broke."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from robench.api import (
    Attack,
    ConfigError,
    Data,
    Dataset,
    DatasetInfo,
    Defense,
    Model,
    Normalize,
    Params,
    ThreatModel,
    craft,
)
from robench.registry import build_registry
from robench.testing import (
    ContractViolation,
    check_attack,
    check_dataset,
    check_defense,
    check_model,
    tiny_data,
    tiny_model,
)
from robench.testing.attacks import STRONG_EPS

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry()


def violation(check, *args, match: str, **kwargs) -> str:
    """The one-line ContractViolation ``check`` raises, which must match ``match``."""
    with pytest.raises(ContractViolation, match=match) as err:
        check(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, AssertionError)
    return message


# --- the tiny data and model ----------------------------------------------------------------


def test_tiny_data_and_model() -> None:
    for channels in (1, 3):
        info, train, test = tiny_data(channels)
        assert info.shape == (channels, 8, 8) and (len(train), len(test)) == (1347, 450)
        assert train.x.min() >= 0 and train.x.max() <= 1 and test.y.dtype == torch.int64
        model = tiny_model(channels)
        assert not model.training
        with torch.no_grad():
            assert (model(test.x).argmax(dim=1) == test.y).float().mean() > 0.9
    tiny_data()[1].x.zero_()  # copies: the next call is intact
    assert tiny_data()[1].x.max() == 1
    with pytest.raises(ValueError, match="channels"):
        tiny_model(2)


def test_fgsm_fools_every_strength_example_at_the_strong_budgets() -> None:
    """What check_attack's message says: FGSM fools all 16 at L∞ 0.3 and L2 2.0."""
    model, (_, _, test) = tiny_model(), tiny_data()
    with torch.no_grad():
        correct = model(test.x).argmax(dim=1) == test.y
    x, y = test.x[correct][:16], test.y[correct][:16]
    fgsm = REGISTRY.get("attack", "fgsm").cls
    for norm, eps in STRONG_EPS.items():
        x_adv = craft(fgsm(ThreatModel(norm, eps)), model, x, y).x_adv
        with torch.no_grad():
            assert (model(x_adv).argmax(dim=1) != y).all(), norm


# --- attacks ----------------------------------------------------------------------------------


class Sign(Attack):
    """One signed-gradient step of ε (a correct FGSM)."""

    name = "kit-sign"
    norms = ("linf",)

    def cost(self) -> float:
        return 1.0

    def run(self, model, x, y):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)
        return (x + self.threat.eps * grad.sign()).clamp(*self.threat.bounds).detach()


class Lazy(Sign):
    """Returns the clean images."""

    def run(self, model, x, y):
        return x


class Careless(Sign):
    """Steps 2ε."""

    def run(self, model, x, y):
        return (x + 2 * self.threat.eps * torch.randn_like(x).sign()).clamp(0, 1)


class Reseeding(Sign):
    """Seeds torch itself."""

    def run(self, model, x, y):
        torch.manual_seed(0)
        return super().run(model, x, y)


class Unseeded(Sign):
    """Half a signed step from a random start of half ε, drawn from a generator of its own,
    seeded by the clock."""

    def run(self, model, x, y):
        g = torch.Generator().manual_seed(time.time_ns())
        half = 0.5 * self.threat.eps
        start = (x + half * (2 * torch.rand(x.shape, generator=g) - 1)).requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(start), y), start)
        return (start + half * grad.sign()).clamp(*self.threat.bounds).detach()


class Caching(Sign):
    """Attacks the first model it is given, whatever it is given later."""

    def run(self, model, x, y):
        self.__dict__.setdefault("first", model)
        return super().run(self.first, x, y)


class Float32(Sign):
    """Works in float32 only."""

    def run(self, model, x, y):
        if x.dtype != torch.float32:
            raise TypeError(f"float32 only, got {x.dtype}")
        return super().run(model, x, y)


class WeightWriter(Sign):
    """Writes a weight."""

    def run(self, model, x, y):
        with torch.no_grad():
            next(model.parameters()).mul_(2)
        return x


class Free(Sign):
    """Claims to cost nothing."""

    def cost(self) -> float:
        return 0.0


class Greedy(Sign):
    """Accepts L2 too (its ``__init__`` skips the base class's norm check)."""

    def __init__(self, threat, params=None, /, **kwargs) -> None:
        Attack.__init__(self, ThreatModel("linf", threat.eps, threat.bounds), params, **kwargs)


class RGBOnly(Sign):
    """Refuses datasets without three channels."""

    @classmethod
    def check(cls, params, info):
        if info.shape[0] != 3:
            raise ConfigError(f"RGB only, {info.name!r} has {info.shape[0]} channels")

    def run(self, model, x, y):
        assert x.shape[1] == 3
        return super().run(model, x, y)


class Stepped(Sign):
    """Iterated signed steps of rel·ε/steps."""

    class Params(Params):
        steps: int = Field(1, ge=1)
        rel: float = Field(1.0, gt=0, le=1)

    def run(self, model, x, y):
        step = self.params.rel * self.threat.eps / self.params.steps
        for _ in range(self.params.steps):
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)
            x = (x + step * grad.sign()).clamp(*self.threat.bounds)
        return x.detach()


def _renamed(cls: type, name: str, doc: str | None = "Renamed.") -> type:
    return type(cls.__name__, (cls,), {"name": name, "__doc__": doc})


def test_a_correct_attack_passes_and_params_go_to_it() -> None:
    check_attack(Sign)
    check_attack(Stepped, steps=2)
    check_attack(RGBOnly)  # refused the grey digits: checked on the RGB ones


def _id(cls: type) -> str:
    return f"{cls.__name__}-{cls.name}"


BROKEN_ATTACKS = [
    (Lazy, {}, "attack 'kit-sign' fooled none of the 16 test digits"),
    (Careless, {}, r"left the ε-ball or the bounds on \d of 6 examples, by up to 0.1 \(L∞ ε = 0.1"),
    (Reseeding, {}, "reseeds torch's global random generator"),
    (Unseeded, {}, "is not reproducible: two runs from the same seed differ"),
    (Caching, {}, "gives another result there than a fresh instance"),
    (Float32, {}, r"raised TypeError: float32 only, got torch.float64 \(L∞ ε = 0.1, float64, 6×1"),
    (WeightWriter, {}, "broke the contract .* changed the model's parameter 'features.0.weight'"),
    (Free, {}, r"has cost\(\) 0.0"),
    (Greedy, {}, "does not list 'l2' in its norms but accepts it"),
    (_renamed(Sign, "9-lives"), {}, "refused by robench's registry: it registered"),
    (_renamed(Sign, "pgd"), {}, "refused by robench's registry: duplicate attack name 'pgd'"),
    (
        type("Bare", (Attack,), {"name": "kit-bare", "run": Sign.run, "__doc__": None}),
        {},
        "has no docstring of its own",
    ),
    (type("L1", (Sign,), {"norms": ("l1",), "__doc__": "L1."}), {}, "has norms"),
    (Stepped, {"rel": 2.0}, "parameters .* do not validate: rel: Input should be less than"),
]


@pytest.mark.parametrize(
    ("cls", "params", "match"), BROKEN_ATTACKS, ids=[_id(c) for c, _, _ in BROKEN_ATTACKS]
)
def test_a_broken_attack_fails_with_one_line_naming_it(cls, params, match) -> None:
    message = violation(check_attack, cls, match=match, **params)
    assert message.startswith(f"attack {cls.name!r}") or "registry" in message


def test_opting_out_of_strength_and_reproducibility() -> None:
    check_attack(Lazy, fools=False)
    check_attack(Unseeded, reproducible=False)


def test_an_attack_that_raises_is_reported_with_its_case_and_cause() -> None:
    class Raising(Sign):
        """Raises."""

        def run(self, model, x, y):
            raise KeyError("boom")

    with pytest.raises(ContractViolation) as err:
        check_attack(Raising)
    assert str(err.value) == (
        "attack 'kit-sign' raised KeyError: 'boom' (L∞ ε = 0.1, float32, 6×1×8×8)"
    )
    assert isinstance(err.value.__cause__, KeyError)


# --- models -----------------------------------------------------------------------------------


class Linear(Model):
    """A linear model with the dataset's normalisation."""

    name = "kit-linear"

    def build(self, info: DatasetInfo) -> nn.Module:
        return nn.Sequential(
            Normalize(info.mean, info.std),
            nn.Flatten(),
            nn.Linear(int(np.prod(info.shape)), info.num_classes),
        )


class NoNorm(Linear):
    def build(self, info):
        return nn.Sequential(*list(super().build(info))[1:])


class Detached(Linear):
    def build(self, info):
        net = super().build(info)
        return nn.Sequential(_Lambda(lambda x: x.detach()), net)


class Noisy(Linear):
    def build(self, info):
        return nn.Sequential(_Lambda(lambda x: x + 0.1 * torch.randn_like(x)), super().build(info))


class Unsaved(Linear):
    """Keeps a random scale outside its parameters and buffers."""

    def build(self, info):
        scale = torch.rand(1)
        return nn.Sequential(_Lambda(lambda x: x * scale), super().build(info))


class Softmaxed(Linear):
    def build(self, info):
        return nn.Sequential(super().build(info), nn.Softmax(dim=1))


class Wide(Linear):
    def build(self, info):
        net = super().build(info)
        net[-1] = nn.Linear(net[-1].in_features, info.num_classes + 1)
        return net


class _Lambda(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize(
    "entry",
    [e for e in REGISTRY.entries("model") if e.name != "robustbench"],
    ids=lambda e: e.name,
)
def test_every_registered_model_passes(entry) -> None:
    """robustbench builds zoo models from their checkpoints: its own tests cover it."""
    check_model(entry.cls)


def test_a_correct_model_passes_and_normalisation_can_be_waived() -> None:
    check_model(Linear)
    check_model(_renamed(NoNorm, "kit-raw"), normalizes=False)
    check_model(REGISTRY.get("model", "small-cnn").cls, normalize=False)  # waived by its params
    odd = DatasetInfo("odd", (2, 5, 3), 4, (0.5, 0.4), (0.2, 0.3))
    check_model(Linear, info=odd)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (NoNorm, "ignores the dataset's mean and std"),
        (Detached, "has a zero or non-finite input gradient"),
        (Noisy, "gives different logits for the same input in eval mode"),
        (Unsaved, "gives other logits after its state_dict is loaded"),
        (Softmaxed, "returns probabilities, not logits"),
        (Wide, r"returned \(3, 11\) for 3×1×8×8 images of 10 classes"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_broken_model_fails_with_one_line_naming_it(cls, match) -> None:
    assert violation(check_model, _renamed(cls, "kit-broken"), match=match).startswith(
        "model 'kit-broken'"
    )


def test_a_model_that_refuses_every_shape_is_told_to_declare_them() -> None:
    class Picky(Linear):
        """Refuses everything."""

        def check(self, info):
            raise ConfigError(f"no, not {info.name!r}")

    violation(check_model, Picky, match="accepts none of the shapes .* declare input_shapes")


# --- defenses ---------------------------------------------------------------------------------


class Plain(Defense):
    """Plain training through ctx.train."""

    name = "kit-plain"

    def fit(self, model, train, ctx):
        return ctx.train(model, train, lambda m, x, y: ctx.cross_entropy(m(x), y))


class Lazier(Plain):
    def fit(self, model, train, ctx):
        return model


class Probabilities(Plain):
    def fit(self, model, train, ctx):
        return nn.Sequential(super().fit(model, train, ctx), nn.Softmax(dim=1))

    def restore(self, model, ctx):
        return nn.Sequential(model, nn.Softmax(dim=1))


class Clocked(Plain):
    def fit(self, model, train, ctx):
        g = torch.Generator().manual_seed(time.time_ns())

        def loss(m, x, y):
            return ctx.cross_entropy(m(x + 0.05 * torch.randn(x.shape, generator=g)), y)

        return ctx.train(model, train, loss)


class Wrapping(Plain):
    def fit(self, model, train, ctx):
        return nn.Sequential(nn.Identity(), super().fit(model, train, ctx))


@pytest.mark.parametrize(
    "entry", [e for e in REGISTRY.entries("defense") if e.cls.trains], ids=lambda e: e.name
)
def test_every_registered_training_defense_passes(entry) -> None:
    check_defense(entry.cls)


def test_a_defense_that_trains_nothing_is_checked_as_such(tmp_path: Path) -> None:
    """``checkpoint`` (trains = False): logits and restore, no learning expected."""
    from safetensors.torch import save_file

    from robench.testing.defenses import small_cnn

    path = tmp_path / "w.safetensors"
    save_file(small_cnn(tiny_data()[0]).state_dict(), str(path))
    check_defense(REGISTRY.get("defense", "checkpoint").cls, path=str(path))


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (Lazier, "reported 0 epoch losses"),
        (Probabilities, "trained a module that returns probabilities"),
        (Clocked, "trained different weights twice from the same seed"),
        (Wrapping, "restore\\(\\) returns a module whose state_dict differs from fit\\(\\)'s"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_broken_defense_fails_with_one_line_naming_it(cls, match) -> None:
    assert violation(check_defense, _renamed(cls, "kit-broken"), match=match).startswith(
        "defense 'kit-broken'"
    )


# --- datasets ---------------------------------------------------------------------------------


class Tiny(Dataset):
    """The kit's digits as a dataset plugin."""

    name = "kit-digits"

    def info(self, root: Path) -> DatasetInfo:
        return tiny_data()[0]

    def load(self, split, root: Path) -> Data:
        _, train, test = tiny_data()
        return train if split == "train" else test


class Bytes(Tiny):
    def load(self, split, root):
        data = super().load(split, root)
        return Data(data.x * 255, data.y)


class Int32(Tiny):
    def load(self, split, root):
        data = super().load(split, root)
        return Data(data.x, data.y.int())


class Mean255(Tiny):
    def info(self, root):
        info = super().info(root)
        return DatasetInfo(info.name, info.shape, 10, (77.8,), (97.0,))


class Shared(Tiny):
    cache: dict = {}  # noqa: RUF012

    def load(self, split, root):
        return self.cache.setdefault(split, super().load(split, root))


class Fragile(Tiny):
    def check(self, root):
        (Path(root) / "train.bin").read_bytes()


class Miscounted(Tiny):
    def info(self, root):
        info = super().info(root)
        return DatasetInfo(info.name, info.shape, 10, info.mean, info.std, test_size=500)


def test_a_correct_dataset_and_the_built_in_ones_pass(tmp_path: Path) -> None:
    check_dataset(Tiny)
    check_dataset(REGISTRY.get("dataset", "digits").cls, test_fraction=0.1)
    x = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=x, y=np.arange(20) % 4)
    npz = REGISTRY.get("dataset", "npz").cls
    check_dataset(npz, root=tmp_path, train=tmp_path / "train.npz", test=tmp_path / "test.npz")


def test_a_streamed_dataset_passes(tmp_path: Path) -> None:
    from .test_imagefolder import write_folder

    folder = write_folder(tmp_path, {"train": 4, "val": 2})
    imagefolder = REGISTRY.get("dataset", "imagefolder").cls
    check_dataset(imagefolder, root=tmp_path, folder=folder, size=8, resize=8, workers=0)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_the_downloadable_datasets_pass_on_the_data_root(name: str, data_root: Path) -> None:
    check_dataset(REGISTRY.get("dataset", name).cls, root=data_root, download=False)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (Bytes, r"returned train split images in \[0, 255\], outside its bounds \[0, 1\]"),
        (Int32, "returned train split labels torch.int32"),
        (Mean255, r"has info.mean\[0\] = 77.8, but its training images' mean is 0.305"),
        (Shared, "returned a test split that shares memory with its next load"),
        (Fragile, "check\\(\\) on a data root without its data raised FileNotFoundError"),
        (Miscounted, "says test_size = 500, but its test split has 450 examples"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_broken_dataset_fails_with_one_line_naming_it(cls, match) -> None:
    assert violation(check_dataset, _renamed(cls, "kit-broken"), match=match).startswith(
        "dataset 'kit-broken'"
    )
    assert tiny_data()[2].x.max() == 1  # a dataset sharing its cache got it back intact
