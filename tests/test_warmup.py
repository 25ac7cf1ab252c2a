"""``dlx train`` on a fresh install compiles its CPU kernels in a second process while it reads
the data set (dlx/cli/warmup.py): that process must leave every kernel the first step needs
in Numba's cache, and its failures must be reported, never raised."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types

from dlx.cli import warmup

# `dlx train` in a fresh process, counting the kernels Numba compiles in that process (a
# kernel loaded from the cache is not compiled). It first compiles one uncached function of
# its own, so a count of zero cannot come from a listener that hears nothing.
_TRAIN_COUNTING_COMPILES = """
import sys
import numpy as np
from numba import njit
from numba.core import event
compiled = []
class Count(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Count())
njit(lambda a: a[0] + 1)(np.zeros(1))
assert compiled == ["<lambda>"], compiled
from dlx.cli import main
code = main(sys.argv[1:])
print("compiled in this process:", compiled[1:])
sys.exit(code)
"""


def test_a_cold_train_compiles_in_the_second_process_and_its_first_step_compiles_nothing(
        mnist_dir, tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}  # empty: a fresh install
    argv = ["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1",
            "--batch-size", "32", "--out", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-c", _TRAIN_COUNTING_COMPILES, *argv], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "CPU kernels compiled in" in out.stdout, out.stdout + out.stderr
    assert "compiled in this process: []" in out.stdout, out.stdout
    assert "first step:" not in out.stdout + out.stderr  # no compile note after the first step


def test_a_failed_second_process_is_reported_in_one_line():
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('no kernels here')"],
                            stdout=subprocess.DEVNULL, stderr=log)
    said = []
    warmup.finish(warmup.Warmup(proc, log), said.append)
    assert said[-1] == ("compiling the CPU kernels in a second process failed (1: no kernels "
                        "here); the first step compiles them")
    assert log.closed


def test_no_second_process_when_nothing_would_compile_or_in_a_world_of_several():
    warm_cache = types.SimpleNamespace(backend=types.SimpleNamespace(compile_note=lambda: None))
    assert warmup.start(warm_cache, 1, "lenet5", "mnist", "256,128", False) is None
    cold_cache = types.SimpleNamespace(backend=types.SimpleNamespace(compile_note=lambda: "cold"))
    assert warmup.start(cold_cache, 2, "lenet5", "mnist", "256,128", False) is None
    warmup.finish(None, print)  # nothing to wait for


def test_finish_says_how_much_of_the_compile_overlapped_the_reading():
    said = []
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"],
                            stdout=subprocess.DEVNULL, stderr=log)
    warmup.finish(warmup.Warmup(proc, log), said.append)  # still running: waits, then says
    assert said[0].startswith("compiling the CPU kernels in a second process")
    assert said[1].startswith("CPU kernels compiled in ") and "s of it while the data set" in said[1]
    said.clear()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL, stderr=log)
    proc.wait()  # done before finish: no time claimed for it
    warmup.finish(warmup.Warmup(proc, log), said.append)
    assert said == ["CPU kernels compiled in a second process while the data set was read"]
