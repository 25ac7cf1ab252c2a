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
    """The generator of ``device`` (default device if None); its arrays live on that device.
    In a data-parallel run each rank gets its own stream of the seed (dropout masks, noise
    differ between ranks, as their data do); initial weights come from the host stream,
    the same on every rank."""
    from dlx import distributed
    from dlx._device import device as _device

    dev = _device(device)
    with _lock:
        gen = _generators.get(dev)
        if gen is None:
            seed = _stream_seed(1)
            if distributed.is_initialized() and distributed.world_size() > 1:
                seed = [*seed, distributed.rank()]
            gen = _generators[dev] = dev.generator(seed)
        return gen


def get_rng_state() -> dict:
    """Seed and the state of every generator made so far (JSON-able), for checkpoints."""
    with _lock:
        return {"seed": _seed, "streams": {str(k): g.get_state() for k, g in _generators.items()}}


def check_rng_state(state) -> list:
    """Validate what ``get_rng_state`` returned, changing nothing, and return the
    ``(key, stream_state)`` pairs that can be restored here. Each stream is tried on a fresh
    generator first, so a malformed state raises ValueError before anything is applied.
    A stream of a device this machine cannot use (a ``cuda:0`` stream read on a CPU-only
    machine) is skipped: that generator starts from the seed if it is ever made here."""
    from dlx._device import DeviceError, host_generator
    from dlx._device import device as _device

    if not isinstance(state, dict) or not isinstance(state.get("seed"), int) \
            or isinstance(state["seed"], bool) or state["seed"] < 0:
        raise ValueError(f"malformed random state: expected {{'seed': int >= 0, 'streams': "
                         f"{{...}}}}, got {str(state)[:80]}")
    streams = state.get("streams", {})
    if not isinstance(streams, dict):
        raise ValueError(f"malformed random state: 'streams' must be a dict, got {type(streams).__name__}")
    usable = []
    for key, st in streams.items():
        try:
            if key == "init":
                probe = host_generator(_stream_seed(0))
            else:
                try:
                    dev = _device(key)
                except DeviceError:
                    continue  # saved on a device this machine does not have: skip it
                probe = dev.generator(_stream_seed(1))
            probe.set_state(st)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"malformed random state for stream {key!r}: {e}") from None
        usable.append((key, st))
    return usable


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned (streams of unavailable devices are skipped)."""
    usable = check_rng_state(state)
    manual_seed(int(state["seed"]))
    for key, st in usable:
        gen = init_generator() if key == "init" else generator(key)
        gen.set_state(st)
