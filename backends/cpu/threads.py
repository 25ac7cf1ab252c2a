"""The CPU backend's threads: the calling thread and dlx's worker threads run both the Numba
kernels (``parallel_for``: each kernel is compiled ``nogil`` and takes a block of its outer
loop) and the large GEMMs (``parallel_matmul``: blocks of one single-threaded BLAS call each).
``configure()`` applies the threading rule; ``threading_info()`` reports it for ``dlx info``.

The rule: dlx uses every core this process may use (``DLX_NUM_THREADS`` caps it), with its own
threads, and the BLAS one thread. Nothing spins while it waits: idle workers sleep, so the
Numba kernels, the GEMMs and NumPy's own operations never share a core with a busy-waiting
worker of another pool. How it came to this, measured on the 2-core dev VM:

* BLAS threads (benchmarks/kernels_cpu.py, 2026-11-22): OpenBLAS's idle workers busy-wait
  ~0.1 s after each call, and a Numba kernel that followed a matmul shared its cores with
  them (LeNet-5 step 6.8 ms with BLAS on one thread, 14.8 ms with library defaults). Large
  GEMMs still get every core through ``parallel_matmul``: from ``_SPLIT_MIN_MACS`` (2^24)
  multiply-adds up it splits the larger output side (columns of b when N >= M, else rows of
  a) over the threads, each part one single-threaded BLAS call (DCGAN conv GEMM 128x1024 @
  1024x3136: one thread 8.7 ms, split over 2 threads 4.9 ms, OpenBLAS's own 2 threads 4.5).
  The column split packs each half of b once. The split product agrees with np.matmul to
  float32 rounding, but not always bit for bit: OpenBLAS's Haswell kernels (AMD EPYC,
  2026-12-01) round some rows and columns of a block computed alone differently from the
  same ones inside the whole product (its SkylakeX kernels gave np.matmul's bits, on the
  Intel VM of 2026-11-30), so there a product of 2^24 or more multiply-adds has last bits
  that depend on the thread count (tests/test_kernels.py). LeNet-5's training products
  (batch 128) are all smaller; its evaluation at batch 1000 is split.
* Numba's ``parallel=True`` (2026-12-01): its omp threading layer (GNU libgomp) spins after
  every kernel too (GOMP_SPINCOUNT, 300,000 by default), which took a core from the GEMM
  that followed (DCGAN conv GEMM after its im2col: 3.3 / 6.0-7.4 ms min / median), and its
  parfor compilation took most of the cold start: the first LeNet-5 training step with an
  empty Numba cache took 9.4 s with ``parallel=True`` kernels, 3.9 s with the same kernels
  compiled ``nogil`` (the loops are identical; only the outer ``prange`` became a block
  ``range(lo, hi)``). So the kernels are ``nogil`` and ``parallel_for`` hands the blocks to
  dlx's threads: the same blocks as Numba's static schedule, so the same bits.

A user who sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS or DLX_BLAS_THREADS
keeps their BLAS setting.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

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
# Below this many multiply-adds a matmul is not worth splitting across threads.
_SPLIT_MIN_MACS = 1 << 24
_threads = 1  # dlx's thread count, set by configure()


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
    global _configured, _threads
    if _configured is not None:
        return _configured
    done = {}
    cap = os.environ.get("DLX_NUM_THREADS")
    want = usable_cores()
    if cap:
        want = max(1, min(want, int(cap)))
    _threads = want
    done["threads"] = want
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


def num_threads() -> int:
    """How many threads dlx's CPU kernels and GEMMs use (``configure``; 1 before it)."""
    return _threads


def set_num_threads(n: int) -> int:
    """Use ``n`` threads from now on (e.g. 1 while running thousands of tiny kernels, whose
    hand-over costs more than their work); returns the previous count."""
    global _threads
    if int(n) < 1:
        raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
    previous, _threads = _threads, int(n)
    return previous


def threading_info() -> dict:
    """dlx's threads, the BLAS and its threads, for ``dlx info``."""
    blas = _find_blas()
    try:
        build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_build = f"{build.get('name')} {build.get('version')}"
    except Exception:  # older NumPy or an unusual build: the loaded library still tells
        blas_build = None
    return {
        "cpu_cores": usable_cores(),
        "threads": num_threads(),
        "blas": blas_build or (blas[0] if blas else "unknown"),
        "blas_library": blas[0] if blas else None,
        "blas_config": blas[3] if blas else None,
        "blas_threads": blas_threads(),
        "dlx_threading_rule": _configured or "not applied (threads.configure() not called)",
    }


