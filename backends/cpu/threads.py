"""Thread pools of the CPU backend: Numba's (the conv and pooling kernels) and the BLAS under
NumPy's matmul. ``configure()`` applies the rule that they must not oversubscribe the cores;
``threading_info()`` reports both for ``dlx info``.

The rule, from benchmarks/kernels_cpu.py (see its notes): Numba gets every core this process
may use, and the BLAS one thread. Within a training step the two alternate every few hundred
microseconds, and OpenBLAS's idle workers busy-wait (about 0.1 s) after each call, so with
BLAS threads a Numba kernel that follows a matmul shares its cores with spinning threads.
The matmuls in LeNet-sized layers are too small to gain from more than one thread anyway.

Large GEMMs (nn.Linear through ``CPUBackend.matmul``, the im2col convolutions) still get every
core: from ``_SPLIT_MIN_MACS`` (2^24) multiply-adds up, ``parallel_matmul`` splits the larger
output side (columns of b when N >= M, else rows of a) over Numba's thread count in Python
threads, each calling the one-thread BLAS. Idle Python threads sleep, so nothing spins after
the call. Measured on the DCGAN conv's forward GEMM (128x1024 @ 1024x3136, one process,
interleaved, 2026-11-30): one thread 8.7 ms, rows split over 2 threads 4.9 ms, OpenBLAS's own
2 threads 4.5 ms, but after an OpenBLAS 2-thread call its idle worker spins for ~0.1 s and
the Numba kernels that follow slow down (im2col 4.8 -> 8-10 ms, col2im 8.7 -> 10.6-18.5 ms in
the same loop). A row split makes every thread pack the whole of b (12.8 MB here): the column
split packs each half once and gives the same bits (each element is one BLAS dot product over
all of K; tests/test_kernels.py checks it against np.matmul bit for bit).
A user who sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS or DLX_BLAS_THREADS
keeps their setting; DLX_NUM_THREADS caps Numba's threads.

Numba's own workers spin too. With its "omp" threading layer (GNU libgomp, Linux), each
worker busy-waits after a parallel kernel for GOMP_SPINCOUNT iterations (libgomp's default
300,000, a few hundred microseconds to milliseconds), and a ``parallel_matmul`` that follows
an im2col kernel then shares a core with that spinner. Measured on the DCGAN conv's forward
GEMM right after its im2col (one process, 2026-12-01, quiet 2-core VM, min/median of 20):
3.3 / 6.0-7.4 ms with the default spin, 3.3 / 3.3 with OMP_WAIT_POLICY=PASSIVE (no spin),
3.3 / 4.4 with GOMP_SPINCOUNT=10000. Whole steps, min/median ms: DCGAN train step (64)
142/157 default, 128/131 passive, 129/133 at 30,000; LeNet-5 train step (128) 11.2/11.3
default, 11.9/12.1 passive (each kernel pays a futex wake-up), 11.2/11.3 at 30,000, 11.6/13.0
at 3,000. So ``configure`` sets GOMP_SPINCOUNT=30000 (``_OMP_SPIN``): short enough that a
worker is asleep before a GEMM that follows, long enough that back-to-back kernels of one
LeNet step still find it awake. libgomp reads the variable once, when Numba loads it at the
first parallel kernel: a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept, and when libgomp
was loaded already (``threading_info`` says so) the setting cannot apply.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# (getter, setter, config) symbol names, tried in order: scipy-openblas (NumPy's wheels),
# plain OpenBLAS (64-bit interface or not), MKL.
_BLAS_SYMBOLS = [
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_",
     "scipy_openblas_get_config64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads",
     "scipy_openblas_get_config"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_", "openblas_get_config64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads", "openblas_get_config"),
    ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads", None),
]
_blas = None  # cached (name, get, set, config) or False when none was found
_configured: dict | None = None
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()
# Below this many multiply-adds a matmul is not worth splitting across threads.
_SPLIT_MIN_MACS = 1 << 24
# Spin iterations of an idle libgomp worker (Numba's omp layer); see the module docstring.
_OMP_SPIN = "30000"
_OMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _candidate_libraries():
    """Paths of BLAS shared libraries: those already mapped into the process, then NumPy's."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if ("blas" in path or "mkl" in path) and path.startswith("/") and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    root = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*blas*", ".dylibs/*blas*", "../numpy/.dylibs/*blas*"):
        paths += [p for p in glob.glob(os.path.join(root, pattern)) if p not in paths]
    return paths


def _libgomp_loaded() -> bool:
    """True when GNU libgomp (the one Numba's omp layer uses, not a wheel's private copy such
    as torch's libgomp-<hash>.so) is mapped into this process already."""
    try:
        with open("/proc/self/maps") as maps:
            return any(os.path.basename(line.split()[-1]).startswith("libgomp.so") for line in maps)
    except OSError:
        return False


def _limit_omp_spin() -> str:
    """Set GOMP_SPINCOUNT before libgomp starts (see the module docstring); says what it did."""
    user = [name for name in _OMP_ENV if os.environ.get(name)]
    if user:
        return f"left to {user[0]}"
    if _libgomp_loaded():
        return "libgomp loaded before dlx: its default spin applies"
    os.environ["GOMP_SPINCOUNT"] = _OMP_SPIN
    return f"GOMP_SPINCOUNT={_OMP_SPIN}"


