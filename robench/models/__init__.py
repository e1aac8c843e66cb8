"""Built-in models, registered through the same hook a third-party plugin uses."""

from robench import hookimpl


@hookimpl
def robench_register_models(register):
    from robench.models.cifar_cnn import CifarCNN
    from robench.models.mnist_cnn import MnistCNN
    from robench.models.preact_resnet import PreActResNet18
    from robench.models.small import MLP, SmallCNN

    for cls in (SmallCNN, MLP, MnistCNN, CifarCNN, PreActResNet18):
        register(cls)
