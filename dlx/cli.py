"""The ``dlx`` command. ``dlx info``: versions, devices, GPU and the CPU threading setup."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info() -> dict:
    """What ``dlx info`` prints, as a dict (tests use it)."""
    import dlx

    out = {
        "dlx": dlx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "array-api-strict": _version("array-api-strict"),
        "cupy": next((v for v in (_version(d) for d in ("cupy-cuda12x", "cupy-cuda13x", "cupy"))
                      if v != "not installed"), "not installed"),
        "torch (optional, tests only)": _version("torch"),
        "default device": str(dlx.get_default_device()),
    }
    devices = ["cpu"]
    try:
        dlx.device("strict")
        devices.append("strict")
    except ImportError:
        pass
    try:
        from dlx.backends.cuda import cuda_info

        gpu = cuda_info()
    except ImportError as e:  # the CUDA backend module itself is missing
        gpu = {"error": str(e)}
    if "error" not in gpu:
        devices.append("cuda")
    out["devices"] = ", ".join(devices)
    out["cuda"] = gpu
    from dlx.backends.cpu.threads import threading_info

    out["cpu threads"] = threading_info()
    return out


def _print_info(data: dict, indent: str = "") -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_info(value, indent + "  ")
        else:
            print(f"{indent}{key.ljust(width)}  {value}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dlx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="versions, devices, GPU and CPU threading")
    args = parser.parse_args(argv)
    if args.command == "info":
        _print_info(info())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
