"""Op test cases: declare an op once, as one row of a table, and every check runs on every device.

An ``OpCase`` says how to build the module, what to feed it and what to compare it with.
The next op joins with one row (only ``id``, ``module`` and ``inputs`` are required)::

    from dlx import nn
    from dlx.nn import functional as F
    from dlx.testing import OpCase

    OpCase("conv_s2",                                             # names the tests
           module=lambda dev, dtype: nn.Conv2d(2, 3, 3, stride=2).to(dev, dtype),
           inputs=(2, 2, 7, 9),                                   # one standard-normal input
           ref=lambda m, p, x: ref_conv2d(x, p["weight"], p["bias"], m.stride, m.padding,
                                          m.dilation),            # plain NumPy, float64
           torch=lambda torch: torch.nn.Conv2d(2, 3, 3, stride=2),
           functional=lambda m, x: F.conv2d.forward(x, m.weight.data, m.bias.data, m.stride,
                                                    m.padding, m.dilation))

``nn_case("conv_s2", "Conv2d", (2, 3, 3), {"stride": 2}, inputs=(2, 2, 7, 9), ...)`` writes
``module`` and ``torch`` from one (class name, args, kwargs), since the API is PyTorch's
(``torch=False`` for a layer torch cannot match, such as Dropout's random mask).
The test file parametrises one test over its table; each (case, check) pair that applies
becomes a test on every device of the ``dev`` fixture (tests/conftest.py), so a failure
reads ``test_op[cpu-conv_s2-torch]``::

    @pytest.mark.parametrize("case, check", op_checks(CASES))
    def test_op(case, check, dev):
        check(case, dev)

The checks take ``(case, device)`` and raise AssertionError naming the case, the check, the
device and the worst element:

- ``check_gradients``: float64 central differences against ``module.backward``, for the
  first input and every parameter (``gradcheck``).
- ``check_reference``: the float64 forward equals ``ref(m, p, *inputs)``: ``m`` the module
  (for its settings), ``p`` its state dict as float64 NumPy, ``inputs`` the host inputs;
  and the output lives on the device.
- ``check_torch``: float32 forward, input and parameter gradients and buffers equal the
  PyTorch module ``torch(torch_module)`` loaded with the dlx module's state dict
  (``torch_names`` maps dlx names to torch's where they differ; skipped without torch).
- ``check_functional``: ``functional(m, *inputs) -> (y, ctx)`` (the op's pure pair, called
  as the module would) gives the module's output; ``ctx.op.backward(ctx, dy)`` its
  gradients ``(dx, *dparams)`` (None for an absent parameter, e.g. bias=False, is skipped);
  a second backward on the same context raises RuntimeError.
- ``check_float32``: with a float32 module and inputs no float64 array appears: output,
  gradients, buffers and what the module's and the op's contexts keep for backward.

Inputs: a shape is one standard-normal input; else a tuple of ``Input``s from ``normal``,
``uniform``, ``tie_free`` (distinct values, so max pooling has a unique argmax),
``log_probabilities``, ``labels`` (integer class indices), or ``Input(shape, make)``. The
first input is differentiated, the others (targets) are passed along; floats take the
check's dtype, integers stay integers. ``eval_mode`` runs one training forward on other
data (running statistics move) and then ``eval()``. ``not_checked={"gradcheck": "why"}``
leaves a check out of a row, with its reason in the table (a gradient zero by design).
Before every forward the harness reseeds dlx with ``seed``, so a random layer (Dropout)
draws one mask in every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlx._device import Device, to_numpy
from dlx._device import device as _device
from dlx._random import manual_seed
from dlx.dtypes import dtype_name
from dlx.testing._core import gradcheck

__all__ = [
    "CHECKS", "TOLERANCES", "Input", "OpCase", "check_float32", "check_functional",
    "check_gradients", "check_reference", "check_torch", "labels", "log_probabilities",
    "applicable_checks", "nn_case", "normal", "op_checks", "run_checks", "tie_free", "uniform",
]

#: (rtol, atol) per dtype for the reference and functional checks (float64) and the torch
#: check (float32); a case's ``tol`` overrides them.
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-5)}

#: dtypes a float32 run may produce (indices, masks and counters are integers or bools)
FLOAT32_RUN_DTYPES = ("float32", "int32", "int64", "bool")


# ---- inputs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """One argument of the forward call: its shape and ``make(rng, shape) -> np.ndarray``."""

    shape: tuple
    make: Callable

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.make(rng, tuple(self.shape)))


def normal(shape, scale: float = 1.0, shift: float = 0.0) -> Input:
    """scale * N(0, 1) + shift."""
    return Input(shape, lambda rng, s: rng.standard_normal(s) * scale + shift)


def uniform(shape, low: float = 0.0, high: float = 1.0) -> Input:
    """U(low, high): probabilities for BCELoss, soft targets."""
    return Input(shape, lambda rng, s: rng.uniform(low, high, s))


def tie_free(shape, low: float = -2.0, high: float = 2.0) -> Input:
    """A shuffled ramp from low to high: all values distinct, so every max is unique."""
    def make(rng, s):
        n = math.prod(s)
        return rng.permutation(n).reshape(s) / n * (high - low) + low
    return Input(shape, make)


def log_probabilities(shape, dim: int = 1, scale: float = 2.0) -> Input:
    """log_softmax of scale * N(0, 1) along ``dim``: NLLLoss's input."""
    def make(rng, s):
        x = rng.standard_normal(s) * scale
        return x - np.log(np.exp(x).sum(axis=dim, keepdims=True))
    return Input(shape, make)


