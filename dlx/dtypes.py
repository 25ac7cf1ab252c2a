"""Dtype names: one spelling ('float32') for the dtypes of NumPy, CuPy and array-api-strict.

dlx code compares and stores dtypes by name, so it never needs the array library that made
them. The backends keep their own copy of ``dtype_name``: they never import ``dlx``.
"""

from __future__ import annotations

#: the dtypes a module's parameters may have (float32 by default, float64 for gradient checks)
FLOAT_DTYPES = ("float32", "float64")


def dtype_name(dtype) -> str:
    """'float32' for np.float32, np.dtype('float32'), 'float32', array_api_strict.float32,
    CuPy's float32, ... ."""
    if isinstance(dtype, str):
        return dtype
    for attr in ("name", "__name__"):  # a NumPy/CuPy dtype, then a NumPy scalar type
        name = getattr(dtype, attr, None)
        if isinstance(name, str):
            return name
    return str(dtype).rsplit(".", 1)[-1]  # array_api_strict.float32


def is_float(dtype) -> bool:
    """True for float32 and float64."""
    return dtype_name(dtype) in FLOAT_DTYPES
