"""A fully connected network as an ``nn.Sequential``, with PyTorch's state-dict names."""

from __future__ import annotations

from dlx import nn

__all__ = ["MLP"]


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
