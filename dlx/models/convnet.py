"""A small VGG-style convnet, another architecture than LeNet-5: the independent MNIST
classifier that judges a GAN's samples (it plays no part in training or choosing a GAN)."""

from __future__ import annotations

from dlx import nn

__all__ = ["ConvNet"]


class ConvNet(nn.Sequential):
    """Two blocks of (conv 3x3 pad 1 -> BatchNorm -> ReLU) x 2 -> max-pool 2, with
    ``width`` and 2 ``width`` channels, then Linear(128) -> ReLU -> Dropout(0.3) -> classes.
    (N, in_channels, S, S) inputs with S divisible by 4 (28 for MNIST, 32 for CIFAR-10)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 image_size: int = 28, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        w2 = 2 * width
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(width, **kw),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(width, **kw),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, w2, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(w2, **kw), nn.ReLU(),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(w2, **kw), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(w2 * (image_size // 4) ** 2, 128, **kw), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, num_classes, **kw),
        )
