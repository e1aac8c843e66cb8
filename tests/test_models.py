"""The built-in models: architectures, input normalisation, shape checks, and a quick training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robench.dataset import DatasetInfo
from robench.datasets.digits import Digits
from robench.errors import ConfigError
from robench.model import Normalize
from robench.models.cifar_cnn import CifarCNN
from robench.models.mnist_cnn import MnistCNN
from robench.models.preact_resnet import PreActResNet18
from robench.models.small import MLP, SmallCNN

DIGITS = DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.38,))
MNIST = DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
ODD = DatasetInfo("odd", (3, 17, 21), 7, (0.5,) * 3, (0.2,) * 3)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mnist_cnn_matches_the_tutorial_parameter_count():
    assert n_params(MnistCNN().build(MNIST)) == 93_322


def test_preact_resnet18_parameter_count():
    # Wong et al.'s PreActResNet18 (with the final BatchNorm) on 10 classes
    assert n_params(PreActResNet18().build(CIFAR)) == 11_172_170


@pytest.mark.parametrize(
    ("model", "info"),
    [
        (SmallCNN(), DIGITS),
        (SmallCNN(), MNIST),
        (SmallCNN(channels=(4, 8), hidden=16), ODD),
        (MLP(), DIGITS),
        (MLP(hidden=(32, 16)), ODD),
        (MLP(hidden=()), CIFAR),
        (MnistCNN(), MNIST),
        (CifarCNN(), CIFAR),
        (PreActResNet18(), CIFAR),
        (PreActResNet18(), ODD),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_output_shape(model, info):
    model.check(info)
    net = model.build(info).eval()
    with torch.no_grad():
        out = net(torch.rand(3, *info.shape))
    assert out.shape == (3, info.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [SmallCNN, MLP, MnistCNN, CifarCNN, PreActResNet18])
def test_normalisation_is_inside_the_model(cls):
    info = CIFAR if cls in (CifarCNN, PreActResNet18) else MNIST
    torch.manual_seed(0)
    with_norm = cls().build(info).eval()
    torch.manual_seed(0)
    without = cls(normalize=False).build(info).eval()
    norms = [m for m in with_norm.modules() if isinstance(m, Normalize)]
    assert len(norms) == 1
    assert torch.allclose(norms[0].mean.flatten(), torch.tensor(info.mean))
    assert torch.allclose(norms[0].std.flatten(), torch.tensor(info.std))
    assert {"mean", "std"} <= {k.rsplit(".", 1)[-1] for k in with_norm.state_dict()}
    assert not any(isinstance(m, Normalize) for m in without.modules())
    x = torch.rand(2, *info.shape)
    with torch.no_grad():
        assert not torch.allclose(with_norm(x), without(x))
        # same weights: normalising by hand reproduces the normalised model
        manual = without((x - norms[0].mean) / norms[0].std)
        assert torch.allclose(with_norm(x), manual, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "info"),
    [
        (MnistCNN(), CIFAR),
        (MnistCNN(), DIGITS),
        (CifarCNN(), MNIST),
        (PreActResNet18(), MNIST),
        (PreActResNet18(), DatasetInfo("tiny", (3, 8, 8), 10, (0.5,) * 3, (0.2,) * 3)),
        (SmallCNN(), DatasetInfo("dots", (1, 3, 8), 2, (0.5,), (0.2,))),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_check_rejects_mismatched_shapes(model, info):
    with pytest.raises(ConfigError) as err:
        model.check(info)
    msg = str(err.value)
    assert "\n" not in msg
    assert model.name in msg and info.name in msg
    assert "×".join(map(str, info.shape)) in msg


def test_params_are_validated():
    with pytest.raises(ValueError):
        SmallCNN(channels=(0, 8))
    with pytest.raises(ValueError):
        MLP(hidden=(-1,))
    with pytest.raises(ValueError):
        MnistCNN(width=3)  # unknown parameter


def test_small_cnn_learns_digits_quickly():
    ds = Digits()
    info = ds.info(None)
    train, test = ds.load("train", None), ds.load("test", None)
    torch.manual_seed(0)
    net = SmallCNN().build(info)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(train)).split(64):
            opt.zero_grad()
            F.cross_entropy(net(train.x[idx]), train.y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy > 0.9


def test_builtin_models_are_registered_with_names_and_descriptions():
    from robench.models import robench_register_models

    found: list[type] = []
    robench_register_models(found.append)
    names = {cls.name for cls in found}
    assert names == {"small-cnn", "mlp", "mnist-cnn", "cifar-cnn", "preact-resnet18"}
    assert all(cls.description() for cls in found)
