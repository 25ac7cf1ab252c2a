"""LeNet-5 (LeCun et al., 1998) as an ``nn.Sequential``, with PyTorch's state-dict names."""

from __future__ import annotations

from dlx import nn

__all__ = ["LeNet5"]


class LeNet5(nn.Sequential):
    """LeNet-5: conv 6@5x5 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 ->
    120 -> 84 -> classes. 3x32x32 inputs (CIFAR-10) by default; ``in_channels=1,
    padding=2`` takes 28x28 MNIST digits to the same 16x5x5 features."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, padding: int = 0,
                 device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=padding, **kw), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, **kw), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, **kw), nn.ReLU(),
            nn.Linear(120, 84, **kw), nn.ReLU(),
            nn.Linear(84, num_classes, **kw),
        )