def _find_blas():
    global _blas
    if _blas is None:
        _blas = False
        for path in _candidate_libraries():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get, set_, config in _BLAS_SYMBOLS:
                if hasattr(lib, get) and hasattr(lib, set_):
                    getter, setter = getattr(lib, get), getattr(lib, set_)
                    getter.restype = ctypes.c_int
                    setter.restype = None
                    setter.argtypes = [ctypes.c_int]
                    text = None
                    if config and hasattr(lib, config):
                        fn = getattr(lib, config)
                        fn.restype = ctypes.c_char_p
                        text = fn().decode(errors="replace")
                    _blas = (os.path.basename(path), getter, setter, text)
                    break
            if _blas:
                break
    return _blas or None


def blas_threads() -> int | None:
    """Threads the BLAS under NumPy uses now, or None if it cannot be told."""
    blas = _find_blas()
    return None if blas is None else int(blas[1]())


def set_blas_threads(n: int) -> bool:
    """Set the BLAS thread count; False if the BLAS could not be found."""
    blas = _find_blas()
    if blas is None:
        return False
    blas[2](int(n))
    return True


def configure() -> dict:
    """Apply the threading rule once (idempotent); returns what it decided and why."""
    global _configured
    if _configured is not None:
        return _configured
    done = {}
    cap = os.environ.get("DLX_NUM_THREADS")
    want = min(usable_cores(), numba.config.NUMBA_NUM_THREADS)
    if cap:
        want = max(1, min(want, int(cap)))
    done["omp_spin"] = _limit_omp_spin()  # before the first parallel kernel loads libgomp
    numba.set_num_threads(want)
    done["numba_threads"] = want
    user = [name for name in _BLAS_ENV if os.environ.get(name)]
    if os.environ.get("DLX_BLAS_THREADS"):
        ok = set_blas_threads(int(os.environ["DLX_BLAS_THREADS"]))
        done["blas_threads"] = "DLX_BLAS_THREADS" if ok else "not found"
    elif user:
        done["blas_threads"] = f"left to {user[0]}"
    else:
        done["blas_threads"] = 1 if set_blas_threads(1) else "not found"
    _configured = done
    return done


def threading_info() -> dict:
    """Numba's threading layer and threads, the BLAS and its threads, for ``dlx info``."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = f"{numba.config.THREADING_LAYER} (not started yet)"
    blas = _find_blas()
    try:
        build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_build = f"{build.get('name')} {build.get('version')}"
    except Exception:  # older NumPy or an unusual build: the loaded library still tells
        blas_build = None
    return {
        "cpu_cores": usable_cores(),
        "numba_threading_layer": layer,
        "numba_threads": numba.get_num_threads(),
        "blas": blas_build or (blas[0] if blas else "unknown"),
        "blas_library": blas[0] if blas else None,
        "blas_config": blas[3] if blas else None,
        "blas_threads": blas_threads(),
        "dlx_threading_rule": _configured or "not applied (threads.configure() not called)",
    }


def parallel_matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays (M, K) @ (K, N), split over Numba's thread count in Python
    threads: the columns of b when N >= M, else the rows of a.

    With the BLAS on one thread (the rule above), this is how large GEMMs still use every
    core: NumPy releases the GIL inside matmul, and idle Python threads sleep instead of
    spinning, so nothing is left competing with the Numba kernels. Splitting the larger side
    matters: every thread packs the whole of the operand it does not split, so a row split of
    (128, 1024) @ (1024, 3136) packed the 12.8 MB b twice and ran slower than one thread.
    Each output element is one BLAS dot product over all of K either way.
    """
    global _pool, _pool_workers
    P = numba.get_num_threads()
    M, N = a.shape[0], b.shape[1]
    if a.shape[1] == 1:  # an outer product: each element is one product, exactly BLAS's, but
        # OpenBLAS runs K=1 at ~1 GMAC/s (0.58 ms for a DCGAN's (64, 1) @ (1, 6272))
        return np.multiply(a, b, out=out, dtype=np.result_type(a, b))
    if P < 2 or max(M, N) < 2 * P or M * a.shape[1] * N < _SPLIT_MIN_MACS \
            or blas_threads() != 1:  # small, or a multithreaded BLAS splits the work itself
        return np.matmul(a, b, out=out)
    with _pool_lock:
        if _pool_workers < P:
            _pool = ThreadPoolExecutor(max_workers=P, thread_name_prefix="dlx-matmul")
            _pool_workers = P
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    by_cols = N >= M
    S = N if by_cols else M
    # column blocks rounded to 16 (whole vectors, so BLAS's edge kernels stay off the seams)
    bounds = [min(S, (S * p // P + 15) // 16 * 16) if by_cols else S * p // P for p in range(P)] + [S]

    def part(p):
        lo, hi = bounds[p], bounds[p + 1]
        if by_cols:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
        else:
            np.matmul(a[lo:hi], b, out=out[lo:hi])

    for future in [_pool.submit(part, p) for p in range(P)]:
        future.result()
    return out
