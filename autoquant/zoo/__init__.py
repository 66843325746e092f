"""Built-in models: torch definitions whose weights come from a checkpoint or a cached, seeded training run."""

from .cifar_resnet import cifar_resnet, load_cifar_resnet
from .digits_cnn import DigitsCNN, train_digits_cnn
from .mobilenet_cifar import MobileNetCifar, train_mobilenet_cifar

__all__ = [
    "DigitsCNN",
    "MobileNetCifar",
    "cifar_resnet",
    "load_cifar_resnet",
    "train_digits_cnn",
    "train_mobilenet_cifar",
]