class _Worker:
    """A thread that runs one task at a time, handed over and back with two locks: a round
    trip costs ~13 us here, against ~31 us for a ThreadPoolExecutor future (an empty nogil
    kernel over two threads, median of 2,000 calls, quiet 2-core VM, 2026-12-01), and a LeNet-5
    training step makes nine such calls."""

    def __init__(self, index: int):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._task = self._error = None
        threading.Thread(target=self._loop, name=f"dlx-cpu-{index}", daemon=True).start()

    def _loop(self):
        while True:
            self._go.acquire()  # sleeps until start()
            fn, args = self._task
            self._task = None
            try:
                fn(*args)
            except BaseException as error:  # handed to the caller by wait()
                self._error = error
            del fn, args  # the caller's arrays: not kept alive until the next task
            self._done.release()

    def start(self, fn, args):
        self._task = (fn, args)
        self._go.release()

    def wait(self):
        """Block until the task is done; its exception, or None."""
        self._done.acquire()
        error, self._error = self._error, None
        return error


_workers: list[_Worker] = []
_busy = threading.Lock()  # held while the workers run one caller's parts


def _forget_workers():  # in a forked child: the threads did not come along
    global _busy
    _workers.clear()
    _busy = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _run_parts(parts):
    """Run ``fn(*args)`` for every (fn, args) in ``parts``: the first on the calling thread,
    the others on the workers at the same time; raise the first part's exception, else the
    first worker's, once all are done. When the workers are busy with another caller's
    parts (another Python thread), or from inside a part, the parts run one after another
    here instead."""
    if len(parts) == 1 or not _busy.acquire(blocking=False):
        for fn, args in parts:
            fn(*args)
        return
    try:
        while len(_workers) < len(parts) - 1:
            _workers.append(_Worker(len(_workers) + 1))
        used = _workers[: len(parts) - 1]
        for worker, (fn, args) in zip(used, parts[1:]):
            worker.start(fn, args)
        try:
            fn, args = parts[0]
            fn(*args)
        finally:
            errors = [worker.wait() for worker in used]
        for error in errors:
            if error is not None:
                raise error
    finally:
        _busy.release()


def parallel_for(kernel, n, *args, scratch=()):
    """``kernel(lo, hi, *args, *work)`` for the blocks [n*p//P, n*(p+1)//P) of range(n), P =
    the thread count (at most n), all at the same time: block 0 on the calling thread, the
    others on dlx's worker threads. The kernels are Numba functions compiled ``nogil``, so the
    blocks run in parallel; an exception in any block is raised here once all have finished.

    ``scratch``: (shape, dtype) pairs; each block gets its own zero-filled ``work`` arrays of
    these. Kernels take their work buffers this way rather than calling np.empty or np.zeros:
    an allocation inside a kernel made its first compile ~0.6 s longer (``_direct_forward``
    1.53-1.63 -> 0.96 s with an empty Numba cache, AMD EPYC, 2026-12-01)."""
    P = min(_threads, n)
    if P < 1:
        return
    _run_parts([(kernel, (n * p // P, n * (p + 1) // P, *args,
                          *[np.zeros(shape, dtype) for shape, dtype in scratch]))
                for p in range(P)])


def parallel_matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays (M, K) @ (K, N), split over dlx's threads (those of
    ``parallel_for``): the columns of b when N >= M, else the rows of a.

    With the BLAS on one thread (the rule above), this is how large GEMMs still use every
    core: NumPy releases the GIL inside matmul, and idle workers sleep instead of
    spinning, so nothing is left competing with the kernels that follow. Splitting the larger side
    matters: every thread packs the whole of the operand it does not split, so a row split of
    (128, 1024) @ (1024, 3136) packed the 12.8 MB b twice and ran slower than one thread.
    Each output element is one BLAS dot product over all of K either way.
    """
    P = _threads
    M, N = a.shape[0], b.shape[1]
    if a.shape[1] == 1:  # an outer product: each element is one product, exactly BLAS's, but
        # OpenBLAS runs K=1 at ~1 GMAC/s (0.58 ms for a DCGAN's (64, 1) @ (1, 6272))
        return np.multiply(a, b, out=out, dtype=np.result_type(a, b))
    if P < 2 or max(M, N) < 2 * P or M * a.shape[1] * N < _SPLIT_MIN_MACS \
            or blas_threads() != 1:  # small, or a multithreaded BLAS splits the work itself
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    by_cols = N >= M
    S = N if by_cols else M
    # Blocks start at multiples of 48, so BLAS's edge kernels stay off the seams where they
    # can: OpenBLAS's Haswell kernels (AMD EPYC) round the last rows of a block whose row
    # count is not a multiple of 24 differently (a row split at 512 changed the bits of rows
    # 504-511 against np.matmul; at 528 it did not, in a plain process); 48 covers kernels
    # of 16 too. Bits: see the module docstring.
    bounds = [min(S, (S * p // P + 47) // 48 * 48) for p in range(P)] + [S]

    def part(lo, hi):
        if by_cols:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
        else:
            np.matmul(a[lo:hi], b, out=out[lo:hi])

    _run_parts([(part, (lo, hi)) for lo, hi in zip(bounds, bounds[1:])])
    return out
