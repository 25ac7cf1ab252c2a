"""The CPU emulation of the CUDA backend, shared by the tests that check .cu kernels without a
GPU (tests/test_cuda_compile.py and the per-family files): each .cu is compiled as C++ by g++
with a small runtime (one OS thread per CUDA thread of a block, real barriers for
__syncthreads and warp shuffles), behind a NumPy-backed stand-in for CuPy. The stand-in
refuses a launch whose scalars are not the NumPy type of the C parameter (CuPy would pass
them silently, with the wrong width), fills fresh memory with NaN and guards every array
with NaN margins, so out-of-bounds accesses and unwritten outputs show up.

The fixtures ``emu_build_dir`` and ``emu`` (the backend on the emulator) are in conftest.py.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

GXX = shutil.which("g++")

EMU_RUNTIME = r"""
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 { unsigned int x, y, z; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
using std::min;
using std::max;

// A sense-reversing spin barrier that yields the CPU while it waits (there are far more
// emulated threads than cores, and most waits are short).
class EmuBarrier {
  public:
    void reset(int n) { count_ = n; waiting_.store(0); }
    void wait() {
        const unsigned gen = generation_.load(std::memory_order_acquire);
        if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
            waiting_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
        } else {
            while (generation_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
        }
    }
  private:
    int count_ = 0;
    std::atomic<int> waiting_{0};
    std::atomic<unsigned> generation_{0};
};

static EmuBarrier emu_block_barrier;
static EmuBarrier emu_warp_barrier[32];
alignas(64) static unsigned char emu_dynamic_smem[48 * 1024 + 64];

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

static inline void __syncthreads() { emu_block_barrier.wait(); }

// Two exchange buffers used in turn: one barrier per shuffle is enough, since a lane can
// only overwrite a buffer after every lane has passed the next barrier.
static unsigned long long emu_exchange2[2][1024];
static thread_local int emu_phase = 0;

template <class T> static T __shfl_down_sync(unsigned int, T v, int delta) {
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    unsigned long long* slots = emu_exchange2[emu_phase];
    emu_phase ^= 1;
    std::memcpy(&slots[tid], &v, sizeof(T));
    emu_warp_barrier[warp].wait();
    T r = v;
    if (lane + delta < 32) std::memcpy(&r, &slots[tid + delta], sizeof(T));
    return r;
}

// IEEE operations rounded to nearest, as the CUDA intrinsics (g++ for x86-64 without -mfma
// has no fused multiply-add to contract them into).
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }

static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// Persistent workers, one per CUDA thread of a block (created on first need, never destroyed:
// the process may exit with them waiting).
class EmuPool {
  public:
    void run(int n, const std::function<void(int)>& job) {
        while ((int)workers_.size() < n) {
            const int t = (int)workers_.size();
            workers_.emplace_back([this, t] { loop(t); });
        }
        {
            std::lock_guard<std::mutex> lock(m_);
            job_ = &job;
            active_ = remaining_ = n;
            ++generation_;
        }
        start_.notify_all();
        std::unique_lock<std::mutex> lock(m_);
        done_.wait(lock, [&] { return remaining_ == 0; });
    }
  private:
    void loop(int t) {
        unsigned long long seen = 0;
        for (;;) {
            const std::function<void(int)>* job;
            {
                std::unique_lock<std::mutex> lock(m_);
                start_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (t >= active_) continue;
                job = job_;
            }
            (*job)(t);
            std::lock_guard<std::mutex> lock(m_);
            if (--remaining_ == 0) done_.notify_all();
        }
    }
    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable start_, done_;
    const std::function<void(int)>* job_ = nullptr;
    int active_ = 0, remaining_ = 0;
    unsigned long long generation_ = 0;
};
static EmuPool* emu_pool = new EmuPool;

