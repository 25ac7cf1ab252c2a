"""The affine map, the table lookup and the shape-only ops: linear, embedding, reshape
(Flatten, Unflatten), identity."""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx.nn.functional._op import op


@op
class linear:
    """y = x W^T + b.  x (*, in), W (out, in), b (out,) or None -> y (*, out).

    backward(ctx, dy, need_dx=True, need_params=True) -> (dx, dW, db); dx is None unless
    ``need_dx`` (the first layer of a model needs none), dW and db unless ``need_params``.
    """

    def forward(x, weight, bias=None):
        xp = get_namespace(x)
        out_features, in_features = weight.shape
        x2 = xp.reshape(x, (-1, in_features))
        y = device_of(weight).backend.matmul(x2, weight.T)
        if bias is not None:
            y = y + bias
        return xp.reshape(y, (*x.shape[:-1], out_features)), (x2, tuple(x.shape), weight, bias is not None)

    def backward(saved, dy, need_dx=True, need_params=True):
        x2, x_shape, weight, has_bias = saved
        xp = get_namespace(dy)
        matmul = device_of(weight).backend.matmul
        dy2 = xp.reshape(dy, (-1, weight.shape[0]))
        dw = db = dx = None
        if need_params:
            dw = matmul(dy2.T, x2)
            if has_bias:
                db = xp.sum(dy2, axis=0)
        if need_dx:
            dx = xp.reshape(matmul(dy2, weight), x_shape)
        return dx, dw, db


@op
class reshape:
    """x viewed with another shape of the same size; backward restores the input's shape."""

    def forward(x, shape):
        return get_namespace(x).reshape(x, tuple(shape)), tuple(x.shape)

    def backward(x_shape, dy):
        return (get_namespace(dy).reshape(dy, x_shape),)


@op
class identity:
    """y = x."""

    def forward(x):
        return x, None

    def backward(_, dy):
        return (dy,)


@op
class embedding:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``indices`` (any shape) ->
    (*indices.shape, dim). backward(ctx, dy, need_params=True) -> (None, dweight): each
    row's gradient is the sum of dy over the places that picked it (none for ``padding_idx``),
    computed as one_hot(indices)^T dy, a matmul every namespace has (no scatter-add in the
    Array API; fine for the class embeddings of a conditional GAN, heavy for large vocabularies).
    """

    def forward(indices, weight, padding_idx=None):
        xp = get_namespace(weight)
        flat = xp.reshape(indices, (-1,))
        y = xp.take(weight, flat, axis=0)
        return xp.reshape(y, (*indices.shape, weight.shape[1])), (flat, weight.shape, padding_idx)

    def backward(saved, dy, need_params=True):
        flat, (num, dim), padding_idx = saved
        if not need_params:
            return None, None
        xp = get_namespace(dy)
        rows = xp.arange(num, device=dy.device)
        picked = xp.reshape(flat, (-1, 1)) == rows  # (N, num)
        if padding_idx is not None:
            picked = picked & (rows != padding_idx)
        matmul = device_of(dy).backend.matmul
        return None, matmul(xp.astype(picked, dy.dtype).T, xp.reshape(dy, (-1, dim)))
