"""Debug checks: the input checks that need a value read back from the device.

A training step never waits for the device, so by default such problems are caught on the
device: a label outside the classes (CrossEntropyLoss, NLLLoss) or a BCELoss input outside
[0, 1] turns the loss and its gradient into NaN, which ``dlx.fit`` reports. With
``dlx.set_debug(True)`` (or ``DLX_DEBUG=1``) the losses check eagerly instead and raise a
ValueError that names the problem, at the cost of one host read per call.
"""

from __future__ import annotations

import os

_debug = os.environ.get("DLX_DEBUG", "") not in ("", "0")


def set_debug(enabled: bool = True) -> None:
    """Eager input checks that read values back from the device (slower on a GPU)."""
    global _debug
    _debug = bool(enabled)


def is_debug() -> bool:
    return _debug