def labels(shape, num_classes: int) -> Input:
    """Integer class indices in [0, num_classes) (int64)."""
    return Input(shape, lambda rng, s: rng.integers(0, num_classes, s))


# ---- the case ------------------------------------------------------------------------------
@dataclass
class OpCase:
    """One row of an op test table; see the module docstring."""

    id: str
    module: Callable  # (device, dtype name) -> Module
    inputs: tuple  # a shape (one standard-normal input) or a tuple of Input
    ref: Callable | None = None  # (module, float64 state dict, *host inputs) -> y
    torch: Callable | None = None  # (the torch package) -> torch.nn.Module
    torch_names: dict = field(default_factory=dict)  # dlx state/parameter name -> torch's
    functional: Callable | None = None  # (module, *inputs) -> (y, ctx)
    eval_mode: bool = False
    seed: int | None = 0  # dlx.manual_seed before every forward (None: no reseeding)
    tol: dict = field(default_factory=dict)  # dtype name -> (rtol, atol), over TOLERANCES
    grad_tol: tuple = (1e-5, 1e-7)  # gradcheck's (rtol, atol)
    eps: float = 1e-6  # gradcheck's step
    # check name -> why it does not apply (shown in the table, e.g. a gradient zero by design)
    not_checked: dict = field(default_factory=dict)

    def __post_init__(self):
        if all(isinstance(n, int) for n in self.inputs):
            self.inputs = (normal(tuple(self.inputs)),)
        self.inputs = tuple(self.inputs)
        if not self.inputs or not all(isinstance(i, Input) for i in self.inputs):
            raise TypeError(f"OpCase {self.id}: inputs must be a shape or a tuple of Input")

    def __str__(self):
        return self.id

    def tolerance(self, dtype: str) -> tuple:
        return self.tol.get(dtype, TOLERANCES[dtype])

    def host_inputs(self, seed: int = 0) -> list:
        """The forward's arguments as NumPy arrays (floats in float64)."""
        rng = np.random.default_rng(seed)
        return [i.draw(rng) for i in self.inputs]

    def reseed(self) -> None:
        if self.seed is not None:
            manual_seed(self.seed)

    def forward(self, module, args):
        self.reseed()
        return module(*args)

    def build(self, dev: Device, dtype: str):
        """(module, host inputs, device inputs) ready for a check, in eval mode if asked."""
        module = self.module(dev, dtype)
        host = self.host_inputs()
        if self.eval_mode:
            warm = self.host_inputs(seed=1)
            warm[0] = warm[0] * 2 + 1  # running statistics away from their initial 0 and 1
            self.forward(module, _to_device(warm, dev, dtype))
            if hasattr(module, "release"):
                module.release()  # that forward will never see a backward
            module.eval()
        return module, host, _to_device(host, dev, dtype)


