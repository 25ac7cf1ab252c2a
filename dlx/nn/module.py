"""Module, Parameter and Sequential: the containers every layer is built from.

A module holds parameters and calls the pure pairs of ``dlx.nn.functional``: ``forward``
computes the output and pushes the call's context on the module's stack; ``backward(dy)``
pops the latest one, returns dL/dx and adds dL/dparam to each parameter's ``.grad``.

Contexts: each forward call keeps its own, so a module called twice before backward keeps
both (a stack, as PyTorch's graph does: backward runs the calls in reverse order), and a
backward with no pending forward is an error (a second backward needs a new forward).
Inside ``dlx.no_grad()`` nothing is kept (inference). A module keeps at most
``MAX_PENDING_CALLS`` contexts: calls that never get a backward (inference outside
``no_grad``, finite differences) drop the oldest, so memory stays bounded; a backward that
would need a dropped context finds none and says so.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict, deque

from dlx._device import Device, copy_into, device_of, is_array, to_numpy
from dlx._device import device as _device
from dlx._grad_mode import is_grad_enabled
from dlx.dtypes import FLOAT_DTYPES, dtype_name

#: Contexts one module keeps waiting for backward; a further call drops the oldest.
MAX_PENDING_CALLS = 16


class Parameter:
    """A trainable array: ``data`` and ``grad`` live on the same device.

    ``grad`` is None until a backward pass writes it; later passes add to it.
    """

    __slots__ = ("data", "grad", "requires_grad", "_optimizers", "__weakref__")

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._optimizers = weakref.WeakSet()  # optimizers holding state for this parameter

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> Device:
        return device_of(self.data)

    def accumulate_grad(self, g) -> None:
        """Add ``g`` to ``.grad`` (the first gradient is stored as it is)."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def _move(self, dev: Device, dtype=None) -> None:
        self.data = dev.asarray(self.data, dtype=dtype)
        if self.grad is not None:
            self.grad = dev.asarray(self.grad, dtype=dtype)
        for opt in list(self._optimizers):
            opt._move_state(self, dev, dtype)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={dtype_name(self.dtype)}, device='{self.device}')"


def _parse_to_args(args, kwargs):
    """Split ``to(...)`` arguments into (device or None, dtype name or None)."""
    dev = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise TypeError(f"to() got unexpected arguments {sorted(kwargs)}")
    for a in args:
        name = a if isinstance(a, str) else None
        if isinstance(a, Device):
            dev = a
        elif name is not None and name in FLOAT_DTYPES:
            dtype = name
        elif name is not None:
            dev = name
        else:
            dtype = dtype_name(a)
    if dtype is not None:
        dtype = dtype_name(dtype)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"modules hold float32 or float64 parameters, not {dtype}")
    return (None if dev is None else _device(dev)), dtype


