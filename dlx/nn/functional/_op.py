"""What an op is: a pure pair ``forward(...) -> (y, ctx)`` and ``backward(ctx, dy) -> grads``.

An op is written as a class body holding two plain functions side by side, turned into an
``Op`` by the ``@op`` decorator::

    @op
    class tanh:
        "tanh(x); derivative 1 - y²."
        def forward(x):
            y = get_namespace(x).tanh(x)
            return y, y                     # (output, what backward needs)
        def backward(y, dy):
            return (dy * (1.0 - y * y),)    # one gradient per differentiable input

Then ``tanh(x)`` is the output alone (PyTorch's ``F.tanh``), ``tanh.forward(x)`` is
``(y, ctx)`` and ``tanh.backward(ctx, dy)`` the gradients. The context belongs to the call
and backward consumes it: a second backward with the same context is an error. A forward
may return a third item, side results that are not for backward (batch statistics), which
land in ``ctx.aux``.
"""

from __future__ import annotations


class Context:
    """What one forward call keeps for its backward (``saved``), and its side results (``aux``)."""

    __slots__ = ("op", "saved", "aux", "consumed")

    def __init__(self, op: Op, saved, aux=None):
        self.op, self.saved, self.aux, self.consumed = op, saved, aux, False

    def __repr__(self):
        return f"<context of {self.op.name}{' (consumed)' if self.consumed else ''}>"


class Op:
    """A differentiable operation: ``forward``, ``backward`` and, called, the output alone."""

    def __init__(self, name: str, forward, backward, doc: str | None = None):
        self.name, self._forward, self._backward = name, forward, backward
        self.__doc__ = doc
        self.__name__ = self.__qualname__ = name

    def forward(self, *args, **kwargs):
        """(y, ctx): the output and the context its backward needs."""
        out = self._forward(*args, **kwargs)
        return out[0], Context(self, out[1], out[2] if len(out) > 2 else None)

    def backward(self, ctx: Context, dy, **flags) -> tuple:
        """The gradients (a tuple, one per differentiable input; None where not asked for).
        Consumes ``ctx``: running it twice is a RuntimeError."""
        if not isinstance(ctx, Context) or ctx.op is not self:
            raise TypeError(f"{self.name}.backward: expected a context from {self.name}.forward, "
                            f"got {ctx!r}")
        if ctx.consumed:
            raise RuntimeError(f"{self.name}.backward: this context was already used by a backward; "
                               f"run {self.name}.forward again for a new one")
        ctx.consumed = True
        saved, ctx.saved = ctx.saved, None  # free what forward kept as soon as it is used
        return self._backward(saved, dy, **flags)

    def __call__(self, *args, **kwargs):
        return self._forward(*args, **kwargs)[0]

    def __repr__(self):
        return f"<dlx op {self.name}>"


def op(cls) -> Op:
    """Class decorator: the class's ``forward`` and ``backward`` functions become an ``Op``."""
    return Op(cls.__name__, cls.__dict__["forward"], cls.__dict__["backward"], cls.__doc__)
