"""``dlx train`` compiles its CPU kernels in a second process while it reads the data set.

On a fresh install (nothing in Numba's on-disk cache) the first training step waits while
Numba compiles every kernel it calls: ~6 s for LeNet-5 on the 2-core development VM, one core
busy. Before that step ``dlx train`` spends ~4 s importing and reading CIFAR-10 (decompressing
its archive), on one core too. So ``start`` launches a second Python running ``main`` below
(arguments: MODEL DATASET [--hidden H] [--augment]), which trains the same model for one step
and evaluates it on four blank images of the data set's shape (the same layers, transforms and
dtype, so the same kernels), leaving them in the cache; ``finish`` waits for it just before
the first epoch, whose first step then loads the kernels instead of compiling them.

Only when the device's backend says the first step would compile (``compile_note``: the CPU
backend with an empty cache) and the run is a world of one. The second process changes no
number: it writes only Numba's cache, which the first step would have written itself. If it
fails or is interrupted, the first step compiles what is missing, as before; it is stopped
when ``dlx train`` exits early (a missing data set, Ctrl-C).
"""

from __future__ import annotations

import argparse
import atexit
import subprocess
import sys
import tempfile
import time

#: the longest ``finish`` waits for the second process (it is then stopped, and the first
#: step compiles what is still missing)
WAIT_S = 600.0


class Warmup:
    """The second process, and when it started."""

    def __init__(self, proc, log):
        self.proc, self.log, self.t0 = proc, log, time.perf_counter()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start(device, world_size: int, model: str, dataset: str, hidden: str,
          augment: bool) -> Warmup | None:
    """Launch the second process when the first step would compile kernels; else None."""
    if world_size != 1 or device.backend.compile_note() is None:
        return None
    # -c, not -m: dlx.cli imports this module, and runpy warns when it is run as __main__
    cmd = [sys.executable, "-c", "import sys; from dlx.cli.warmup import main; sys.exit(main())",
           model, dataset, "--hidden", str(hidden)]
    log = tempfile.TemporaryFile(mode="w+")  # its error, if any, for finish() to report
    try:
        proc = subprocess.Popen(cmd + (["--augment"] if augment else []),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    except OSError:
        log.close()
        return None
    warm = Warmup(proc, log)
    atexit.register(warm.stop)
    return warm


def finish(warm: Warmup | None, say) -> None:
    """Wait for the second process (one line says so); its failure is reported, not raised."""
    if warm is None:
        return
    try:
        running = warm.proc.poll() is None
        if running:
            say("compiling the CPU kernels in a second process (first run with this install "
                "only; cached on disk afterwards)")
        t_wait = time.perf_counter()
        try:
            code = warm.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            code = "timed out"
        took, overlapped = time.perf_counter() - warm.t0, t_wait - warm.t0
        if code == 0:
            say(f"CPU kernels compiled in {took:.1f} s in a second process, {overlapped:.1f} s "
                f"of it while the data set was read" if running else
                "CPU kernels compiled in a second process while the data set was read")
        else:
            warm.log.seek(0)
            lines = warm.log.read().strip().splitlines()
            say(f"compiling the CPU kernels in a second process failed ({code}"
                + (f": {lines[-1]}" if lines else "") + "); the first step compiles them")
    finally:
        warm.stop()
        atexit.unregister(warm.stop)


def _compile(model_name: str, dataset: str, hidden: str, augment: bool) -> None:
    """One training step and one evaluation of ``dlx train``'s model on blank images."""
    import numpy as np

    import dlx
    from dlx.cli.common import CHANNELS, IMAGE_SIZE, make_model, make_transforms, parse_hidden
    from dlx.data import ArrayDataset, DataLoader

    dev = dlx.device("cpu")
    model = make_model(model_name, dataset, dev, parse_hidden(hidden))
    size = IMAGE_SIZE[dataset]
    blank = ArrayDataset(np.zeros((4, CHANNELS[dataset], size, size), np.uint8), np.arange(4))
    train = DataLoader(blank, batch_size=4, device=dev, transform=make_transforms(dataset, augment))
    val = DataLoader(blank, batch_size=4, device=dev, transform=make_transforms(dataset, False))
    opt = dlx.optim.Adam(model.parameters(), lr=1e-3)
    dlx.fit(model, dlx.nn.CrossEntropyLoss(), opt, train, epochs=1, val_loader=val, progress=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dlx.cli.warmup", description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("dataset")
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--augment", action="store_true")
    args = ap.parse_args(argv)
    _compile(args.model, args.dataset, args.hidden, args.augment)
    return 0


