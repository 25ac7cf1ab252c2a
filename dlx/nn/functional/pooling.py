"""Pooling (max, average) over the device's kernels, and nearest-neighbour upsampling.

x (N, C, H, W); ``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs of ints.
"""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx.nn.functional._op import op


@op
class max_pool2d:
    """Maximum over each window; the gradient flows to the (first) maximum only."""

    def forward(x, kernel_size, stride, padding=(0, 0)):
        backend = device_of(x).backend
        y, argmax = backend.max_pool2d(x, kernel_size, stride, padding)
        return y, (argmax, tuple(x.shape), kernel_size, stride, padding, backend)

    def backward(saved, dy):
        argmax, x_shape, kernel_size, stride, padding, backend = saved
        return (backend.max_pool2d_backward(dy, argmax, x_shape, kernel_size, stride, padding),)


@op
class avg_pool2d:
    """Mean over each window. ``count_include_pad`` (PyTorch's default) divides by the window
    area, padding included; False divides by the real input elements only."""

    def forward(x, kernel_size, stride, padding=(0, 0), count_include_pad=True):
        backend = device_of(x).backend
        y = backend.avg_pool2d(x, kernel_size, stride, padding, count_include_pad)
        return y, (tuple(x.shape), kernel_size, stride, padding, count_include_pad, backend)

    def backward(saved, dy):
        x_shape, kernel_size, stride, padding, count_include_pad, backend = saved
        return (backend.avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding,
                                            count_include_pad),)


@op
class upsample_nearest2d:
    """(N, C, H, W) -> (N, C, H*sh, W*sw), each pixel repeated; backward sums each block."""

    def forward(x, scale_factor):
        xp = get_namespace(x)
        n, c, h, w = x.shape
        sh, sw = scale_factor
        y = xp.broadcast_to(xp.reshape(x, (n, c, h, 1, w, 1)), (n, c, h, sh, w, sw))
        return xp.reshape(y, (n, c, h * sh, w * sw)), (tuple(x.shape), (sh, sw))

    def backward(saved, dy):
        (n, c, h, w), (sh, sw) = saved
        xp = get_namespace(dy)
        return (xp.sum(xp.reshape(dy, (n, c, h, sh, w, sw)), axis=(3, 5)),)
