"""How the CPU backend asks glibc's malloc to keep freed memory for reuse.

A training step allocates and frees the same few large arrays (activations, gradients, the
im2row buffers) every step. glibc serves a request above its mmap threshold (128 KiB at
first, raised on the fly up to 32 MiB) with fresh pages from the kernel, and gives the top
of its heap back once more than its trim threshold is free; pages handed back come back as
page faults (each page zeroed by the kernel) on the next step. Whether a step hits that
depends on the order in which arrays happen to be freed: measured on a LeNet-5 training step
(batch 128, quiet 2-core VM, 2026-12-01), the same code faulted 0 or 1,932 pages per step
(8.4 against 11.9 ms) depending only on which thread handed back the last task; with
MALLOC_MMAP_THRESHOLD_=32 MiB and MALLOC_TRIM_THRESHOLD_=64 MiB it faulted 0.3 either way.
A trim threshold of 64 MiB was too little for the DCGAN step at batch 128 (what
``benchmarks/graph_epoch.py`` trains; AMD EPYC 2-core VM, 2026-12-01): it faulted 8,539-11,606
pages a step, 3.2 MB of them for every outer product of the discriminator's last layer
(784 pages, 2.1-3.1 ms against 0.1 ms warm), and stepped in 327-357 ms (medians of three
processes each, alternating) against 263-314 ms and 1 fault a step with 1 GiB; peak
memory 282 MiB either way.

So ``configure()`` sets an mmap threshold of 32 MiB (glibc's largest: larger arrays still
get fresh pages every time) and a trim threshold of 1 GiB through ``mallopt`` (what the
environment variables would do), unless the user set any MALLOC_* tuning variable or the C
library is not glibc. The cost: freed memory at the top of the heap, up to 1 GiB, stays in
the process for reuse instead of going back to the system (it is never more than the
process's peak), the same trade every framework's caching allocator makes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
_TRIM_THRESHOLD = 1 << 30
_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
             "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")
_configured: str | None = None


def configure() -> str:
    """Apply the rule once (idempotent); returns what it did, for ``dlx info``."""
    global _configured
    if _configured is None:
        _configured = _apply()
    return _configured


def status() -> str:
    """What ``configure`` did, or that it has not run (the CPU backend has not started)."""
    return _configured or "not applied (the cpu backend has not started)"


def _apply() -> str:
    user = [name for name in _USER_ENV if os.environ.get(name)]
    if user:
        return f"left to {user[0]}"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl and macOS lack it
    except (OSError, AttributeError):
        return "not glibc: its defaults apply"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)):
        return "mallopt refused: glibc's defaults apply"
    return f"mmap threshold {_MMAP_THRESHOLD >> 20} MiB, trim threshold {_TRIM_THRESHOLD >> 20} MiB"
