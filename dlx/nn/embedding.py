"""Embedding: a learned vector per integer (a class, a token), PyTorch's ``nn.Embedding``."""

from __future__ import annotations

from dlx import init
from dlx._device import device_of, is_array
from dlx.nn import functional as F
from dlx.nn._util import new_parameter
from dlx.nn.module import Module


class Embedding(Module):
    """indices (any shape, integers in [0, num_embeddings)) -> (*indices.shape, embedding_dim):
    row ``i`` of ``weight`` (num_embeddings, embedding_dim), initialised N(0, 1) as in
    PyTorch. ``padding_idx``: that row starts at zero and gets no gradient. The indices get no
    gradient: backward returns None."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"Embedding: sizes must be positive, got ({num_embeddings}, "
                             f"{embedding_dim})")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within [-{num_embeddings}, "
                                 f"{num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.weight = new_parameter((num_embeddings, embedding_dim), device, dtype)
        self.reset_parameters()

    def reset_parameters(self):
        init.normal_(self.weight, 0.0, 1.0)
        if self.padding_idx is not None:
            xp = self.weight.device.xp
            keep = xp.reshape(xp.arange(self.num_embeddings, device=self.weight.data.device)
                              != self.padding_idx, (-1, 1))
            self.weight.data = self.weight.data * xp.astype(keep, self.weight.data.dtype)

    def forward(self, indices):
        name = type(self).__name__
        if not is_array(indices):
            raise TypeError(f"{name}: indices must be an integer array, got {type(indices).__name__}")
        xp = device_of(indices).xp
        if not xp.isdtype(indices.dtype, "integral"):
            raise ValueError(f"{name}: indices must be integers, got dtype {indices.dtype}")
        if device_of(indices) != self.weight.device:
            raise ValueError(f"{name}: indices are on '{device_of(indices)}' but the weights on "
                             f"'{self.weight.device}'; move one of them")
        y, ctx = F.embedding.forward(indices, self.weight.data, self.padding_idx)
        self._keep(ctx)
        return y

    def backward(self, dy):
        _, dw = F.embedding.backward(self._pop(), dy, need_params=self._grad_enabled)
        self._accumulate_grads(weight=dw)
        return None

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
