"""The kernel seam every backend fills in, and the pieces all backends share.

Shapes use N, C, H, W for the input, OC (out channels), KH, KW for the kernel and
OH, OW for the output. ``stride``, ``padding`` and ``dilation`` always arrive as
``(h, w)`` tuples of ints (the layers normalise them). Every kernel accepts float32
and float64 arrays (float64 for gradient checks) and returns arrays of the same dtype
on the same device.
"""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide (names the cause and the fix)."""


def conv2d_output_size(h, w, kh, kw, stride, padding, dilation):
    """(OH, OW) of a convolution, PyTorch's formula (floor)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def pool2d_output_size(h, w, kernel, stride, padding):
    """(OH, OW) of a pooling window (floor mode)."""
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return oh, ow


class Backend:
    """Interface of a backend. Subclasses set ``name`` and ``xp`` and implement the kernels.

    Arrays and random numbers
      array_device(index)            the ``device=`` object the namespace's creation functions take
      owns(x, index) -> bool         is ``x`` an array of this backend on device ``index``
      asarray(data, index, dtype)    host data (NumPy or Python) -> array on the device
      to_numpy(x)                    device array -> NumPy array (a copy where it must be)
      generator(index, seed)         a ``Generator`` (see below) making arrays on the device
      synchronize(index)             wait for queued work (no-op on CPU)

    Kernels (the seam the layers call; see the module docstring for the letters)
      conv2d(x, w, b, stride, padding, dilation) -> y
                                     x (N,C,H,W), w (OC,C,KH,KW), b (OC,) or None
      conv2d_backward_data(dy, w, x_shape, stride, padding, dilation) -> dx
      conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation) -> dw
      max_pool2d(x, kernel, stride, padding) -> (y, argmax)        argmax: int32 (N,C,OH,OW),
                                                                   flat index h*W + w of the maximum in the
                                                                   unpadded input plane; first maximum wins
      max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding) -> dx
      avg_pool2d(x, kernel, stride, padding, count_include_pad) -> y
      avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad) -> dx

    Optional fused updates (None where a backend has none; the optimizer then runs its xp code)
      adam_step(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, decoupled, step)
                                     one Adam/AdamW update in place, bit-for-bit the xp code's
    """

    name = "base"
    xp = None
    adam_step = None

    def conv2d_backward(self, x, w, dy, stride, padding, dilation, need_dx=True, need_db=True):
        """(dx, dw, db) of a convolution; dx is None when ``need_dx`` is False, db when ``need_db`` is."""
        dx = None
        if need_dx:
            dx = self.conv2d_backward_data(dy, w, tuple(x.shape), stride, padding, dilation)
        dw = self.conv2d_backward_weight(x, dy, tuple(w.shape), stride, padding, dilation)
        db = self.xp.sum(dy, axis=(0, 2, 3)) if need_db else None
        return dx, dw, db


class Generator:
    """Random numbers on one device. Every method returns a new array of the given dtype.

    uniform(shape, low, high, dtype), normal(shape, mean, std, dtype),
    permutation(n) -> int64 array, integers(low, high, shape) -> int64 array,
    get_state() -> JSON-able dict, set_state(state).
    """
