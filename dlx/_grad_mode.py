"""Grad mode: whether modules keep, for each call, the context its backward needs.

``dlx.no_grad()`` turns it off for inference, as ``torch.no_grad()`` does.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    """False inside ``no_grad()``: modules then keep nothing for backward."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inference: within this block modules keep no context for backward (as PyTorch's
    ``torch.no_grad``), so calls cost no memory and need no backward."""
    before = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = before
