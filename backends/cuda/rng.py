"""Random numbers made on the GPU: the kernels in rng.cu (Philox4x32-10, counter-based).

The state is two numbers: the 64-bit key (from the seed, through NumPy's SeedSequence) and
a call counter. Call number k fills element i with philox((i, k), key), so a stream is
reproduced exactly from its state, whatever the launch configuration, and ``get_state`` is
a small JSON-able dict. The numbers differ from the CPU device's PCG64 stream.

The kernels read the call number from the device (``*call_base + call_offset``): eager calls
pass a word holding 0 and the counter; calls captured into a CUDA graph pass the generator's
own base word and their rank within the step, and ``before_replay`` writes the counter there
before each replay (then advances it by the step's calls), so replays draw what eager steps
would have drawn.
"""

from __future__ import annotations

import cupy
import numpy as np

from ..host_random import dtype_name
from . import kernels as K

FAMILY = "rng"
ALGORITHM = "philox4x32-10-counter"


class CUDAGenerator:
    """The methods of host_random.NumpyGenerator, producing CuPy arrays on GPU ``index``."""

    def __init__(self, index: int, seed):
        self._index = int(index)
        words = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)
        self._key = (int(words[0]), int(words[1]))
        self._counter = 0
        # the base word of captured calls, made now: allocated during a capture, its zeroing
        # would be captured too and undo before_replay's write at every replay
        with cupy.cuda.Device(self._index):
            self._base = cupy.zeros((1,), dtype=cupy.uint64)

    def _call(self) -> tuple:
        """(k0, k1, call_base, call_offset) for the next call, as the kernels' arguments."""
        key = (np.uint32(self._key[0]), np.uint32(self._key[1]))
        cap = K.current_capture
        if cap is None:
            c = self._counter
            self._counter = (c + 1) % 2**64
            return (*key, _zero_word(self._index), np.uint64(c))
        k = cap.rng_calls.get(self, 0)
        cap.rng_calls[self] = k + 1
        return (*key, self._base, np.uint64(k))

    def before_replay(self, calls: int) -> None:
        """Give a captured step's ``calls`` calls the next numbers of the stream: the base
        word gets the counter (a host-to-device write, in stream order), the counter moves on."""
        self._base[...] = np.uint64(self._counter)
        self._counter = (self._counter + int(calls)) % 2**64

    def _fill(self, name, shape, dtype, extra=()):
        shape = tuple(int(s) for s in shape)
        call = self._call()  # advances even for an empty array, so the stream does not depend on it
        with cupy.cuda.Device(self._index):
            out = cupy.empty(shape, dtype=dtype)
            if out.size:
                kernel_dtype = out.dtype.name if out.dtype.name in K.CTYPES else "float32"
                args = (out, np.int64(out.size), *call, *extra)
                grid = K.grid_1d(out.size, self._index)
                K.run(FAMILY, name, kernel_dtype, grid, (K.BLOCK, 1, 1), args)
        return out

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        dt = _float_dtype(dtype)
        extra = (K.real(dt, low), K.real(dt, high - low))
        return self._fill("rng_uniform", shape, dt, extra)

    def normal(self, shape, mean=0.0, std=1.0, dtype="float32"):
        dt = _float_dtype(dtype)
        return self._fill("rng_normal", shape, dt, (K.real(dt, mean), K.real(dt, std)))

    def permutation(self, n):
        keys = self._fill("rng_bits64", (int(n),), "uint64")
        with cupy.cuda.Device(self._index):
            return cupy.argsort(keys).astype(cupy.int64, copy=False)

    def integers(self, low, high, shape):
        low, high = int(low), int(high)
        if high <= low:
            raise ValueError(f"integers: high ({high}) must be greater than low ({low})")
        if high - low >= 2**64 or not -(2**63) <= low < 2**63:
            raise ValueError(f"integers: [{low}, {high}) does not fit int64")
        return self._fill("rng_integers", shape, "int64", (np.int64(low), np.uint64(high - low)))

    def get_state(self) -> dict:
        return {"bit_generator": ALGORITHM, "key": list(self._key), "counter": self._counter}

    def set_state(self, state: dict) -> None:
        if state.get("bit_generator") != ALGORITHM:
            raise ValueError(
                f"this state comes from a {state.get('bit_generator')!r} generator, not the CUDA "
                f"device's {ALGORITHM!r}: a checkpoint's random state only resumes on its device type"
            )
        k0, k1 = (int(k) for k in state["key"])
        self._key = (k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF)
        self._counter = int(state["counter"]) % 2**64


_zero_words: dict = {}


def _zero_word(index: int):
    """A device word holding 0 on GPU ``index``: the call base of eager launches."""
    word = _zero_words.get(index)
    if word is None:
        with cupy.cuda.Device(index):
            word = _zero_words[index] = cupy.zeros((1,), dtype=cupy.uint64)
    return word


def _float_dtype(dtype) -> str:
    name = dtype_name(dtype)
    if name not in K.CTYPES:
        raise ValueError(f"random floats are float32 or float64, got {name}")
    return name
