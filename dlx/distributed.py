"""Synchronous data parallelism on MPI (``mpi4py``, launched with ``mpiexec``) and, on GPUs,
NCCL: gradients averaged in one packed buffer between backward and the optimizer step.

    mpiexec -n 2 dlx train lenet5 --dataset cifar10 --batch-size 64   # = one process, batch 128

    from dlx import distributed as dist
    dist.init()                                    # a world of one without mpiexec: free
    dist.broadcast_parameters(model)               # once: every rank starts from rank 0's weights
    loader = DataLoader(ds, 64, shuffle=True, seed=0, shard=(dist.rank(), dist.world_size()))
    ...  model.backward(...); dist.allreduce_gradients(model); opt.step()

A plain ``python script.py`` is a world of one: every call here returns at once and imports
no MPI. Under ``mpiexec`` (found by the launcher's environment variables) ``init`` imports
``mpi4py`` (``pip install -e ".[dist]"``: mpi4py and the ``mpich`` wheel, which brings
``mpiexec``). How the arrays travel is the device backend's business
(``Backend.all_reduce`` / ``broadcast``): in place on NumPy arrays, through the host for
other devices, NCCL on CUDA where it can run. A rank that raises aborts the whole world, so
the others stop with an error naming it instead of waiting forever.
"""

from __future__ import annotations

import os
import sys
import time

from dlx._device import device_of, get_namespace
from dlx.dtypes import dtype_name

__all__ = [
    "DistributedError", "World", "all_reduce", "allreduce_gradients", "barrier", "broadcast",
    "broadcast_parameters", "init", "is_initialized", "is_main", "rank", "world_size",
]

#: environment variables a launcher sets in every process it starts (MPICH/Hydra, Open MPI,
#: PMIx, Slurm's srun with PMI)
_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class DistributedError(RuntimeError):
    """Data parallelism cannot run as asked (names the cause and the fix)."""


class World:
    """The processes training together: ``rank``, ``size`` and, in a world of more than one,
    the MPI communicator. Its ``*_host`` methods move NumPy arrays; backends build on them."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.device_comms: dict = {}  # per device: what its backend built (e.g. an NCCL comm)

    def all_reduce_host(self, array) -> None:
        """Sum a C-contiguous NumPy array over the ranks, in place."""
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)

    def broadcast_host(self, array, root: int = 0) -> None:
        """Overwrite a C-contiguous NumPy array with rank ``root``'s, in place."""
        self.comm.Bcast(array, root=root)

    def broadcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


_world: World | None = None


def _launched_by_mpiexec() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init() -> World:
    """Join the world this process was launched in (``mpiexec -n N``), once; without a
    launcher, a world of one. Returns the ``World``."""
    global _world
    if _world is not None:
        return _world
    if not _launched_by_mpiexec():
        _world = World()
        return _world
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(
            "this process was started by mpiexec but mpi4py is not installed. Fix: "
            'pip install -e ".[dist]" (mpi4py and the mpich wheel with its mpiexec)'
        ) from e
    _world = World(MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None)
    if _world.size > 1:
        _install_abort_hook(_world)
        _share_cores()
    return _world


def _share_cores() -> None:
    """Ranks on one machine split its cores: each caps its kernel threads at cores / local
    ranks (DLX_NUM_THREADS, read when the CPU backend starts; a value the user set wins).
    Call ``init()`` before the first array is made for this to apply."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if local and int(local) > 1 and "DLX_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["DLX_NUM_THREADS"] = str(max(1, (cores or 1) // int(local)))


def _install_abort_hook(world: World) -> None:
    """An uncaught exception on one rank aborts every rank (else they wait in a collective)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        # the one line first: mpiexec may drop what a rank wrote just before the abort
        print(f"dlx.distributed: rank {world.rank} of {world.size} failed ({kind.__name__}: "
              f"{value}); aborting all ranks", file=sys.stderr, flush=True)
        previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(0.2)  # let the launcher forward the traceback before it tears down
        world.abort(1)

    sys.excepthook = hook


def _get() -> World:
    return _world if _world is not None else init()


def is_initialized() -> bool:
    return _world is not None


def rank() -> int:
    """This process's number, 0 .. world_size() - 1 (0 in a world of one)."""
    return _get().rank


def world_size() -> int:
    return _get().size


def is_main() -> bool:
    """True on rank 0: the rank that prints, logs and writes checkpoints."""
    return _get().rank == 0


def barrier() -> None:
    world = _get()
    if world.size > 1:
        world.comm.Barrier()


def all_reduce(array, op: str = "sum"):
    """The sum (or ``op="mean"``) of ``array`` over the ranks, as a new array on its device."""
    if op not in ("sum", "mean"):
        raise ValueError(f"all_reduce: op must be 'sum' or 'mean', got {op!r}")
    world = _get()
    if world.size == 1:
        return array
    dev = device_of(array)
    out = dev.backend.all_reduce(world, array, dev.index)
    return out / world.size if op == "mean" else out


def broadcast(array, root: int = 0):
    """Rank ``root``'s ``array`` on every rank (a new array on the same device)."""
    world = _get()
    if world.size == 1:
        return array
    dev = device_of(array)
    return dev.backend.broadcast(world, array, root, dev.index)


def broadcast_parameters(model, root: int = 0) -> None:
    """Give every rank rank ``root``'s parameters and buffers (once, before training)."""
    world = _get()
    if world.size == 1:
        return
    for p in model.parameters():
        p.data = broadcast(p.data, root)
    for mod in model.modules():
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = broadcast(b, root)


def allreduce_gradients(model, weight: float | None = None) -> None:
    """Average every parameter gradient over the ranks, in one packed buffer per dtype: call
    it between backward and the optimizer step. ``weight`` (this rank's share of the global
    batch, e.g. local_n / global_n when the last batch splits unevenly) makes it a weighted
    sum instead of the plain mean; a parameter without a gradient counts as zeros."""
    world = _get()
    if world.size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    by_dtype: dict = {}
    for p in params:
        by_dtype.setdefault(dtype_name(p.dtype), []).append(p)
    scale = 1.0 / world.size if weight is None else float(weight)
    for group in by_dtype.values():
        xp = get_namespace(group[0].data)
        flat = xp.concat([xp.reshape(p.grad if p.grad is not None else xp.zeros_like(p.data), (-1,))
                          for p in group])
        dev = device_of(flat)
        total = dev.backend.all_reduce(world, flat * scale, dev.index)
        start = 0
        for p in group:
            n = p.data.size
            p.grad = xp.reshape(total[start:start + n], p.data.shape)
            start += n
