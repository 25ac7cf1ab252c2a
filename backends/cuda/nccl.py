"""All-reduce and broadcast of CuPy arrays with NCCL (``cupy.cuda.nccl``, one GPU per
process), its unique id shared over MPI. Where NCCL cannot run (CuPy built without it, or
two ranks on one GPU), ``communicator`` returns None and the backend goes through the host.

Not yet run on a GPU: the GPU check script (benchmarks/gpu_check.sh) runs it first.
"""

from __future__ import annotations

import socket

import cupy

_DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "int64": "NCCL_INT64",
           "int32": "NCCL_INT32"}


def communicator(world, index: int):
    """The NCCL communicator of ``world`` on GPU ``index`` (built once), or None."""
    key = ("nccl", index)
    if key not in world.device_comms:
        world.device_comms[key] = _build(world, index)
    return world.device_comms[key]


def _build(world, index: int):
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    with cupy.cuda.Device(index):
        bus = cupy.cuda.Device(index).pci_bus_id
    places = world.comm.allgather((socket.gethostname(), bus))
    if len(set(places)) != len(places):  # two ranks on one GPU: NCCL refuses that
        return None
    uid = world.broadcast_object(nccl.get_unique_id() if world.rank == 0 else None)
    with cupy.cuda.Device(index):
        return nccl.NcclCommunicator(world.size, uid, world.rank)


def _dtype(x):
    from cupy.cuda import nccl

    name = _DTYPES.get(x.dtype.name)
    if name is None:
        raise TypeError(f"NCCL all-reduce: no NCCL type for {x.dtype.name}")
    return getattr(nccl, name)


def all_reduce(comm, x):
    from cupy.cuda import nccl

    out = cupy.array(x, copy=True, order="C")
    with out.device:
        comm.allReduce(out.data.ptr, out.data.ptr, out.size, _dtype(out), nccl.NCCL_SUM,
                       cupy.cuda.get_current_stream().ptr)
    return out


def broadcast(comm, x, root: int):
    out = cupy.array(x, copy=True, order="C")
    with out.device:
        comm.bcast(out.data.ptr, out.size, _dtype(out), root, cupy.cuda.get_current_stream().ptr)
    return out