def nn_case(id: str, name: str, args: tuple = (), kwargs: dict | None = None, *, inputs,
            torch: bool = True, **fields) -> OpCase:
    """An OpCase for ``dlx.nn.<name>(*args, **kwargs)``, with ``torch.nn.<name>(*args,
    **kwargs)`` as its oracle unless ``torch=False`` (random layers)."""
    from dlx import nn

    kwargs = dict(kwargs or {})

    def module(dev, dtype):
        return getattr(nn, name)(*args, **kwargs).to(dev, dtype)

    def torch_module(torch_pkg):
        return getattr(torch_pkg.nn, name)(*args, **kwargs)

    return OpCase(id, module, inputs, torch=torch_module if torch else None, **fields)


# ---- helpers -------------------------------------------------------------------------------
def _to_device(host, dev: Device, dtype: str) -> list:
    return [dev.asarray(h, dtype=dtype if h.dtype.kind == "f" else None) for h in host]


def _where(case: OpCase, check: str, dev) -> str:
    return f"{case.id} [{check} on {dev}]"


def _upstream(shape, dev: Device, dtype: str, seed: int):
    """A fixed random dL/dy (0-d for a loss)."""
    r = np.asarray(np.random.default_rng(seed).standard_normal(tuple(shape)))
    return dev.asarray(r, dtype=dtype)


def _compare(where: str, what: str, actual, desired, rtol: float, atol: float,
             check_dtype: bool = True) -> None:
    """Assert |actual - desired| <= atol + rtol |desired| everywhere; the message names the
    worst element, its index and both values."""
    if actual is None:
        raise AssertionError(f"{where}: {what} is None (expected an array of shape "
                             f"{tuple(np.shape(desired))})")
    a, d = np.asarray(to_numpy(actual)), np.asarray(to_numpy(desired))
    if a.shape != d.shape:
        raise AssertionError(f"{where}: {what} has shape {a.shape}, expected {d.shape}")
    if check_dtype and a.dtype != d.dtype:
        raise AssertionError(f"{where}: {what} has dtype {a.dtype}, expected {d.dtype}")
    a64, d64 = a.astype(np.float64), d.astype(np.float64)
    err = np.abs(a64 - d64)
    bound = atol + rtol * np.abs(d64)
    bad = ~(err <= bound)  # NaN counts as bad
    if not bad.any():
        return
    excess = np.where(np.isnan(err), np.inf, err - bound)
    i = tuple(int(k) for k in np.unravel_index(int(np.argmax(excess)), a.shape)) if a.ndim else ()
    raise AssertionError(
        f"{where}: {what} differs in {int(bad.sum())} of {a.size} elements; worst at "
        f"{list(i)}: got {a64[i]:.10g}, expected {d64[i]:.10g} (|diff| {err[i]:.3g} > "
        f"atol {atol:g} + rtol {rtol:g} * |expected|)"
    )


def _arrays_in(obj, label: str, depth: int = 0):
    """(label, array) for every array in obj: arrays, tuples/lists, contexts (saved, aux)."""
    if hasattr(obj, "__array_namespace__") and hasattr(obj, "dtype"):
        yield label, obj
    elif isinstance(obj, (tuple, list)) and depth < 4:
        for k, o in enumerate(obj):
            yield from _arrays_in(o, f"{label}[{k}]", depth + 1)
    elif hasattr(obj, "saved") and hasattr(obj, "aux") and depth < 4:  # an op's Context
        yield from _arrays_in(obj.saved, f"{label}.saved", depth + 1)
        yield from _arrays_in(obj.aux, f"{label}.aux", depth + 1)


