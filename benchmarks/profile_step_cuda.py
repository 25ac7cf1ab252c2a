"""Where a LeNet-5 training step's time goes on the GPU (batch 128, 3x32x32, Adam).

    python benchmarks/profile_step_cuda.py [--steps 50] [--json OUT.json]

For dlx (with Adam's fused kernel and with Adam's plain xp code) and for PyTorch eager:

- step: wall time of one step that reads the loss back (as training does), median;
- host: time the host needs to issue one step without waiting for the GPU;
- gpu: time the GPU needs to run one step's kernels back to back. Measured by first
  queueing a kernel that keeps the GPU busy (a spin of ~0.3 s), then issuing a burst of 5
  steps behind it, so that the host is far ahead and CUDA events around the steps time
  the kernels alone, with no gaps for the host (medians over 10 bursts);
- per phase (forward, loss, backward, optimizer): host issue time of the phase;
- dlx only: the functions that take the host's time (cProfile, top 15 by own time).

If host is close to step and gpu far below it, the step is bound by the host (Python and
launch overhead), not by the kernels. If host comes out near the spin's length over the
burst (~60 ms), something in the step read a result back and waited for the GPU (for dlx in
2026-11: CrossEntropyLoss's label-range check); gpu then includes that wait too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import numpy as np

BATCH = 128


def _median_ms(times):
    return 1e3 * statistics.median(times)


def _busy_kernel():
    import cupy

    return cupy.RawKernel(r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}""", "spin")


def _measure(step, sync, spin, make_events, elapsed, steps, burst=5, reps=10):
    """(step ms, host ms, gpu ms, {phase: host ms}) for a step function.

    host and gpu come from ``reps`` bursts of ``burst`` steps queued behind ``spin`` (a
    burst stays well under the 1024 launches CUDA queues, so the host never waits)."""
    for _ in range(10):
        step(read=True)
    sync()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(read=True)
        walls.append(time.perf_counter() - t0)
    hosts, gpus, phases = [], [], {}
    for _ in range(reps):
        sync()
        spin()
        start, end = make_events()
        t0 = time.perf_counter()
        start.record()
        for _ in range(burst):
            for name, t in step(read=False, timed=True).items():
                phases.setdefault(name, []).append(t)
        end.record()
        hosts.append((time.perf_counter() - t0) / burst)
        end.synchronize()
        gpus.append(elapsed(start, end) / burst)
    sync()
    return (_median_ms(walls), _median_ms(hosts), statistics.median(gpus),
            {k: _median_ms(v) for k, v in phases.items()})


def run_dlx(steps, fused):
    import cupy

    import dlx
    from dlx import nn, optim
    from dlx.models import LeNet5

    dev = dlx.device("cuda")
    saved = dev.backend.adam_step
    if not fused:
        dev.backend.adam_step = None
    dlx.manual_seed(0)
    rng = np.random.default_rng(0)
    model = LeNet5(device=dev)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x = dlx.asarray(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32), device=dev)
    y = dlx.asarray(rng.integers(0, 10, BATCH), device=dev)

    def step(read, timed=False):
        t = [time.perf_counter()]
        out = model(x)
        t.append(time.perf_counter())
        loss = loss_fn(out, y)
        t.append(time.perf_counter())
        model.backward_params(loss_fn.backward())
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad()
        t.append(time.perf_counter())
        if read:
            float(dlx.to_numpy(loss))
        if timed:
            return dict(zip(("forward", "loss", "backward", "optimizer"), np.diff(t)))
        return None

    kernel = _busy_kernel()

    def spin():
        kernel((1,), (1,), (np.int64(600_000_000),))  # ~0.3 s at ~2 GHz

    result = _measure(step, dev.synchronize, spin, lambda: (cupy.cuda.Event(), cupy.cuda.Event()),
                      cupy.cuda.get_elapsed_time, steps)
    prof = cProfile.Profile()
    dev.synchronize()
    prof.enable()
    for _ in range(steps):
        step(read=True)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    dev.backend.adam_step = saved
    return result, text.getvalue()


def run_torch(steps):
    import torch
    from torch import nn

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10)).to(dev)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (BATCH,), device=dev)

    def step(read, timed=False):
        t = [time.perf_counter()]
        out = model(x)
        t.append(time.perf_counter())
        loss = loss_fn(out, y)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad()
        t.append(time.perf_counter())
        if read:
            loss.item()
        if timed:
            return dict(zip(("forward", "loss", "backward", "optimizer"), np.diff(t)))
        return None

    def events():
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    return _measure(step, torch.cuda.synchronize, lambda: torch.cuda._sleep(600_000_000), events,
                    lambda start, end: start.elapsed_time(end), steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    rows, profiles = {}, {}
    for name, fn in (("dlx (fused Adam)", lambda: run_dlx(args.steps, True)),
                     ("dlx (xp Adam)", lambda: run_dlx(args.steps, False)),
                     ("torch", lambda: (run_torch(args.steps), ""))):
        try:
            (wall, host, gpu, phases), prof = fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"{name}: failed: {type(e).__name__}: {e}")
            continue
        rows[name] = {"step_ms": wall, "host_ms": host, "gpu_ms": gpu, "phases_host_ms": phases}
        profiles[name] = prof
    print(f"LeNet-5 step, batch {BATCH}, Adam, medians over {args.steps} steps (ms)")
    print(f"{'':18} {'step':>7} {'host':>7} {'gpu':>7}   forward    loss  backward  optimizer (host)")
    for name, r in rows.items():
        p = r["phases_host_ms"]
        print(f"{name:18} {r['step_ms']:7.2f} {r['host_ms']:7.2f} {r['gpu_ms']:7.2f}   "
              f"{p['forward']:7.2f} {p['loss']:7.2f} {p['backward']:9.2f} {p['optimizer']:10.2f}")
    for name, text in profiles.items():
        if text:
            print(f"\n--- {name}: cProfile, {args.steps} steps, top 15 by own time")
            print("\n".join(line for line in text.splitlines() if line.strip())[:4000])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
