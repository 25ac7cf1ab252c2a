"""Fused optimizer updates on the GPU: the launcher of ``adam_group`` in optim.cu.

``dlx.optim.Adam`` calls ``device.backend.adam_step`` where a backend offers it (this one
does, unless ``DLX_CUDA_FUSED=0``) and otherwise runs its own xp code; both give the same
bits (tests/test_optim.py checks it on the GPU). One launch updates a whole parameter group:
the kernel finds each tensor through a table of addresses, uploaded once and reused while
the arrays stay where they are (a captured step's arrays never move).
"""

from __future__ import annotations

import cupy
import numpy as np

from . import kernels as K

FAMILY = "optim"
DECAY_MODES = {None: 0, "coupled": 1, "decoupled": 2}
MAX_TENSORS_PER_LAUNCH = 65535  # gridDim.y
_tables: dict = {}  # table bytes -> device table (the last few; a step reuses its own)
_MAX_TABLES = 16


def _table(rows: np.ndarray):
    key = rows.tobytes()
    table = _tables.get(key)
    if table is None:
        if len(_tables) >= _MAX_TABLES:
            _tables.pop(next(iter(_tables)))
        table = _tables[key] = K.upload(rows)
    if K.current_capture is not None:  # the graph reads it at every replay
        K.current_capture.keep.append(table)
    return table


def adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, entries, lr, *, beta1, beta2, eps,
              weight_decay, decoupled):
    """One Adam (``decoupled=False``) or AdamW step for a parameter group, in place on every
    array of ``params``, ``exp_avgs`` and ``exp_avg_sqs``. ``steps`` is the group's float64
    step-count vector (already counted for this step), ``entries[i]`` the entry of
    ``params[i]`` in it, ``lr`` the group's float64 0-d learning rate, both on the GPU."""
    op = "adam_step"
    if not params:
        return
    if steps.dtype != cupy.float64 or lr.dtype != cupy.float64 or lr.ndim != 0:
        raise ValueError(f"{op}: steps and lr must be float64 device arrays (lr 0-d), got "
                         f"{steps.dtype} {tuple(steps.shape)} and {lr.dtype} {tuple(lr.shape)}")
    by_dtype: dict = {}
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        dtype, dev = K.check_float_arrays(op, p=p, grad=g, exp_avg=m, exp_avg_sq=v)
        for name, a in (("grad", g), ("exp_avg", m), ("exp_avg_sq", v)):
            if a.shape != p.shape:
                raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, the parameter {tuple(p.shape)}")
        if p.size:
            by_dtype.setdefault((dtype, dev), []).append(
                (K.pointer(p), K.pointer(g), K.pointer(m), K.pointer(v), p.size, int(entries[i])))
    mode = DECAY_MODES[None if weight_decay == 0 else ("decoupled" if decoupled else "coupled")]
    for (dtype, dev), rows in by_dtype.items():
        real = np.dtype(dtype).type
        scalars = (*K.i32(mode), np.float64(weight_decay), np.float64(beta1), np.float64(beta2),
                   real(1 - beta1), real(beta2), real(1 - beta2), real(eps))
        with cupy.cuda.Device(dev):
            for lo in range(0, len(rows), MAX_TENSORS_PER_LAUNCH):
                part = np.asarray(rows[lo : lo + MAX_TENSORS_PER_LAUNCH], dtype=np.int64)
                blocks = K.grid_1d(int(part[:, 4].max()), dev)[0]
                K.run(FAMILY, "adam_group", dtype, (blocks, len(part), 1), (K.BLOCK, 1, 1),
                      (_table(part), steps, lr, *scalars))