template <class F>
static void emu_launch(dim3 g, dim3 b, unsigned long long smem, F body) {
    gridDim = g;
    blockDim = b;
    const int n = (int)(b.x * b.y * b.z);
    std::memset(emu_dynamic_smem, 0xFF, smem);  // NaN: a kernel must write before it reads
    for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
    for (unsigned bx = 0; bx < g.x; ++bx) {
        emu_block_barrier.reset(n);
        for (int w = 0; w < 32; ++w) emu_warp_barrier[w].reset(32);
        const std::function<void(int)> job = [&](int t) {
            blockIdx = dim3{bx, by, bz};
            emu_phase = 0;
            threadIdx = dim3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
            body();
        };
        emu_pool->run(n, job);
    }
}
"""

C_SCALARS = {
    "unsigned char": (ctypes.c_ubyte, np.uint8),
    "int": (ctypes.c_int, np.int32),
    "long long": (ctypes.c_longlong, np.int64),
    "unsigned int": (ctypes.c_uint, np.uint32),
    "unsigned long long": (ctypes.c_ulonglong, np.uint64),
    "float": (ctypes.c_float, np.float32),
    "double": (ctypes.c_double, np.float64),
}


def _parse_params(params: str, dtype: str):
    """[(c type, is pointer, name)] of a kernel's parameter list, with `real` resolved."""
    out = []
    for p in params.split(","):
        p = " ".join(p.replace("__restrict__", " ").replace("const", " ").split())
        pointer = "*" in p
        ctype, name = p.replace("*", " ").rsplit(None, 1)
        ctype = " ".join(ctype.split())
        if ctype == "real":
            ctype = "float" if dtype == "float32" else "double"
        assert ctype in C_SCALARS, f"unknown parameter type {ctype!r}"
        out.append((ctype, pointer, name))
    return out


class FakeArray(np.ndarray):
    """A NumPy array standing in for a cupy.ndarray on GPU 0."""

    @property
    def device(self):
        return FakeDevice(0)

    def get(self):
        return np.array(self).view(np.ndarray)


GUARD = 64  # bytes of 0xFF (NaN / -1) on each side of every array the stand-in allocates
_guards: dict = {}


