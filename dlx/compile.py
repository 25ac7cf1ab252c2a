"""``dlx.compile_step``: a training step the GPU replays as one CUDA graph.

    step = dlx.compile_step(train_step)    # train_step(x, y) -> device arrays
    for x, y in loader:
        loss = step(x, y)                  # on cuda: one graph launch per batch

On a backend that captures (CUDA), the first call with a given set of input shapes runs
``fn`` eagerly (optimizer state, compiled kernels and lazily made buffers come into being
there), the second captures it into a CUDA graph and every call from then on replays that
graph: the inputs are copied into its static buffers, the random streams and learning
rates move on in device memory, and the host launches one graph. Each set of input shapes
(the last, shorter batch of an epoch) gets its own graph. On cpu and strict, and with
``graph=False``, ``fn`` simply runs.

What ``fn`` may do: any dlx layers, losses and optimizers (``optimizer.step()`` and
``zero_grad()`` inside the step), in-place updates of device arrays made before the first
call (e.g. an epoch's running loss). What it may not do, since a replay repeats only the
device work: read the device from the host (``float(loss)``, ``to_numpy``), make Python
decisions that change between calls, or keep a reference to an array it allocates (the
outputs are the same arrays at every replay: copy what must outlive the next call).
Scheduler steps and anything host-side go between calls. ``dlx.testing.no_host_sync()``
on the strict device finds host reads without a GPU. The graph reads and writes the arrays
the step used when it was captured: everything dlx updates is updated in place (weights,
optimizer state, batch-norm statistics, ``load_state_dict`` copies into them), but moving
the model with ``.to(...)`` or replacing a parameter's array needs a new ``compile_step``.
"""

from __future__ import annotations

from dlx._device import device_of, is_array
from dlx.optim.optimizer import push_hyperparameters

__all__ = ["CompiledStep", "compile_step"]


class CompiledStep:
    """``fn`` run as one captured CUDA graph per input shapes where the device captures, and
    eagerly elsewhere; see the module docstring. ``graphs`` counts the graphs captured."""

    def __init__(self, fn, graph: bool = True):
        if not callable(fn):
            raise TypeError(f"compile_step: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.graph = bool(graph)
        self._graphs: dict = {}  # input signature -> StepGraph
        self._seen: set = set()  # signatures run eagerly once already
        self.graphs = 0

    def __call__(self, *args):
        if not args or not all(is_array(a) for a in args):
            raise TypeError("compile_step: the step takes device arrays only (the batch); pass "
                            "everything else through the closure, e.g. the model and optimizer")
        backend = device_of(args[0]).backend
        if not self.graph or backend.capture_step is None:
            return self.fn(*args)
        key = tuple((tuple(a.shape), str(a.dtype), str(device_of(a))) for a in args)
        entry = self._graphs.get(key)
        if entry is not None and not entry.valid():  # a random stream was reseeded
            del self._graphs[key]
            entry = None
        push_hyperparameters()  # rates set by hand since the last call, to the device
        if entry is None:
            if key not in self._seen:  # first call with these shapes: eager, with the
                self._seen.add(key)  # graph's own kernels, so every step computes alike
                with backend.graph_kernels():
                    return self.fn(*args)
            entry = self._graphs[key] = backend.capture_step(self.fn, args)
            self.graphs += 1
        return entry.replay(args)


def compile_step(fn, graph: bool = True) -> CompiledStep:
    """``fn`` (a training step taking device arrays) as a ``CompiledStep``: captured into a
    CUDA graph and replayed on cuda, run eagerly on cpu and strict or with ``graph=False``."""
    return CompiledStep(fn, graph=graph)