def _kept_by(module) -> list:
    """(label, array) for what the module and its children keep for backward."""
    found = []
    for name, m in module.named_modules():
        state = m.__dict__
        for key in ("_contexts", "_cache"):  # contexts of the functional core, or a legacy cache
            if state.get(key) is not None:
                found += _arrays_in(state[key], f"module{'.' + name if name else ''}.{key}")
    return found


# ---- the checks ----------------------------------------------------------------------------
def check_gradients(case: OpCase, device) -> None:
    """float64 central differences against the module's backward: input and every parameter."""
    dev = _device(device)
    module, _, args = case.build(dev, "float64")
    rtol, atol = case.grad_tol
    try:
        gradcheck(module, args[0], *args[1:], eps=case.eps, rtol=rtol, atol=atol, seed=case.seed)
    except AssertionError as e:
        raise AssertionError(f"{_where(case, 'gradcheck', dev)}: {e}") from None


def check_reference(case: OpCase, device) -> None:
    """float64 forward against the case's plain-NumPy reference; the output is on the device."""
    if case.ref is None:
        raise ValueError(f"{case.id}: no reference (ref=) to check against")
    dev = _device(device)
    where = _where(case, "reference", dev)
    module, host, args = case.build(dev, "float64")
    # before the forward: a training forward moves running statistics
    params = {k: to_numpy(v).astype(np.float64) for k, v in module.state_dict().items()}
    y = case.forward(module, args)
    if not dev.owns(y):
        raise AssertionError(f"{where}: the output is a {type(y).__name__}, not an array on {dev}")
    expected = np.asarray(case.ref(module, params, *host), dtype=np.float64)
    _compare(where, "output", y, expected, *case.tolerance("float64"))


def check_torch(case: OpCase, device) -> None:
    """float32 forward, gradients (input, parameters) and buffers against PyTorch."""
    if case.torch is None:
        raise ValueError(f"{case.id}: no torch module (torch=) to check against")
    import pytest

    torch = pytest.importorskip("torch")
    dev = _device(device)
    where = _where(case, "torch", dev)
    rtol, atol = case.tolerance("float32")
    names = case.torch_names
    module, _, args = case.build(dev, "float32")
    tm = case.torch(torch)
    tm.load_state_dict({names.get(k, k): torch.from_numpy(np.array(to_numpy(v)))
                        for k, v in module.state_dict().items()})
    tm.train(module.training)
    targs = [torch.from_numpy(np.array(to_numpy(a))) for a in args]
    float_input = targs[0].is_floating_point()  # integer indices (Embedding) get no gradient
    if float_input:
        targs[0].requires_grad_(True)
    ty = tm(*targs)
    y = case.forward(module, args)
    _compare(where, "output", y, ty.detach().numpy(), rtol, atol)
    r = _upstream(tuple(y.shape), dev, "float32", seed=3)
    ty.backward(torch.from_numpy(np.array(to_numpy(r))))
    dx = module.backward(r)
    if float_input:
        _compare(where, "input gradient", dx, targs[0].grad.numpy(), rtol, atol)
    elif dx is not None:
        raise AssertionError(f"{where}: backward returned a gradient for integer indices")
    tparams, tbuffers = dict(tm.named_parameters()), dict(tm.named_buffers())
    for name, p in module.named_parameters():
        tgrad = tparams[names.get(name, name)].grad
        _compare(where, f"{name}.grad", p.grad, tgrad.numpy(), rtol, atol)
    for name, b in module.named_buffers():
        _compare(where, f"buffer {name}", b, tbuffers[names.get(name, name)].numpy(), rtol, atol)


