"""The first training step of a fresh install waits for the CPU kernels to compile: what
``dlx.fit`` and ``train_gan`` say about it, and how they tell it happened."""

from __future__ import annotations

import time

#: a first step slower than this compiled the kernels (a fresh install): it is reported and
#: left out of the epoch's time (a warm first step of LeNet-5 takes ~0.3 s on 2 cores)
COMPILE_NOTE_S = 1.0


def say_compile_note(device, progress: bool) -> None:
    """Before the first epoch: when no CPU kernel is cached yet, say the first step compiles."""
    if progress:
        note = device.backend.compile_note()
        if note:
            from tqdm.auto import tqdm

            tqdm.write(note)


def first_step_compiled(t0: float, bar, progress: bool) -> bool:
    """Whether the first step, started at ``t0``, compiled the kernels (took over
    COMPILE_NOTE_S); if so, one line on ``bar`` says so. The caller leaves it untimed."""
    took = time.perf_counter() - t0
    if took <= COMPILE_NOTE_S:
        return False
    if progress:
        bar.write(f"first step: {took:.1f} s compiling kernels "
                  f"(first run with this install only; not counted in the epoch's time)")
    return True
