"""``dlx info``: versions, devices, the GPU and the CPU threading set-up."""

from __future__ import annotations

import os
import platform

from dlx.cli.common import version


def register(subparsers):
    p = subparsers.add_parser("info", help="versions, devices, GPU and CPU threading")
    p.set_defaults(func=run)
    return p


def info() -> dict:
    """What ``dlx info`` prints, as a dict (tests use it)."""
    import dlx
    from dlx._device import device_info

    out = {
        "dlx": dlx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": version("numpy"),
        "numba": version("numba"),
        "array-api-strict": version("array-api-strict"),
        "cupy": next((v for v in (version(d) for d in ("cupy-cuda12x", "cupy-cuda13x", "cupy"))
                      if v != "not installed"), "not installed"),
        "torch (optional, tests only)": version("torch"),
        "default device": _default_device(),
    }
    gpu = device_info("cuda")
    devices = ["cpu"] + [name for name, usable in (("strict", device_info("strict").get("available")),
                                                   ("cuda", gpu.get("available"))) if usable]
    out["devices"] = ", ".join(devices)
    out["cuda"] = gpu
    cpu = device_info("cpu")
    out["cpu threads"] = cpu["threads"]
    out["cpu malloc"] = cpu.get("malloc")
    return out


def _default_device() -> str:
    """The default device, or what DLX_DEVICE asks for and why it cannot be had: ``dlx info``
    is where a user finds out, so it never fails on it."""
    import dlx

    try:
        return str(dlx.get_default_device())
    except (dlx.DeviceError, ValueError) as e:
        return f"{os.environ.get('DLX_DEVICE')!r} from DLX_DEVICE, unusable: {' '.join(str(e).split())}"


def print_info(data: dict, indent: str = "") -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            print_info(value, indent + "  ")
        else:
            print(f"{indent}{key.ljust(width)}  {value}")


def run(args) -> int:
    print_info(info())
    return 0
