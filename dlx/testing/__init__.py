"""Testing helpers: ``gradcheck`` (float64 central differences against a module's
backward), ``xp_assert_close`` (array comparison across devices, tolerances per dtype), and
the op test harness of ``dlx.testing.opcase``: one ``OpCase`` row per op gives gradient
checks, a NumPy reference, PyTorch as an oracle and the functional pair on every device;
``no_host_sync`` proves a step never reads a value back from the device.
"""

from dlx.testing._core import DEFAULT_TOLERANCES, gradcheck, no_host_sync, xp_assert_close
from dlx.testing.opcase import (
    CHECKS,
    TOLERANCES,
    Input,
    OpCase,
    applicable_checks,
    check_float32,
    check_functional,
    check_gradients,
    check_reference,
    check_torch,
    labels,
    log_probabilities,
    nn_case,
    normal,
    op_checks,
    run_checks,
    tie_free,
    uniform,
)

__all__ = [
    "CHECKS", "DEFAULT_TOLERANCES", "TOLERANCES", "Input", "OpCase", "applicable_checks",
    "check_float32", "check_functional", "check_gradients", "check_reference", "check_torch",
    "gradcheck", "labels", "log_probabilities", "nn_case", "no_host_sync", "normal", "op_checks",
    "run_checks",
    "tie_free", "uniform", "xp_assert_close",
]
