"""Seeding: ``manual_seed(n)`` reseeds every generator dlx uses.

Two kinds of streams: the host stream that draws initial weights (so the same seed gives
the same weights on every device), and one stream per device for work done during
training (dropout masks, noise). The CPU and strict devices share an algorithm, so with
one seed they draw the same numbers.
"""

from __future__ import annotations

import threading

_DEFAULT_SEED = 0
_seed = _DEFAULT_SEED
_generators: dict = {}
_lock = threading.Lock()


def manual_seed(seed: int) -> None:
    """Seed every generator dlx uses (initial weights, dropout, shuffling, noise)."""
    global _seed
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"manual_seed takes a non-negative int, got {seed!r}")
    with _lock:
        _seed = seed
        _generators.clear()


def initial_seed() -> int:
    return _seed


def _stream_seed(stream: int) -> list[int]:
    return [_seed, stream]


def init_generator():
    """The host generator for initial weights; its arrays are NumPy arrays."""
    with _lock:
        gen = _generators.get("init")
        if gen is None:
            from dlx._device import host_generator

            gen = _generators["init"] = host_generator(_stream_seed(0))
        return gen


def generator(device=None):
    """The generator of ``device`` (default device if None); its arrays live on that device."""
    from dlx._device import device as _device

    dev = _device(device)
    with _lock:
        gen = _generators.get(dev)
        if gen is None:
            gen = _generators[dev] = dev.generator(_stream_seed(1))
        return gen


def get_rng_state() -> dict:
    """Seed and the state of every generator made so far (JSON-able), for checkpoints."""
    with _lock:
        return {"seed": _seed, "streams": {str(k): g.get_state() for k, g in _generators.items()}}


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    manual_seed(int(state["seed"]))
    for key, st in state.get("streams", {}).items():
        gen = init_generator() if key == "init" else generator(key)
        gen.set_state(st)
