"""The reference kernels: convolution and pooling in plain Array-API code (any ``xp``).

They are the oracle the Numba and CUDA kernels are tested against, and the kernels of the
"strict" device. Only functions of the 2023.12 Array API standard are used, every creation
function gets ``device=x.device``, and nothing imports NumPy.
"""

from . import conv, pooling

__all__ = ["conv", "pooling"]
