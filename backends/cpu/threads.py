"""Thread counts of the CPU backend: Numba's pool and NumPy's BLAS (placeholder)."""

from __future__ import annotations

import numba


def threading_info() -> dict:
    return {"numba_threads": numba.get_num_threads()}
