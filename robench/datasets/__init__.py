"""Built-in datasets, registered through the same hook a third-party plugin uses."""

from robench import hookimpl


@hookimpl
def robench_register_datasets(register):
    from robench.datasets.cifar10 import CIFAR10
    from robench.datasets.digits import Digits
    from robench.datasets.imagefolder import ImageFolder
    from robench.datasets.mnist import MNIST
    from robench.datasets.npz import Npz

    for cls in (Digits, MNIST, CIFAR10, Npz, ImageFolder):
        register(cls)
