"""``gradcheck`` (float64 central differences against a module's backward) and
``xp_assert_close`` (array comparison across devices, tolerances per dtype)."""

from __future__ import annotations

import contextlib

import numpy as np

from dlx._device import device_of, to_numpy
from dlx._random import manual_seed
from dlx.dtypes import dtype_name

# (rtol, atol) used when none are given
DEFAULT_TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-10, 1e-12)}


def xp_assert_close(actual, desired, rtol=None, atol=None, check_dtype=True, err_msg=""):
    """Assert two arrays (any devices, or NumPy) are equal within tolerances.

    Defaults come from ``DEFAULT_TOLERANCES`` for the dtype of ``desired``.
    """
    a, d = to_numpy(actual), to_numpy(desired)
    if a.shape != d.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {d.shape}. {err_msg}")
    if check_dtype and a.dtype != d.dtype:
        raise AssertionError(f"dtype mismatch: {a.dtype} vs {d.dtype}. {err_msg}")
    default = DEFAULT_TOLERANCES.get(d.dtype.name, (1e-7, 0.0))
    np.testing.assert_allclose(a, d, rtol=default[0] if rtol is None else rtol,
                               atol=default[1] if atol is None else atol, err_msg=err_msg)


def _replace(dev, host):
    return dev.asarray(host, dtype="float64")


def gradcheck(module, x, *extra, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0, check_params=True,
              upstream=None):
    """Check ``module.backward`` against central differences, for the input and every parameter.

    The scalar checked is L = sum(module(x, *extra) * r) with a fixed random r (or
    ``upstream``); for a loss (0-d output) r is a scalar. Module and ``x`` must be float64.
    ``seed`` reseeds dlx before every forward so random layers (Dropout) use one mask.
    Integer ``x`` (indices, as for Embedding) gets no gradient: backward must return None
    and only the parameters are checked.
    Returns True or raises AssertionError naming the worst element.
    """
    integer_input = dtype_name(x.dtype).startswith(("int", "uint"))  # indices: no gradient
    if dtype_name(x.dtype) != "float64" and not integer_input:
        raise ValueError("gradcheck needs float64 inputs and a float64 module (module.double())")
    dev = device_of(x)
    xp = dev.xp

    def forward(inp):
        if seed is not None:
            manual_seed(seed)
        return module(inp, *extra)

    y = forward(x)
    if upstream is None:
        r_host = np.random.default_rng(1234).standard_normal(tuple(y.shape))
        r = _replace(dev, r_host)
    else:
        r = upstream

    def loss(inp):
        return float(to_numpy(xp.sum(forward(inp) * r)))

    for p in module.parameters():
        p.grad = None
    dx = module.backward(r)
    if integer_input:
        if dx is not None:
            raise AssertionError(f"gradcheck {type(module).__name__}: backward returned a gradient "
                                 f"for integer indices; expected None")
        analytic, targets = {}, {}
    else:
        analytic, targets = {"input": to_numpy(dx)}, {"input": None}
    if check_params:
        for name, p in module.named_parameters():
            if p.requires_grad:
                analytic[name] = None if p.grad is None else to_numpy(p.grad)
                targets[name] = p

    for name, target in targets.items():
        base = to_numpy(x if target is None else target.data).astype(np.float64)
        numeric = np.zeros_like(base)
        flat = base.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            values = []
            for step in (eps, -eps):
                flat[i] = orig + step
                arr = _replace(dev, base)
                if target is None:
                    values.append(loss(arr))
                else:
                    target.data = arr
                    values.append(loss(x))
            flat[i] = orig
            numeric.reshape(-1)[i] = (values[0] - values[1]) / (2 * eps)
        if target is not None:
            target.data = _replace(dev, base)
        got = analytic[name]
        if got is None:
            raise AssertionError(f"gradcheck {type(module).__name__}: no gradient for {name}")
        err = np.abs(got - numeric)
        bound = atol + rtol * np.abs(numeric)
        if not np.all(err <= bound):
            i = int(np.argmax(err - bound))
            idx = [int(k) for k in np.unravel_index(i, numeric.shape)]
            raise AssertionError(
                f"gradcheck {type(module).__name__}: d/d{name}{idx} analytic "
                f"{got.reshape(-1)[i]:.10g} vs numeric {numeric.reshape(-1)[i]:.10g} "
                f"(max abs error {err.max():.3g})"
            )
    return True


@contextlib.contextmanager
def no_host_sync(device="strict"):
    """Inside, any read of ``device``'s arrays back to the host (``bool()``, ``float()``,
    ``int()``, ``to_numpy``) raises ``dlx.HostSyncError``: wrap a training step in it to
    prove the step never waits for the device. Only the strict device can catch reads (it
    stands in for a GPU on machines without one)."""
    from dlx._device import device as _device

    with _device(device).backend.forbid_host_reads():
        yield