def check_functional(case: OpCase, device) -> None:
    """The op's pure pair gives the module's output and gradients; its context is single-use."""
    if case.functional is None:
        raise ValueError(f"{case.id}: no functional call (functional=) to check")
    dev = _device(device)
    where = _where(case, "functional", dev)
    rtol, atol = case.tolerance("float64")
    module, _, args = case.build(dev, "float64")
    # the op first: it changes nothing, while a training forward of the module moves its
    # running statistics
    case.reseed()
    yf, ctx = case.functional(module, *args)
    op = getattr(ctx, "op", None)
    if op is None or not hasattr(op, "backward"):
        raise AssertionError(f"{where}: functional must return (y, ctx) from an op's forward, "
                             f"got a {type(ctx).__name__} as ctx")
    y = case.forward(module, args)
    _compare(where, f"{op.name}.forward output vs the module's", yf, y, rtol, atol)
    r = _upstream(tuple(y.shape), dev, "float64", seed=5)
    dx = module.backward(r)
    grads = op.backward(ctx, r)
    if not isinstance(grads, tuple) or not grads:
        raise AssertionError(f"{where}: {op.name}.backward must return a tuple of gradients, got "
                             f"{type(grads).__name__}")
    if dx is not None or grads[0] is not None:  # both None for integer indices (Embedding)
        _compare(where, f"{op.name}.backward dx vs the module's", grads[0], dx, rtol, atol)
    params = list(module.named_parameters())
    fparams = [g for g in grads[1:] if g is not None]
    if len(fparams) != len(params):
        raise AssertionError(f"{where}: {op.name}.backward gave {len(fparams)} parameter gradients, "
                             f"the module has {len(params)} parameters {[n for n, _ in params]}")
    for (name, p), g in zip(params, fparams):
        _compare(where, f"{op.name}.backward d{name} vs the module's {name}.grad", g, p.grad,
                 rtol, atol)
    try:
        op.backward(ctx, r)
    except RuntimeError:
        pass
    else:
        raise AssertionError(f"{where}: a second {op.name}.backward on the same context did not "
                             f"raise RuntimeError (backward must consume its context)")


def check_float32(case: OpCase, device) -> None:
    """A float32 run (module and, if given, the functional pair) makes no float64 array."""
    dev = _device(device)
    module, _, args = case.build(dev, "float32")
    y = case.forward(module, args)
    found = [("output", y)] + _kept_by(module)  # before backward, which consumes contexts
    ones = dev.asarray(np.ones(tuple(y.shape), np.float32))
    found.append(("input gradient", module.backward(ones)))
    found += [(f"{n}.grad", p.grad) for n, p in module.named_parameters()]
    found += [(f"buffer {n}", b) for n, b in module.named_buffers()]
    if case.functional is not None:
        case.reseed()
        yf, ctx = case.functional(module, *args)
        found += [("functional output", yf)] + list(_arrays_in(ctx, "functional ctx"))
        found += list(_arrays_in(list(ctx.op.backward(ctx, ones)), "functional gradients"))
    bad = [f"{label} is {dtype_name(a.dtype)}" for label, a in found
           if a is not None and dtype_name(a.dtype) not in FLOAT32_RUN_DTYPES]
    if bad:
        raise AssertionError(f"{_where(case, 'float32', dev)}: " + "; ".join(bad))


#: name -> check; ``op_checks`` makes one test per (case, applicable check)
CHECKS = {
    "gradcheck": check_gradients,
    "reference": check_reference,
    "torch": check_torch,
    "functional": check_functional,
    "float32": check_float32,
}


def applicable_checks(case: OpCase) -> list:
    """Names of the checks the case declares enough for."""
    given = {"reference": case.ref, "torch": case.torch, "functional": case.functional}
    return [name for name in CHECKS
            if given.get(name, True) is not None and name not in case.not_checked]


def op_checks(cases, only=None) -> list:
    """``pytest.param(case, check, id="<case>-<check>")`` for every case and every check it
    applies to (``only``: a subset of CHECKS' names); the torch ones are marked ``torch``."""
    import pytest

    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    params = []
    for case in cases:
        for name in applicable_checks(case):
            if only is None or name in only:
                marks = [pytest.mark.torch] if name == "torch" else []
                params.append(pytest.param(case, CHECKS[name], id=f"{case.id}-{name}", marks=marks))
    return params


def run_checks(case: OpCase, device="cpu") -> None:
    """Every applicable check of one case on one device (outside pytest: a notebook, a script);
    the torch check only where torch is installed."""
    import importlib.util

    for name in applicable_checks(case):
        if name != "torch" or importlib.util.find_spec("torch") is not None:
            CHECKS[name](case, device)
