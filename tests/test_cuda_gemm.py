"""The GEMM kernels of the CUDA backend (gemm.cu, launched by dlx.backends.cuda.gemm.matmul) on
the CPU emulation (tests/cuda_emulation.py): every storage layout of both operands, both
dtypes, both tile sizes, shapes that are not multiples of a tile, empty products, the
argument checks, and bit-reproducibility.

The emulator fills fresh memory with NaN and guards every array with NaN, so an element of C
left unwritten, or a read past an operand that reaches a sum, shows up as NaN, and a write
past C fails the launch."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
from cuda_emulation import FakeArray

DTYPES = ("float32", "float64")
LAYOUTS = list(itertools.product((False, True), repeat=2))  # (a stored transposed, b ...)
SHAPES = [(1, 1, 1), (3, 5, 7), (65, 33, 17), (130, 70, 129), (2, 64, 32), (33, 1, 40)]  # M, N, K


@pytest.fixture
def gemm(emu):
    return importlib.import_module("dlx.backends.cuda.gemm")


def _operand(host: np.ndarray, transposed: bool):
    """``host`` on the device: C-contiguous, or the transpose of a C-contiguous array."""
    import cupy  # the emulator's stand-in

    if not transposed:
        d = cupy.asarray(host)
        assert d.flags.c_contiguous
        return d
    stored = cupy.asarray(np.ascontiguousarray(host.T))
    d = stored.T
    assert type(d) is FakeArray and d.shape == host.shape
    assert d.__array_interface__["data"][0] == stored.__array_interface__["data"][0]
    assert d.flags.f_contiguous
    return d


def _problem(M, N, K, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype))


def _check_close(c, a, b, dtype):
    """c against the float64 product of the same (exactly representable) inputs, within the
    rounding error bound of a float32 / float64 sum of K products."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 @ b64
    scale = np.abs(a64) @ np.abs(b64)
    got = np.asarray(c, dtype=np.float64)
    assert got.shape == want.shape and np.isfinite(got).all(), "unwritten (NaN) elements of C"
    tol = 1e-5 if dtype == "float32" else 1e-12
    err = np.abs(got - want)
    assert (err <= tol * scale).all(), f"max error {np.max(err - tol * scale)} above the bound"


@pytest.mark.parametrize("tile", [64, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_matmul(gemm, dtype, tile, monkeypatch):
    import cupy

    monkeypatch.setattr(gemm, "TILES", (tile,))
    for s, (M, N, K) in enumerate(SHAPES):
        a, b = _problem(M, N, K, dtype, seed=s)
        first = None
        for ta, tb in LAYOUTS:
            c = gemm.matmul(_operand(a, ta), _operand(b, tb))
            assert isinstance(c, cupy.ndarray) and c.dtype == np.dtype(dtype)
            assert c.shape == (M, N) and c.flags.c_contiguous
            c = cupy.asnumpy(c)
            _check_close(c, a, b, dtype)
            # one accumulator per element, k in order: the same bits for every layout
            if first is None:
                first = c
            else:
                assert first.tobytes() == c.tobytes(), (M, N, K, ta, tb)


def test_emulated_matmul_is_deterministic(gemm, monkeypatch):
    import cupy

    a, b = _problem(70, 40, 50, "float32", seed=7)
    da, db = _operand(a, False), _operand(b, True)
    results = []
    for tile in (64, 32, 64):
        monkeypatch.setattr(gemm, "TILES", (tile,))
        results.append(cupy.asnumpy(gemm.matmul(da, db)).tobytes())
    assert results[0] == results[2]  # two launches of one kernel
    assert results[0] == results[1]  # and the other tile: the same order of the same operations


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_matmul_k_zero(gemm, dtype):
    import cupy

    for ta, tb in LAYOUTS:
        a = _operand(np.zeros((5, 0), dtype), ta)
        b = _operand(np.zeros((0, 3), dtype), tb)
        c = gemm.matmul(a, b)
        assert c.shape == (5, 3) and c.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(cupy.asnumpy(c), np.zeros((5, 3)))


def test_emulated_matmul_empty_launches_nothing(gemm, monkeypatch):
    import cupy

    launches = []
    monkeypatch.setattr(gemm.K, "run", lambda *args, **kw: launches.append(args))
    shapes = [(0, 4, 3), (4, 0, 3), (0, 0, 2), (0, 5, 0)]  # M, N, K
    for (M, N, K), (ta, tb) in itertools.product(shapes, LAYOUTS):
        c = gemm.matmul(_operand(np.ones((M, K), "float32"), ta), _operand(np.ones((K, N), "float32"), tb))
        assert c.shape == (M, N) and c.dtype == np.float32
        assert cupy.asnumpy(c).size == 0
    assert launches == []


def test_tile_choice(gemm, monkeypatch):
    """64 x 64 tiles where they fill the GPU's multiprocessors, else 32 x 32."""
    monkeypatch.setattr(gemm.K, "sm_count", lambda device_id: 132)
    assert gemm._tile(6272, 100, 0) == 64  # 98 x 2 blocks
    assert gemm._tile(128, 120, 0) == 32  # 2 x 2 blocks of 64
    assert gemm._tile(64, 6272, 0) == 32  # 1 x 98
    monkeypatch.setattr(gemm.K, "sm_count", lambda device_id: 1)
    assert gemm._tile(1, 1, 0) == 64


def test_emulated_matmul_argument_checks(gemm, monkeypatch):
    import cupy

    def dev(shape, dtype="float32"):
        return cupy.asarray(np.ones(shape, dtype))

    a, b = dev((3, 4)), dev((4, 5))
    with pytest.raises(ValueError, match="a must be a CuPy array on the GPU, got numpy.ndarray"):
        gemm.matmul(np.ones((3, 4), np.float32), b)
    with pytest.raises(ValueError, match="b must be a CuPy array"):
        gemm.matmul(a, [[1.0]])
    with pytest.raises(ValueError, match=r"b must be 2-D, got shape \(4,\)"):
        gemm.matmul(a, dev((4,)))
    with pytest.raises(ValueError, match=r"a must be 2-D, got shape \(2, 3, 4\)"):
        gemm.matmul(dev((2, 3, 4)), b)
    with pytest.raises(ValueError, match=r"inner dimensions differ: a \(3, 4\) @ b \(5, 4\)"):
        gemm.matmul(a, dev((5, 4)))
    with pytest.raises(ValueError, match="a is float32 but b is float64"):
        gemm.matmul(a, dev((4, 5), "float64"))
    with pytest.raises(ValueError, match="a must be float32 or float64, got int32"):
        gemm.matmul(dev((3, 4), "int32"), b)
    with pytest.raises(
        ValueError,
        match=r"a \(shape \(3, 4\), strides \(32, 8\)\) is neither C-contiguous "
        r"nor the transpose.*pass a contiguous copy",
    ):
        gemm.matmul(dev((3, 8))[:, ::2], b)
    with pytest.raises(ValueError, match="b .* is neither C-contiguous.*contiguous copy"):
        gemm.matmul(a, dev((8, 5))[::2])
    monkeypatch.setattr(gemm, "_INT_MAX", 14)
    with pytest.raises(ValueError, match="the result would have 15 elements, beyond the 32-bit"):
        gemm.matmul(dev((3, 2)), dev((2, 5)))
    with pytest.raises(ValueError, match="a has 16 elements, beyond the 32-bit"):
        gemm.matmul(dev((2, 8)), dev((8, 1)))
