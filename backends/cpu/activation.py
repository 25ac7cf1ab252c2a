"""ReLU and the leaky ReLU on NumPy arrays: one Numba pass each way, split over dlx's threads.

The formulas are those of ``dlx.nn.functional.relu`` / ``leaky_relu`` (the xp code every
other device runs), with the same bits: forward max(x, slope * x) (slope 0: max(x, 0)),
backward dy where t > 0 else dy * slope, t being the input (leaky ReLU) or the output (ReLU;
t > 0 exactly where x > 0). The xp code makes two passes forward and four backward (a mask,
its cast, two in-place updates), one thread each. Forward + backward, 2 threads, in one
process alternating with the xp code (AMD EPYC 2-core VM, 2026-12-01, medians of per-round
minimums): the DCGAN discriminator's leaky ReLU at (64, 64, 14, 14) 0.70 -> 0.32 ms, LeNet-5's
first ReLU at (128, 6, 28, 28) 0.50 -> 0.25 ms.

Arrays under ``_PARALLEL_MIN`` elements run on the calling thread: handing a block to a
worker costs ~20 us, more than a pass over a LeNet-5 fully connected layer's output.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .threads import parallel_for

_PARALLEL_MIN = 1 << 16


# The loops run over slices from index 0: indexed x[i] with i from range(lo, hi), Numba
# cannot tell i >= 0 and wraps negative indices element by element, and the loop did not
# vectorise (ReLU forward over 602,112 floats, one thread: 0.49 ms against 0.08 ms over
# slices, and NumPy's 0.29; AMD EPYC VM, 2026-12-01).


@njit(nogil=True, cache=True)
def _forward(lo, hi, x, slope, y):
    """y = max(x, slope * x) over [lo, hi) of the flat x, as NumPy's maximum rounds it: NaN
    stays NaN, and slope 0 is max(x, 0), which turns -0.0 into +0.0."""
    xs, ys = x[lo:hi], y[lo:hi]
    if slope == 0:
        for i in range(xs.size):
            v = xs[i]
            ys[i] = v if not v <= 0 else slope  # slope: a zero of x's dtype
    else:
        for i in range(xs.size):
            v = xs[i]
            ys[i] = v * slope if v < 0 else v


@njit(nogil=True, cache=True)
def _backward(lo, hi, t, dy, slope, dx):
    """dx = dy where t > 0, else dy * slope, over [lo, hi) of the flat arrays."""
    ts, gs, out = t[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(ts.size):
        g = gs[i]
        out[i] = g if ts[i] > 0 else g * slope


def _run(kernel, n, *args):
    if n >= _PARALLEL_MIN:
        parallel_for(kernel, n, *args)
    else:
        kernel(0, n, *args)


def _flat(a, dtype):
    return a.reshape(-1) if a.flags.c_contiguous and a.dtype == dtype else None


def leaky_relu_forward(x, negative_slope):
    """max(x, slope * x) for 0 <= slope <= 1 (slope 0: ReLU), or None where this kernel does
    not apply (another dtype, a non-contiguous x, a slope outside [0, 1])."""
    if x.dtype not in (np.float32, np.float64) or not 0.0 <= negative_slope <= 1.0:
        return None
    xf = _flat(x, x.dtype)
    if xf is None:
        return None
    y = np.empty(x.shape, x.dtype)
    _run(_forward, xf.size, xf, x.dtype.type(negative_slope), y.reshape(-1))
    return y


def leaky_relu_backward(t, dy, negative_slope):
    """dy where t > 0, else dy * slope (t: the leaky ReLU's input, or ReLU's output), or None
    where this kernel does not apply (dtypes, layouts or shapes that differ)."""
    if dy.dtype not in (np.float32, np.float64) or t.shape != dy.shape:
        return None
    tf, dyf = _flat(t, dy.dtype), _flat(dy, dy.dtype)
    if tf is None or dyf is None:
        return None
    dx = np.empty(dy.shape, dy.dtype)
    _run(_backward, dyf.size, tf, dyf, dy.dtype.type(negative_slope), dx.reshape(-1))
    return dx
