"""The CUDA kernels on a real GPU against the reference backend (float64 on NumPy copies of the
same inputs): a few hundred seeded random shapes (odd sizes, stride, padding, dilation,
tie-free pooling inputs), large shapes that need several grid-stride passes, chunked weight
staging and split reductions, float32 and float64, and bit-identical results when run twice.

Tolerances (cuda_selfcheck.TOL): float32 rtol 1e-4, atol 1e-5 x max(1, max |want|); float64 rtol
1e-10, atol 1e-12 x max(1, max |want|); max-pool values and argmax exact. Skipped cleanly
where CuPy or a GPU is missing; tests/test_cuda_compile.py covers what needs no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cuda

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'dlx[cuda]')")

import dlx  # noqa: E402

try:
    CUDA = dlx.device("cuda")
except dlx.DeviceError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"no usable CUDA GPU: {e}", allow_module_level=True)

import cuda_selfcheck as selfcheck  # noqa: E402  (tests/cuda_selfcheck.py)
from dlx.backends.cuda import cuda_info, kernels  # noqa: E402

DTYPES = ("float32", "float64")
N_RANDOM = 150  # random cases per family and dtype: 600 in all
CONV_CASES = selfcheck.conv_cases(seed=0, count=N_RANDOM)
POOL_CASES = selfcheck.pool_cases(seed=0, count=N_RANDOM)


@pytest.fixture(scope="module")
def backend():
    return CUDA.backend


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", range(N_RANDOM))
def test_conv2d_random(backend, i, dtype):
    selfcheck.check_conv(backend, CONV_CASES[i], dtype, seed=i, repeat=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", range(N_RANDOM))
def test_pooling_random(backend, i, dtype):
    selfcheck.check_pool(backend, POOL_CASES[i], dtype, seed=i, repeat=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", selfcheck.LARGE_CONV_CASES, ids=lambda c: f"x{c['x']}-w{c['w']}")
def test_conv2d_large(backend, case, dtype):
    selfcheck.check_conv(backend, case, dtype, seed=1, repeat=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", selfcheck.LARGE_POOL_CASES, ids=lambda c: f"x{c['x']}-k{c['kernel']}")
def test_pooling_large(backend, case, dtype):
    selfcheck.check_pool(backend, case, dtype, seed=1, repeat=True)


@pytest.mark.parametrize("mode", [{"BLOCKS_PER_SM": 1, "SMEM_BUDGET": 256}])
def test_tight_launch_configuration(backend, mode, monkeypatch):
    """Few blocks (many grid-stride passes, many splits) and tiny weight chunks."""
    for attr, value in mode.items():
        monkeypatch.setattr(kernels, attr, value)
    for i, case in enumerate(CONV_CASES[:20] + selfcheck.LARGE_CONV_CASES[:3]):
        selfcheck.check_conv(backend, case, "float32", seed=i)
    for i, case in enumerate(POOL_CASES[:20]):
        selfcheck.check_pool(backend, case, "float32", seed=i)


def test_sync_mode(backend, monkeypatch):
    monkeypatch.setenv("DLX_CUDA_SYNC", "1")
    selfcheck.check_conv(backend, CONV_CASES[0], "float32")
    selfcheck.check_pool(backend, POOL_CASES[0], "float32")


def test_launch_error_names_the_kernel():
    x = cupy.zeros(4, dtype=cupy.float32)
    with pytest.raises(kernels.KernelError, match="reduce_splits"):
        kernels.run("conv2d", "reduce_splits", "float32", (1, 1, 1), (2048, 1, 1),
                    (x, x, np.int32(1), np.int64(4)))


def test_results_live_on_the_inputs_device(backend):
    x = backend.asarray(np.ones((2, 3, 8, 8)), 0, "float32")
    w = backend.asarray(np.ones((4, 3, 3, 3)), 0, "float32")
    y = backend.conv2d(x, w, None, (1, 1), (0, 0), (1, 1))
    assert isinstance(y, cupy.ndarray) and y.device.id == 0 and y.dtype == cupy.float32
    y, arg = backend.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    assert arg.dtype == cupy.int32 and y.device.id == 0


def test_generator(backend):
    g1, g2 = backend.generator(0, [3, 1]), backend.generator(0, [3, 1])
    a, b = g1.normal((1000, 7), 0.0, 1.0, "float32"), g2.normal((1000, 7), 0.0, 1.0, "float32")
    assert isinstance(a, cupy.ndarray) and a.dtype == cupy.float32
    assert bool((a == b).all())
    state = g1.get_state()
    u = g1.uniform((4096,), 0.0, 1.0, "float64")
    assert u.dtype == cupy.float64 and 0 <= float(u.min()) and float(u.max()) < 1
    g1.set_state(state)
    assert bool((g1.uniform((4096,), 0.0, 1.0, "float64") == u).all())
    p = cupy.asnumpy(g1.permutation(1000))
    assert sorted(p.tolist()) == list(range(1000))
    z = cupy.asnumpy(g1.normal((200_000,), 2.0, 3.0, "float64"))
    assert abs(z.mean() - 2) < 0.05 and abs(z.std() - 3) < 0.05
    r = cupy.asnumpy(g1.integers(0, 10, (100_000,)))
    assert r.min() == 0 and r.max() == 9 and abs(r.mean() - 4.5) < 0.05


def test_namespace_and_devices(backend):
    xp = backend.xp
    dev = backend.array_device(0)
    z = xp.zeros((3, 4), dtype=xp.float32, device=dev)
    assert isinstance(z, cupy.ndarray) and backend.owns(z, 0)
    assert not backend.owns(np.zeros(3), 0)
    with pytest.raises(dlx.DeviceError, match="does not exist: this machine has"):
        dlx.device(f"cuda:{backend.device_count}")


def test_cuda_info():
    info = cuda_info()
    assert info["available"], info
    gpu = info["gpus"][0]
    assert gpu["name"] and gpu["compute_capability"] and info["cupy"] == cupy.__version__
    print(info)  # recorded in the GPU run's output


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m, k, n", [(128, 400, 120), (128, 120, 84), (3, 5, 7), (65, 0, 17),
                                     (257, 33, 129), (64, 100, 6272)])
def test_gemm_matches_cublas(dtype, ta, tb, m, k, n):
    """dlx's GEMM (what a captured step multiplies with) against cuBLAS, transposed views in
    place, and the same bits twice."""
    from dlx.backends.cuda import gemm

    rs = cupy.random.RandomState(0)
    a = rs.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rs.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    got = gemm.matmul(a, b)
    want = cupy.matmul(a.astype(cupy.float64), b.astype(cupy.float64))
    scale = cupy.matmul(cupy.abs(a).astype(cupy.float64), cupy.abs(b).astype(cupy.float64))
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert got.shape == (m, n) and got.flags.c_contiguous and got.dtype == a.dtype
    assert bool(cupy.all(cupy.abs(got - want) <= tol * scale + 1e-30))
    assert bool(cupy.all(gemm.matmul(a, b) == got))


def test_linear_under_graph_kernels_uses_dlx_gemm(monkeypatch):
    """backend.matmul is cuBLAS outside graph_kernels() and dlx's GEMM inside."""
    from dlx.backends.cuda import gemm

    calls = []
    real = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b: calls.append(1) or real(a, b))
    a = CUDA.asarray(np.ones((4, 3)), dtype="float32")
    b = CUDA.asarray(np.ones((3, 2)), dtype="float32")
    CUDA.backend.matmul(a, b)
    assert not calls
    with CUDA.backend.graph_kernels():
        np.testing.assert_array_equal(dlx.to_numpy(CUDA.backend.matmul(a, b)), np.full((4, 2), 3.0))
    assert calls == [1]
