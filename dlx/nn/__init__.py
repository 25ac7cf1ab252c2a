"""Layers, activations, losses and containers, with PyTorch's names, shapes and defaults."""

from dlx.nn import utils  # noqa: E402  (spectral_norm needs the layers above)
from dlx.nn.activation import ELU, SELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from dlx.nn.conv import Conv2d, ConvTranspose2d
from dlx.nn.embedding import Embedding
from dlx.nn.linear import Flatten, Identity, Linear, Unflatten
from dlx.nn.loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HingeGANLoss,
    MSELoss,
    NLLLoss,
)
from dlx.nn.module import Module, Parameter, Sequential
from dlx.nn.normalization import BatchNorm1d, BatchNorm2d, Dropout, SyncBatchNorm
from dlx.nn.pooling import AvgPool2d, MaxPool2d, Upsample

__all__ = [
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "BCELoss", "BCEWithLogitsLoss", "Conv2d",
    "ConvTranspose2d", "CrossEntropyLoss", "Dropout", "ELU", "Embedding", "Flatten",
    "HingeGANLoss", "Identity", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "Module",
    "MSELoss", "NLLLoss", "Parameter", "ReLU", "SELU", "Sequential", "Sigmoid", "Softmax",
    "SyncBatchNorm", "Tanh", "Unflatten", "Upsample", "utils",
]
