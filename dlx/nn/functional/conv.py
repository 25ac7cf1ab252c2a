"""2-D convolution and transposed convolution over the device's kernels (``device.backend``).

conv2d:           x (N, C, H, W), weight (OC, C, KH, KW) -> y (N, OC, OH, OW)
conv_transpose2d: x (N, C, H, W), weight (C, OC, KH, KW) -> y (N, OC, OH, OW); it is the
                  backward-data of a convolution, so it reuses the same kernels with the
                  roles of forward and backward-data swapped.
``stride``, ``padding`` and ``dilation`` are (h, w) pairs of ints.
"""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx.backends.base import conv2d_output_size
from dlx.nn.functional._op import op

__all__ = ["conv2d", "conv2d_output_size", "conv_transpose2d", "conv_transpose2d_output_size"]


def conv_transpose2d_output_size(h, w, kernel_size, stride, padding, dilation, output_padding):
    """(OH, OW) of a transposed convolution: (H - 1) s - 2 p + d (K - 1) + output_padding + 1."""
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op_ + 1 for n, k, s, p, d, op_ in
                 zip((h, w), kernel_size, stride, padding, dilation, output_padding))


@op
class conv2d:
    """Cross-correlation of x with ``weight`` plus ``bias`` (PyTorch's conv2d, groups=1).

    backward(ctx, dy, need_dx=True, need_params=True) -> (dx, dweight, dbias).
    """

    def forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        backend = device_of(weight).backend
        geometry = (stride, padding, dilation)
        y, kept = backend.conv2d_forward(x, weight, bias, *geometry)  # kept: for the dweight
        return y, (x, weight, bias is not None, geometry, backend, kept)

    def backward(saved, dy, need_dx=True, need_params=True):
        x, w, has_bias, geometry, backend, kept = saved
        if not need_params:
            dx = backend.conv2d_backward_data(dy, w, tuple(x.shape), *geometry) if need_dx else None
            return dx, None, None
        return backend.conv2d_backward(x, w, dy, *geometry, need_dx=need_dx, need_db=has_bias,
                                       kept=kept)


@op
class conv_transpose2d:
    """The gradient of a conv2d with respect to its input, used as a layer (upsampling).

    backward(ctx, dy, need_dx=True, need_params=True) -> (dx, dweight, dbias).
    """

    def forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                dilation=(1, 1)):
        backend = device_of(weight).backend
        geometry = (stride, padding, dilation)
        oh, ow = conv_transpose2d_output_size(x.shape[2], x.shape[3], weight.shape[2:], stride,
                                              padding, dilation, output_padding)
        out_channels = weight.shape[1]
        y = backend.conv2d_backward_data(x, weight, (x.shape[0], out_channels, oh, ow), *geometry)
        if bias is not None:
            y = y + get_namespace(y).reshape(bias, (1, out_channels, 1, 1))
        return y, (x, weight, bias is not None, geometry, backend)

    def backward(saved, dy, need_dx=True, need_params=True):
        x, w, has_bias, geometry, backend = saved
        dx, kept = backend.conv2d_forward(dy, w, None, *geometry) if need_dx else (None, None)
        dw = db = None
        if need_params:  # the same convolution's weight gradient, with dy in x's role
            dw = backend.conv2d_backward_weight(dy, x, tuple(w.shape), *geometry, kept)
            if has_bias:
                db = get_namespace(dy).sum(dy, axis=(0, 2, 3))
        return dx, dw, db
