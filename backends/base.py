"""The kernel seam every backend fills in, and the pieces all backends share.

Shapes use N, C, H, W for the input, OC (out channels), KH, KW for the kernel and
OH, OW for the output. ``stride``, ``padding`` and ``dilation`` always arrive as
``(h, w)`` tuples of ints (the layers normalise them). Every kernel accepts float32
and float64 arrays (float64 for gradient checks) and returns arrays of the same dtype
on the same device.
"""

from __future__ import annotations

import abc
import contextlib


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide (names the cause and the fix)."""


class HostSyncError(RuntimeError):
    """A device array was read back to the host where no read may happen (inside a step)."""


def conv2d_output_size(h, w, kh, kw, stride, padding, dilation):
    """(OH, OW) of a convolution, PyTorch's formula (floor)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def pool2d_output_size(h, w, kernel, stride, padding):
    """(OH, OW) of a pooling window (floor mode)."""
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return oh, ow


class Backend(abc.ABC):
    """What every device must provide; subclasses set ``name`` and ``xp`` and implement
    each abstract method (the ABC refuses to build a backend that misses one).

    The layers reach a device only through these methods (``Device.backend``), so adding a
    device means writing one subclass. Shapes use the letters of the module docstring.
    """

    name = "base"
    xp = None
    #: True when ``generator(index, seed)`` draws exactly the numbers of the host's NumPy
    #: PCG64 stream with that seed (cpu, strict); the loader then draws the shuffle order on
    #: the device, else on the host, so every device sees the data in one order.
    host_generator = True
    #: a data set larger than this stays on the host and is copied per batch (None: any size)
    max_resident_bytes: int | None = None
    #: optional fused update (None where a backend has none; the optimizer then runs its xp
    #: code): adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, entries, lr, *, beta1,
    #: beta2, eps, weight_decay, decoupled), one Adam/AdamW update of a whole parameter group
    #: in place, reading its step counts and learning rate from device memory (``steps`` the
    #: group's float64 vector, ``entries[i]`` the entry of params[i], ``lr`` a float64 0-d
    #: array), bit-for-bit the xp code's
    adam_step = None
    #: whole-step capture (None where a backend has none; ``dlx.compile_step`` then runs the
    #: step eagerly): capture_step(fn, args) -> an object with ``replay(args)`` -> outputs and
    #: ``valid()``, see backends/cuda/graph.py
    capture_step = None

    # ---- what ``dlx info`` shows -------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def info(cls) -> dict:
        """Versions and hardware of this device type; never raises (an unusable device says
        why in ``{"available": False, "error": ...}``)."""

    # ---- arrays and random numbers ------------------------------------------------------------
    @abc.abstractmethod
    def array_device(self, index):
        """The ``device=`` object the namespace's creation functions take."""

    @abc.abstractmethod
    def owns(self, x, index=None) -> bool:
        """True when ``x`` is an array of this backend (on device ``index`` if given)."""

    @abc.abstractmethod
    def asarray(self, data, index=None, dtype=None):
        """Host data (NumPy or Python) -> array on the device."""

    @abc.abstractmethod
    def to_numpy(self, x):
        """Device array -> NumPy array (a copy where it must be)."""

    @abc.abstractmethod
    def generator(self, index, seed):
        """A ``Generator`` (see below) making arrays on device ``index``."""

    @abc.abstractmethod
    def synchronize(self, index=None) -> None:
        """Wait for the work queued on the device (nothing to do on a CPU)."""

    def start_read(self, x):
        """Begin copying ``x`` to the host without making the host wait for the device: returns
        a function that gives the NumPy value once the copy has landed and None before. The
        value is ``x`` as it is at this point of the device's queue, whatever later work does
        to it. Here (memory the host reads directly) the copy is made at once."""
        value = self.to_numpy(x)
        return lambda: value

    # ---- collectives (dlx.distributed): ``world`` moves NumPy arrays between processes -------
    def all_reduce(self, world, x, index=None):
        """The sum of ``x`` over the ranks of ``world``, as a new array on the device. This
        default goes through the host (a copy each way); a backend may do better."""
        import numpy as np

        host = np.array(self.to_numpy(x), copy=True, order="C")
        world.all_reduce_host(host)
        return self.asarray(host, index)

    def broadcast(self, world, x, root=0, index=None):
        """Rank ``root``'s ``x`` on every rank of ``world``, as a new array on the device."""
        import numpy as np

        host = np.array(self.to_numpy(x), copy=True, order="C")
        world.broadcast_host(host, root)
        return self.asarray(host, index)

    def forbid_host_reads(self):
        """A context manager under which any read of this device's arrays back to the host
        (``bool()``, ``float()``, ``int()``, ``to_numpy``) raises ``HostSyncError``: the guard
        of a step that must never wait for the device. Only the strict device can catch them."""
        raise NotImplementedError(f"the {self.name} device cannot catch host reads; use the "
                                  f"strict device (dlx.testing.no_host_sync)")

    def graph_kernels(self):
        """A context manager under which eager code runs the kernels a captured step runs
        (where they differ, e.g. CUDA's own GEMM instead of cuBLAS), so an eager step and a
        replayed one give the same bits. Nothing changes on a backend that captures nothing."""
        return contextlib.nullcontext()

    def compile_note(self):
        """A line to show before a first step that will wait for kernels to be compiled (a
        fresh install), or None."""
        return None

    def keeps_resident(self, nbytes: int) -> bool:
        """Whether a data set of ``nbytes`` is copied to the device once, whole."""
        return self.max_resident_bytes is None or nbytes <= self.max_resident_bytes

    # ---- the DataLoader's fused path -----------------------------------------------------------
    def make_batch(self, data, idx, size, padding, oy=None, ox=None, flip=None, mean=None, std=None):
        """A float32 training batch (B, C, SH, SW) made in one step from the uint8 data set
        ``data`` (N, C, H, W) kept on the device, or None where this backend has no such
        fused path (this default: the DataLoader then runs its transforms with xp). The
        DataLoader asks once with an empty ``idx`` before it draws any random number.

        Image b is ``data[idx[b]]`` (idx int64 (B,)), zero-padded by ``padding`` (left, top,
        right, bottom), cut to ``size`` (SH, SW) at row ``oy[b]`` and column ``ox[b]`` of the
        padded image (int64 (B,); None: at (0, 0)), mirrored left-right where ``flip[b]``
        (bool (B,); None: never), then divided by 255 and, with ``mean`` and ``std`` (float32,
        one value or one per channel), normalised as ``(x - mean) / std``; every operation
        in float32 rounded as the xp code rounds it, so the batch is bit for bit that of
        RandomCrop / RandomHorizontalFlip / Normalize given the same random choices. The
        choices come in as arrays: this method draws no random number."""
        return None

    # ---- fused batch normalisation ---------------------------------------------------------------
    def batch_norm_forward(self, x, running_mean, running_var, weight, bias, batch_stats, eps):
        """``(y, saved, aux)`` of batch normalisation computed by a fused kernel, or None where
        this backend has none for these arrays (this default: ``dlx.nn.functional.batch_norm``
        then runs its xp formulas). Same arguments, results and ``aux`` (mean, biased var,
        values per channel) as that op's forward; ``saved`` is this backend's own, for
        ``batch_norm_backward``."""
        return None

    def batch_norm_backward(self, saved, dy, need_params=True):
        """(dx, dweight, dbias) for ``saved`` from this backend's ``batch_norm_forward``."""
        raise NotImplementedError(f"{type(self).__name__} has no fused batch norm")

    # ---- fused ReLU / leaky ReLU ------------------------------------------------------------------
    def leaky_relu_forward(self, x, negative_slope):
        """max(x, slope * x) (0 <= slope <= 1; slope 0 is ReLU) computed by a fused kernel, or
        None where this backend has none (this default: ``dlx.nn.functional.relu`` and
        ``leaky_relu`` run their xp code). Same bits as that code."""
        return None

    def leaky_relu_backward(self, t, dy, negative_slope):
        """dy where t > 0, else dy * slope (t: the leaky ReLU's input, or ReLU's output), by a
        fused kernel, or None (this default)."""
        return None

    # ---- kernels (the seam the layers call) -----------------------------------------------------
    def matmul(self, a, b):
        """a (M, K) @ b (K, N) -> (M, N), for nn.Linear; a backend may split a large product
        over threads (the CPU backend does, see backends/cpu/threads.py)."""
        return self.xp.matmul(a, b)

    @abc.abstractmethod
    def conv2d(self, x, w, b, stride, padding, dilation):
        """y (N,OC,OH,OW) from x (N,C,H,W), w (OC,C,KH,KW), b (OC,) or None."""

    @abc.abstractmethod
    def conv2d_backward_data(self, dy, w, x_shape, stride, padding, dilation):
        """dx of shape ``x_shape`` from dy (N,OC,OH,OW)."""

    @abc.abstractmethod
    def conv2d_backward_weight(self, x, dy, w_shape, stride, padding, dilation, kept=None):
        """dw of shape ``w_shape``; ``kept``: the second item of ``conv2d_forward`` for the
        same x and geometry, or None (a backend that keeps nothing ignores it)."""

    def conv2d_forward(self, x, w, b, stride, padding, dilation):
        """(y, kept): ``conv2d``'s output, and what this backend keeps of that work for the
        weight gradient of the same x (handed back as ``kept``), or None: this default keeps
        nothing. The CPU backend keeps the im2row rows of x (backends/cpu/conv.py)."""
        return self.conv2d(x, w, b, stride, padding, dilation), None

    def conv2d_backward_bias(self, dy):
        """db (OC,): dy summed over N, OH and OW."""
        return self.xp.sum(dy, axis=(0, 2, 3))

    def conv2d_backward(self, x, w, dy, stride, padding, dilation, need_dx=True, need_db=True,
                        kept=None):
        """(dx, dw, db) of a convolution; dx is None when ``need_dx`` is False, db when ``need_db``
        is; ``kept`` as for ``conv2d_backward_weight``."""
        dx = None
        if need_dx:
            dx = self.conv2d_backward_data(dy, w, tuple(x.shape), stride, padding, dilation)
        dw = self.conv2d_backward_weight(x, dy, tuple(w.shape), stride, padding, dilation, kept)
        db = self.conv2d_backward_bias(dy) if need_db else None
        return dx, dw, db

    @abc.abstractmethod
    def max_pool2d(self, x, kernel, stride, padding):
        """(y, argmax); argmax int32 (N,C,OH,OW) holds the flat index h*W + w of the maximum in
        the unpadded input plane; the first maximum wins."""

    @abc.abstractmethod
    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        """dx: each dy added at its window's argmax."""

    @abc.abstractmethod
    def avg_pool2d(self, x, kernel, stride, padding, count_include_pad=True):
        """y: the mean over each window."""

    @abc.abstractmethod
    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding, count_include_pad=True):
        """dx: each dy spread evenly over its window."""


class Generator:
    """Random numbers on one device. Every method returns a new array of the given dtype.

    uniform(shape, low, high, dtype), normal(shape, mean, std, dtype),
    permutation(n) -> int64 array, integers(low, high, shape) -> int64 array,
    get_state() -> JSON-able dict, set_state(state).
    """
