"""Convolution by im2col + GEMM in plain Array-API code, forward and both backwards.

im2col gathers, for each of the KH*KW kernel offsets (i, j), the strided slice of the
zero-padded input that offset (i, j) sees: ``x_pad[:, :, i*DH : i*DH + SH*(OH-1)+1 : SH, ...]``
is an (N, C, OH, OW) block. Stacked, they form cols (N, C*KH*KW, OH*OW), and the
convolution is one matmul with the weight reshaped to (OC, C*KH*KW). col2im is the
adjoint: the same slices, added into instead of read from.
"""

from __future__ import annotations

from ..base import conv2d_output_size


def namespace(x):
    """The Array-API namespace of ``x`` (array-api-compat's wrapper for CuPy, which has none)."""
    try:
        return x.__array_namespace__()
    except AttributeError:
        from array_api_compat import array_namespace

        return array_namespace(x)


def _sizes(x_shape, w_shape, stride, padding, dilation):
    N, C, H, W = x_shape
    OC, WC, KH, KW = w_shape
    if WC != C:
        raise ValueError(f"conv2d: input has {C} channels but the weight expects {WC}")
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"conv2d: output size {OH}x{OW} is empty for input {H}x{W}, kernel {KH}x{KW}, "
            f"stride {stride}, padding {padding}, dilation {dilation}"
        )
    return N, C, H, W, OC, KH, KW, OH, OW


def _window(i, j, OH, OW, stride, dilation):
    """The slice of the padded input that kernel offset (i, j) sees, for every output pixel."""
    h0, w0 = i * dilation[0], j * dilation[1]
    return (
        slice(None),
        slice(None),
        slice(h0, h0 + stride[0] * (OH - 1) + 1, stride[0]),
        slice(w0, w0 + stride[1] * (OW - 1) + 1, stride[1]),
    )


def pad2d(x, padding, value=0.0):
    """x (N, C, H, W) surrounded by ``padding`` rows/columns of ``value`` (a new array)."""
    xp = namespace(x)
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype, device=x.device)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out


def unpad2d(x_pad, padding, H, W):
    """The inner (H, W) plane of a padded array (the adjoint of ``pad2d``)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x_pad
    return x_pad[:, :, ph : ph + H, pw : pw + W]


def im2col(x, KH, KW, stride, padding, dilation):
    """x (N, C, H, W) -> cols (N, C*KH*KW, OH*OW), rows ordered (c, i, j) like w.reshape."""
    xp = namespace(x)
    N, C, H, W = x.shape
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    x_pad = pad2d(x, padding)
    blocks = [x_pad[_window(i, j, OH, OW, stride, dilation)] for i in range(KH) for j in range(KW)]
    cols = xp.stack(blocks, axis=2)  # (N, C, KH*KW, OH, OW)
    return xp.reshape(cols, (N, C * KH * KW, OH * OW))


def col2im(cols, x_shape, KH, KW, stride, padding, dilation):
    """cols (N, C*KH*KW, OH*OW) -> (N, C, H, W), summing where windows overlap."""
    xp = namespace(cols)
    N, C, H, W = x_shape
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    ph, pw = padding
    cols = xp.reshape(cols, (N, C, KH, KW, OH, OW))
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype, device=cols.device)
    for i in range(KH):
        for j in range(KW):
            dx_pad[_window(i, j, OH, OW, stride, dilation)] += cols[:, :, i, j, :, :]
    return unpad2d(dx_pad, padding, H, W)


def conv2d(x, w, b, stride, padding, dilation):
    """y (N, OC, OH, OW) = w (OC, C, KH, KW) cross-correlated with x (N, C, H, W), plus b (OC,)."""
    xp = namespace(x)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    cols = im2col(x, KH, KW, stride, padding, dilation)
    y = xp.matmul(xp.reshape(w, (OC, C * KH * KW)), cols)  # (N, OC, OH*OW)
    y = xp.reshape(y, (N, OC, OH, OW))
    if b is not None:
        y = y + xp.reshape(b, (1, OC, 1, 1))
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, dilation):
    """dL/dx (N, C, H, W) from dL/dy (N, OC, OH, OW): w^T @ dy, then col2im."""
    xp = namespace(dy)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x_shape, w.shape, stride, padding, dilation)
    w_t = xp.permute_dims(xp.reshape(w, (OC, C * KH * KW)), (1, 0))
    dcols = xp.matmul(w_t, xp.reshape(dy, (N, OC, OH * OW)))  # (N, C*KH*KW, OH*OW)
    return col2im(dcols, x_shape, KH, KW, stride, padding, dilation)


def conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation, kept=None):
    """dL/dw (OC, C, KH, KW) = sum over N and output pixels of dy x cols (``kept``: unused,
    this backend keeps nothing from the forward)."""
    xp = namespace(x)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w_shape, stride, padding, dilation)
    cols = im2col(x, KH, KW, stride, padding, dilation)
    dy = xp.reshape(dy, (N, OC, OH * OW))
    dw = xp.tensordot(dy, cols, axes=([0, 2], [0, 2]))  # (OC, C*KH*KW)
    return xp.reshape(dw, (OC, C, KH, KW))
