"""What the CUDA launchers do while a step is being captured into a CUDA graph
(backends/cuda/graph.py), checked on the CPU emulation (tests/cuda_emulation.py): the random
streams read their call numbers from device memory, host tables are uploaded after the
capture, and what the graph reads is kept alive. The capture itself (CuPy's stream capture)
needs a GPU: tests/test_compile.py replays real graphs there."""

from __future__ import annotations

import importlib

import numpy as np


def test_captured_random_calls_draw_what_eager_calls_draw(emu):
    backend, kernels = emu
    eager = backend.generator(0, [5])
    want = [backend.to_numpy(eager.normal((7,), dtype="float32")) for _ in range(6)]

    gen = backend.generator(0, [5])
    kernels.current_capture = kernels.Capture()
    try:
        # captured calls pass the generator's base word and their rank in the step; on the
        # emulator they run at once, reading the base word (0 before the first replay)
        got = [backend.to_numpy(gen.normal((7,), dtype="float32")) for _ in range(3)]
        calls = kernels.current_capture.rng_calls[gen]
    finally:
        kernels.current_capture = None
    assert calls == 3 and gen.get_state()["counter"] == 0  # the host counter did not move
    for g, w in zip(got, want[:3]):
        np.testing.assert_array_equal(g, w)

    gen.before_replay(calls)  # replay 1: base word <- 0, counter -> 3
    gen.before_replay(calls)  # replay 2: base word <- 3, counter -> 6
    assert gen.get_state()["counter"] == 6 and int(backend.to_numpy(gen._base)[0]) == 3
    kernels.current_capture = kernels.Capture()
    try:  # what replay 2's kernels compute: calls 3, 4, 5
        again = [backend.to_numpy(gen.normal((7,), dtype="float32")) for _ in range(3)]
    finally:
        kernels.current_capture = None
    for g, w in zip(again, want[3:]):
        np.testing.assert_array_equal(g, w)
    # and eager calls go on from the counter, reading the zero word
    np.testing.assert_array_equal(backend.to_numpy(gen.normal((7,), dtype="float32")),
                                  backend.to_numpy(eager.normal((7,), dtype="float32")))


def test_uploads_wait_for_the_end_of_a_capture(emu):
    _, kernels = emu
    host = np.arange(6, dtype=np.int64)
    kernels.current_capture = cap = kernels.Capture()
    try:
        dev = kernels.upload(host)
    finally:
        kernels.current_capture = None
    assert len(cap.uploads) == 1 and cap.uploads[0][0] is dev
    assert not np.array_equal(np.asarray(dev), host)  # not copied during the capture
    np.testing.assert_array_equal(np.asarray(kernels.upload(host)), host)  # eager: at once


def test_the_graph_keeps_the_optimizer_tables_it_reads(emu):
    _, kernels = emu
    optim_cuda = importlib.import_module("dlx.backends.cuda.optim")
    import cupy

    p = cupy.zeros((4,), np.float32)
    g = cupy.asarray(np.ones(4, np.float32))
    m, v = cupy.zeros((4,), np.float32), cupy.zeros((4,), np.float32)
    steps, lr = cupy.asarray(np.ones(1)), cupy.asarray(np.float64(0.1))
    kernels.current_capture = cap = kernels.Capture()
    try:
        optim_cuda.adam_step([p], [g], [m], [v], steps, [0], lr, beta1=0.9, beta2=0.999,
                             eps=1e-8, weight_decay=0.0, decoupled=False)
    finally:
        kernels.current_capture = None
    assert len(cap.keep) == 1 and len(cap.uploads) == 1  # the table, filled after the capture