def _alloc(shape, dtype) -> FakeArray:
    dt = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.full(nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
    arr = buf[GUARD : GUARD + nbytes].view(dt).reshape(shape).view(FakeArray)
    _guards[arr.__array_interface__["data"][0]] = buf
    return arr


def _check_guards(name, args):
    for a in args:
        if isinstance(a, np.ndarray):
            buf = _guards.get(a.__array_interface__["data"][0])
            if buf is not None and not (
                (buf[:GUARD] == 0xFF).all() and (buf[-GUARD:] == 0xFF).all()
            ):
                raise AssertionError(f"kernel {name} wrote outside an array of shape {a.shape}")


class FakeDevice:
    def __init__(self, index=None):
        self.id = 0 if index is None else int(index)
        if self.id != 0:
            raise ValueError(f"the emulated machine has one GPU, not cuda:{self.id}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, FakeDevice) and other.id == self.id

    def __hash__(self):
        return self.id

    def synchronize(self):
        pass


class FakeStream:
    def synchronize(self):
        pass


class EmuKernel:
    def __init__(self, lib, name, params, dtype):
        self.name, self.params, self.dtype = name, params, dtype
        self.fn = getattr(lib, f"emu_{name}")
        self.fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_ulonglong] + [
            ctypes.c_void_p if ptr else C_SCALARS[ct][0] for ct, ptr, _ in params
        ]
        self.fn.restype = None
        self.launches = 0

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        n = block[0] * block[1] * block[2]
        assert block[1] == block[2] == 1 and n % 32 == 0 and 0 < n <= 1024, block
        assert 0 < grid[0] < 2**31 and 0 < grid[1] <= 65535 and 0 < grid[2] <= 65535, grid
        assert 0 <= shared_mem <= 48 * 1024, shared_mem
        assert len(args) == len(self.params), f"{self.name}: {len(args)} args for {len(self.params)}"
        cargs = []
        for a, (ctype, ptr, pname) in zip(args, self.params):
            want = C_SCALARS[ctype][1]
            if ptr:
                assert isinstance(a, FakeArray), f"{self.name}({pname}): {type(a)} is not a device array"
                assert a.dtype == want, f"{self.name}({pname}): {a.dtype} array for {ctype}*"
                assert a.flags.c_contiguous, f"{self.name}({pname}): not C-contiguous"
                cargs.append(a.__array_interface__["data"][0])
            else:
                assert type(a) is want, (
                    f"{self.name}({pname}): {type(a).__name__} passed for C {ctype} "
                    f"(CuPy would pass it with the wrong width)"
                )
                cargs.append(a)
        self.fn(*grid, *block, shared_mem, *cargs)
        self.launches += 1
        _check_guards(self.name, args)


_built: dict = {}


def _build(code: str, build_dir: Path):
    """Compile one emulated module (cached by source) and return {name: EmuKernel}."""
    dtype = "float64" if code.startswith("typedef double") else "float32"
    key = hashlib.sha256(code.encode()).hexdigest()[:16]
    if key in _built:
        return _built[key]
    body = re.sub(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\]\s*;",
                  r"\1* \2 = reinterpret_cast<\1*>(emu_dynamic_smem);", code)
    wrappers = []
    kernels = {}
    for name, params in KERNEL_RE.findall(code):
        parsed = _parse_params(params, dtype)
        decl = ", ".join(f"{'const ' if ptr else ''}{'void*' if ptr else ct} a{i}"
                         for i, (ct, ptr, _) in enumerate(parsed))
        call = ", ".join(
            f"({'const ' if ptr and 'const' in raw else ''}{ct}*)a{i}" if ptr else f"a{i}"
            for i, ((ct, ptr, _), raw) in enumerate(zip(parsed, params.split(",")))
        )
        wrappers.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, unsigned long long smem{', ' if decl else ''}{decl}) {{\n"
            f"    emu_launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, smem, [=] {{ {name}({call}); }});\n}}\n"
        )
        kernels[name] = parsed
    src = build_dir / f"emu_{key}.cpp"
    lib_path = build_dir / f"emu_{key}.so"
    src.write_text(EMU_RUNTIME + "\n" + body + "\n" + "".join(wrappers))
    cmd = [GXX, "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-w", str(src), "-o", str(lib_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    lib = ctypes.CDLL(str(lib_path))
    _built[key] = {name: EmuKernel(lib, name, p, dtype) for name, p in kernels.items()}
    return _built[key]


def _fake_cupy(build_dir: Path) -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cp.__version__ = "emulated"
    cp.ndarray = FakeArray
    for name in ("float32", "float64", "int32", "int64", "uint32", "uint64"):
        setattr(cp, name, getattr(np, name))

    def asarray(a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        out = _alloc(a.shape, a.dtype)
        out[...] = a
        return out

    def zeros(shape, dtype=np.float64):
        out = _alloc(shape, dtype)
        out[...] = 0
        return out

    cp.asarray = asarray
    cp.empty = lambda shape, dtype=np.float64: _alloc(shape, dtype)
    cp.zeros = zeros
    cp.arange = lambda *a, **k: np.arange(*a, **k).view(FakeArray)
    cp.argsort = lambda a: np.argsort(np.asarray(a), kind="stable").view(FakeArray)
    cp.asnumpy = lambda a: np.array(a).view(np.ndarray)

    class RawModule:
        def __init__(self, code, options=()):
            self.kernels = _build(code, build_dir)

        def get_function(self, name):
            return self.kernels[name]

    cp.RawModule = RawModule

    class CUDARuntimeError(RuntimeError):
        pass

    runtime = types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError,
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"Emulated GPU", "major": 9, "minor": 0,
                                       "multiProcessorCount": 1, "totalGlobalMem": 2**30},
        runtimeGetVersion=lambda: 12040,
        driverGetVersion=lambda: 12080,
        memGetInfo=lambda: (2**29, 2**30),
    )
    stream = FakeStream()
    cp.cuda = types.SimpleNamespace(Device=FakeDevice, runtime=runtime,
                                    get_current_stream=lambda: stream,
                                    nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 4)))
    return cp


def _is_cuda_module(name: str) -> bool:
    return name == "cupy" or name.startswith("cupy.") or name.startswith("dlx.backends.cuda")


@contextlib.contextmanager
def _fresh_cuda_modules():
    """Runs its body with no cupy and no dlx.backends.cuda imported, and puts the originals
    back afterwards (on a GPU machine the real ones stay usable for the tests after)."""
    import dlx.backends as pkg

    saved = {k: v for k, v in sys.modules.items() if _is_cuda_module(k)}
    saved_attr = pkg.__dict__.get("cuda")
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if _is_cuda_module(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        if saved_attr is None:
            pkg.__dict__.pop("cuda", None)
        else:
            pkg.cuda = saved_attr


# Launch configurations: "default" (weights staged once, few grid-stride passes; 64-thread
# blocks, since emulated warp shuffles are slow and the kernels take any multiple of 32),
# and "tight": one-warp blocks, many grid-stride passes, split reductions, weights staged in
# chunks. The pooling tests keep the launchers' 256-thread blocks.
MODES = {
    "default": {"BLOCK": 64},
    "tight": {"BLOCK": 32, "BLOCKS_PER_SM": 1, "SMEM_BUDGET": 256},
}


def _configure(monkeypatch, kernels, mode):
    for attr, value in MODES[mode].items():
        monkeypatch.setattr(kernels, attr, value)
