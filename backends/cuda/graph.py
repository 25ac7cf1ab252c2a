"""Whole-step capture on the GPU: a training step recorded once into a CUDA graph (CuPy's
stream capture) and replayed per batch, so the host launches one graph instead of some forty
kernels a step.

What capture needs, and where each need is met:

- The graph bakes in every address it touches. The step's inputs enter through static
  buffers (``StepGraph.replay`` copies each batch into them); everything the step allocates
  comes from a memory pool of the graph's own, which nothing else allocates from, kept alive
  with the graph; arrays the graph reads that the launchers made (the optimizer's address
  tables) are kept by ``Capture.keep``.
- Nothing in the step may copy between host and device: launchers that need a small host
  table (optim.py) make it with ``kernels.upload``, which during a capture allocates and
  copies right after it ends. A read back to the host is an error there (CuPy refuses it);
  ``dlx.testing.no_host_sync`` finds such reads on the CPU first.
- What changes between steps is read from device memory, not from launch arguments: the
  optimizers' learning rates and step counts (dlx/optim), and the random streams' call
  numbers (rng.py: ``before_replay`` writes each generator's counter into its base word).
- cuBLAS refuses capture: ``CUDABackend.matmul`` uses dlx's GEMM (gemm.cu) inside a capture,
  and everywhere while ``graph_kernels()`` is on, so an eager step can run the very kernels of
  the graph (that is how the replay is tested bit for bit against eager steps).
"""

from __future__ import annotations

import cupy

from . import kernels as K


class CaptureError(RuntimeError):
    """A step could not be captured into a CUDA graph (it read the device from the host,
    copied host memory, or called a library that refuses capture)."""


class StepGraph:
    """One captured step: ``replay(args)`` copies ``args`` into the static inputs, moves the
    random streams on, launches the graph on the current stream and returns the step's
    outputs (the same arrays every replay: copy what must outlive the next one)."""

    def __init__(self, graph, inputs, outputs, capture, pool, stream):
        self._graph, self._inputs, self.outputs = graph, inputs, outputs
        self._capture, self._pool, self._stream = capture, pool, stream
        self._keys = {gen: gen._key for gen in capture.rng_calls}

    def valid(self) -> bool:
        """False when a random stream the graph draws from was reseeded (another key): the
        step must be captured again."""
        return all(gen._key == key for gen, key in self._keys.items())

    def replay(self, args):
        for static, a in zip(self._inputs, args):
            static[...] = a
        for gen, calls in self._capture.rng_calls.items():
            gen.before_replay(calls)
        self._graph.launch(stream=cupy.cuda.get_current_stream())
        if K.sync_enabled():
            cupy.cuda.get_current_stream().synchronize()
        return self.outputs


def capture_step(fn, args) -> StepGraph:
    """Capture ``fn(*static_inputs)`` (device arrays shaped as ``args``) into a CUDA graph.

    The caller has run ``fn`` eagerly at least once with arrays of these shapes (optimizer
    state, compiled kernels and lazily made buffers exist), and calls ``replay`` to run it:
    the capture itself computes nothing."""
    current = cupy.cuda.get_current_stream()
    inputs = []
    for a in args:
        static = cupy.empty_like(a)
        static[...] = a
        inputs.append(static)
    pool = cupy.cuda.MemoryPool()  # the graph's own: nothing else ever allocates from it
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.wait_event(current.record())
    capture = K.Capture()
    K.current_capture = capture
    graph = None
    try:
        with cupy.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                outputs = fn(*inputs)
            finally:
                graph = stream.end_capture()
    except Exception as e:
        raise CaptureError(
            f"the step could not be captured into a CUDA graph: {type(e).__name__}: {e}. A "
            f"captured step must not read the device from the host or copy host memory "
            f"(find such reads with dlx.testing.no_host_sync() on the strict device); "
            f"run it eagerly with graph=False (dlx train --no-graph)"
        ) from e
    finally:
        K.current_capture = None
    for dev_array, host in capture.uploads:  # the tables the captured kernels read
        dev_array.set(host, stream=current)
    return StepGraph(graph, inputs, outputs, capture, pool, stream)
