"""The built-in models' names, parameters and input checks, without torch.

What validating a benchmark reads of a model (:mod:`robench.bases`): each model in its own
module (``small.py``, ...) extends its class here, so ``robench.models.small.SmallCNN.Params``
is :class:`SmallCNNBase.Params`, and ``robench validate`` checks a benchmark's models without
importing torch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from robench.bases import DatasetInfo, ModelBase
from robench.errors import ConfigError
from robench.plugin import Params

PosInt = Annotated[int, Field(ge=1)]


class SmallCNNBase(ModelBase):
    """The small CNN's name, parameters and check (:class:`robench.models.small.SmallCNN`)."""

    name = "small-cnn"

    class Params(Params):
        channels: tuple[PosInt, PosInt] = Field(
            (16, 32), description="output channels of the two 3×3 convolutions"
        )
        hidden: PosInt = Field(64, description="width of the hidden fully connected layer")
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")

    def check(self, info: DatasetInfo) -> None:
        _, h, w = info.shape
        if h < 4 or w < 4:
            got = "×".join(map(str, info.shape))
            raise ConfigError(
                f"model {self.name!r} needs images of at least 4×4, but dataset {info.name!r} "
                f"has {got}"
            )


class MLPBase(ModelBase):
    """The MLP's name and parameters (:class:`robench.models.small.MLP`)."""

    name = "mlp"

    class Params(Params):
        hidden: tuple[PosInt, ...] = Field(
            (128,), description="widths of the hidden layers, each followed by a ReLU"
        )
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")


class MnistCNNBase(ModelBase):
    """The NSL MNIST CNN's name, parameters and input shape (:class:`robench.models.mnist_cnn.
    MnistCNN`)."""

    name = "mnist-cnn"
    input_shapes = ((1, 28, 28),)

    class Params(Params):
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")


class CifarCNNBase(ModelBase):
    """The CIFAR tutorial CNN's name, parameters and input shape (:class:`robench.models.
    cifar_cnn.CifarCNN`)."""

    name = "cifar-cnn"
    input_shapes = ((3, 32, 32),)

    class Params(Params):
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")


class PreActResNet18Base(ModelBase):
    """PreAct ResNet-18's name, parameters and check (:class:`robench.models.preact_resnet.
    PreActResNet18`)."""

    name = "preact-resnet18"

    class Params(Params):
        normalize: bool = Field(True, description="standardise inputs with the dataset's mean/std")

    def check(self, info: DatasetInfo) -> None:
        c, h, w = info.shape
        if c != 3 or h < 16 or w < 16:
            got = "×".join(map(str, info.shape))
            raise ConfigError(
                f"model {self.name!r} takes 3-channel images of at least 16×16, but dataset "
                f"{info.name!r} has {got}"
            )


#: the base of each built-in model, by name (:meth:`robench.registry.Registry.get_base`)
BASES: dict[str, type[ModelBase]] = {
    cls.name: cls for cls in (SmallCNNBase, MLPBase, MnistCNNBase, CifarCNNBase, PreActResNet18Base)
}
