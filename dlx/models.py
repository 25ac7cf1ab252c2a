"""Ready-made models with PyTorch's state-dict names (they are ``nn.Sequential``s)."""

from __future__ import annotations

from dlx import nn
from dlx.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "LeNet5", "MLP", "MLPDiscriminator", "MLPGenerator"]


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


class MLP(nn.Sequential):
    """Fully connected network: ``sizes=[784, 50, 10]`` gives Linear(784, 50) -> act ->
    Linear(50, 10); ``dropout`` > 0 adds Dropout after each hidden activation."""

    def __init__(self, sizes, activation: type = nn.ReLU, dropout: float = 0.0, device=None,
                 dtype=None):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