class Module:
    """Base class of every layer, loss and model.

    Subclasses implement ``forward(x)`` and ``backward(dy)``; assigning a ``Parameter``
    or a ``Module`` to an attribute registers it, ``register_buffer`` registers
    non-trainable state (running statistics).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_grad_enabled", True)
        # one context per forward call awaiting backward, newest last
        object.__setattr__(self, "_contexts", deque(maxlen=MAX_PENDING_CALLS))

    # ---- registration -------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in buffers:
            buffers[name] = value
        elif name in params and value is None:
            params[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def register_buffer(self, name: str, value) -> None:
        """Register non-trainable state that belongs in ``state_dict`` and follows ``to()``."""
        self._buffers[name] = value
        self.__dict__.pop(name, None)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self._parameters[name] = param

    # ---- forward / backward --------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    #: True when ``backward(dy, input_grad=False)`` is accepted: the module then only
    #: accumulates parameter gradients and returns None (saves the first layer's dx).
    can_skip_input_grad = False

    def backward_params(self, dy) -> None:
        """Backward for a training step: accumulate parameter gradients, skipping dL/dx of
        the first layer where the module allows it (nothing uses it)."""
        if self.can_skip_input_grad:
            self.backward(dy, input_grad=False)
        else:
            self.backward(dy)

    def _keep(self, ctx) -> None:
        """Keep the context of a forward call for its backward (nothing under ``no_grad``)."""
        if is_grad_enabled():
            self._contexts.append(ctx)

    def _pop(self):
        """The context of the latest forward call not yet used by a backward."""
        if not self._contexts:
            raise RuntimeError(
                f"{type(self).__name__}.backward() has no forward call to go back through: each "
                f"forward serves one backward (and a module keeps the latest {MAX_PENDING_CALLS}); "
                f"run the forward pass (again) first"
            )
        return self._contexts.pop()

    def _accumulate_grads(self, **grads) -> None:
        """Add each gradient to its parameter's ``.grad`` (none while ``requires_grad_(False)``)."""
        for name, g in grads.items() if self._grad_enabled else ():
            param = getattr(self, name)  # the attribute: a reparametrisation may stand in for it
            if param is not None:
                param.accumulate_grad(g)

    @property
    def pending_calls(self) -> int:
        """Forward calls of this module (not its children) still waiting for backward."""
        return len(self._contexts)

    def release(self) -> None:
        """Drop the contexts of this module and its children that are waiting for backward
        (forward calls whose backward will never run)."""
        for m in self.modules():
            m._contexts.clear()

    # ---- traversal -------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        yield from self._modules.values()

    def named_parameters(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    # ---- modes -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (False) or unfreeze parameters. Frozen, backward still returns dx but
        leaves ``.grad`` alone (the discriminator during a generator step)."""
        for m in self.modules():
            object.__setattr__(m, "_grad_enabled", bool(requires_grad))
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = p.grad * 0

    # ---- device and dtype ---------------------------------------------------------------
    @property
    def device(self) -> Device | None:
        """The device of the first parameter or buffer (None for a stateless module)."""
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return device_of(b)
        return None

    @property
    def dtype(self):
        """The float dtype of the parameters, as a name ('float32'), or None if there are none."""
        for p in self.parameters():
            return dtype_name(p.dtype)
        return None

    def to(self, *args, **kwargs):
        """Move parameters, buffers and optimizer state: ``to("cuda")``, ``to("float64")``,
        ``to(device="cpu", dtype="float32")``. Returns self."""
        dev, dtype = _parse_to_args(args, kwargs)
        for m in self.modules():
            target = dev
            for p in m._parameters.values():
                if p is not None:
                    p._move(target or p.device, dtype)
            for name, b in m._buffers.items():
                if b is None:
                    continue
                is_float = dtype_name(b.dtype) in FLOAT_DTYPES
                m._buffers[name] = (target or device_of(b)).asarray(
                    b, dtype=dtype if is_float else None
                )
            m._contexts.clear()
        return self

    def double(self):
        return self.to(dtype="float64")

    def float(self):
        return self.to(dtype="float32")

    def _check_device(self, x, what: str = "input") -> None:
        """Raise if ``x`` is not an array on this module's device (or dtype differs)."""
        dev = self.device
        if not is_array(x):
            raise TypeError(
                f"{type(self).__name__}: {what} must be an array, got {type(x).__name__}; "
                f"convert it with dlx.asarray(data, device='{dev or 'cpu'}')"
            )
        if dev is not None and not dev.owns(x):
            raise ValueError(
                f"{type(self).__name__}: {what} is on device '{device_of(x)}' but the module's "
                f"parameters are on '{dev}'; move one of them with .to(...)"
            )
        want = self.dtype
        have = dtype_name(x.dtype)
        if want is not None and have != want:
            raise ValueError(
                f"{type(self).__name__}: {what} has dtype {have} but the parameters are {want}; "
                f"cast the input or call .to('{have}') on the module"
            )
        if want is None and have not in FLOAT_DTYPES:
            raise ValueError(
                f"{type(self).__name__}: {what} has dtype {have}; expected float32 or float64"
            )

    # ---- state dict ------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """name -> array (parameters and buffers, in registration order, PyTorch's names)."""
        out = OrderedDict()
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out[pre + name] = p.data
            for name, b in m._buffers.items():
                if b is not None:
                    out[pre + name] = b
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays (NumPy or from any device) into parameters and buffers.

        Raises ``ValueError`` listing every missing, unexpected and mis-shaped key
        (with ``strict=False`` only mis-shaped keys are an error). Nothing is changed
        unless everything fits. Returns (missing_keys, unexpected_keys).
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = []
        for k, v in state_dict.items():
            if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape):
                shapes.append(
                    f"{k}: checkpoint has shape {tuple(getattr(v, 'shape', ()))}, "
                    f"model has {tuple(own[k].shape)}"
                )
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if shapes:
            problems.append("shape mismatches: " + "; ".join(shapes))
        if problems:
            raise ValueError(
                f"load_state_dict into {type(self).__name__} failed ("
                + " | ".join(problems)
                + "); nothing was loaded. Pass strict=False to ignore missing/unexpected keys."
            )
        new_values = {}
        for k, v in state_dict.items():
            if k in own:
                target = own[k]
                host = to_numpy(v)
                new_values[k] = device_of(target).asarray(host.copy(), dtype=target.dtype)
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in m._parameters.items():
                if p is not None and pre + name in new_values:
                    p.data = copy_into(p.data, new_values[pre + name])
            for name in list(m._buffers):
                if pre + name in new_values:
                    m._buffers[name] = copy_into(m._buffers[name], new_values[pre + name])
        return missing, unexpected

    # ---- printing -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name} is {type(m).__name__}, not a Module")
            self._modules[name] = m

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    can_skip_input_grad = True

    def backward(self, dy, input_grad: bool = True):
        """Backward through the modules in reverse. ``input_grad=False`` (what ``dlx.fit``
        passes) lets the first module skip dL/dx, which nothing uses when training; the
        result is then None if the first module can skip it."""
        mods = list(self._modules.values())
        for i in range(len(mods) - 1, 0, -1):
            dy = mods[i].backward(dy)
        if mods and not input_grad and mods[0].can_skip_input_grad:
            return mods[0].backward(dy, input_grad=False)
        return mods[0].backward(dy) if mods else dy

    def append(self, module: Module):
        self._modules[str(len(self._modules))] = module
        return self

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
