"""One LeNet-5 training step (batch 128, 3x32x32, Adam): dlx vs PyTorch on one device.

    python benchmarks/lenet_step.py [--device cpu|cuda] [--steps 40] [--rounds 3] [--json X.json]
                                    [--baseline-python OTHER_VENV/bin/python]
                                    [--first-step-python FRESH_VENV/bin/python] [--first-step-runs 1]

On ``--device cuda`` both frameworks run on the GPU with the batch already there; memory
is then the GPU memory each framework's allocator holds (CuPy's pool total, PyTorch's
max reserved) above what it held before the model was made, and an epoch of CIFAR-10
(391 steps) is reported as 391 median steps. Every step reads the loss back (one sync),
in both frameworks.

Each framework runs in its own fresh process (so peak memory is its own): images/s over
the timed steps (after warm-up), peak resident memory added by training (peak RSS minus the
RSS right after the imports: model, batch, optimizer state, a step's temporaries), and
for dlx the first step in a fresh process with a cold and then a warm Numba cache
(NUMBA_CACHE_DIR pointing at a new empty folder, then at the same one), ``--first-step-runs``
times (the VM's speed drifts; every pair is reported, and their medians).

A fresh install is the main job's environment (``pip install -e ".[plots]"``), without the test
extra's SciPy: when SciPy is installed, Numba imports scipy.linalg at its first compile or
cache load, ~0.2-0.3 s of every first step here (warm 0.33-0.41 s without it, 0.52-0.67 s with
it, three alternating pairs, 2026-12-01). ``--first-step-python`` times the first steps with
such an environment's interpreter (e.g. ``python -m venv /tmp/fresh && /tmp/fresh/bin/pip
install -e ".[plots]"``); the timed steps still run under this one.

The machine is shared (a VM), so dlx and PyTorch run in alternating rounds and each
framework's figure is the median over rounds of its per-round median step.

``--baseline-python`` adds a third contender in the same rounds: the same dlx worker run by
another interpreter, one whose environment has another dlx commit installed (e.g.
``git worktree add /tmp/base HEAD~1 && python -m venv /tmp/base/.venv && /tmp/base/.venv/bin/pip
install -e /tmp/base``), and reports this dlx's speed over that one's: a before/after ratio
measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BATCH = 128


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _gpu_bytes(kind: str) -> int:
    if kind == "dlx":
        import cupy

        return cupy.get_default_memory_pool().total_bytes()
    import torch

    return torch.cuda.max_memory_reserved()


def worker_dlx(steps: int, device: str = "cpu") -> dict:
    t0 = time.perf_counter()
    import numpy as np

    import dlx
    from dlx import nn, optim
    from dlx.models import LeNet5

    t_import = time.perf_counter() - t0
    dev = dlx.device(device)
    base = _start_memory()
    gpu_base = _gpu_bytes("dlx") if dev.type == "cuda" else 0
    dlx.manual_seed(0)
    model = LeNet5(device=dev)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = dlx.asarray(rng.standard_normal((BATCH, 3, 32, 32)), device=dev, dtype="float32")
    y = dlx.asarray(rng.integers(0, 10, BATCH), device=dev)

    def step():
        loss = loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())  # as torch: no gradient for the input
        opt.step()
        opt.zero_grad()
        return float(loss)

    t1 = time.perf_counter()
    step()
    first = time.perf_counter() - t1
    out = _timed(step, steps, base, {"import_s": t_import, "first_step_s": first})
    if dev.type == "cuda":
        out["peak_gpu_mib"] = (_gpu_bytes("dlx") - gpu_base) / 2**20
    return out


def worker_torch(steps: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    base = _start_memory()
    gpu_base = _gpu_bytes("torch") if dev.type == "cuda" else 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)).to(dev)
    y = torch.from_numpy(rng.integers(0, 10, BATCH)).to(dev)

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss)

    t1 = time.perf_counter()
    step()
    first = time.perf_counter() - t1
    out = _timed(step, steps, base, {"first_step_s": first, "torch_threads": torch.get_num_threads(),
                                     "torch": torch.__version__})
    if dev.type == "cuda":
        out["peak_gpu_mib"] = (_gpu_bytes("torch") - gpu_base) / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _start_memory() -> int:
    """RSS (KiB) after the framework's imports, with the peak reset to it."""
    _reset_peak()
    return _rss_kib("VmRSS")


def _timed(step, steps: int, base: int, out: dict) -> dict:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    out["step_ms_median"] = 1e3 * times[len(times) // 2]
    out["step_ms_min"] = 1e3 * times[0]
    out["images_per_s"] = BATCH / times[len(times) // 2]
    # model, data, optimizer state and the step's temporaries, above the imported framework
    out["peak_training_mib"] = (_rss_kib("VmHWM") - base) / 1024
    out["rss_mib"] = _rss_kib("VmRSS") / 1024
    return out


def _median_round(results: list) -> dict:
    """The round with the median step time, plus every round's median step time."""
    ok = [r for r in results if "step_ms_median" in r]
    if not ok:
        return results[0]
    ok.sort(key=lambda r: r["step_ms_median"])
    out = dict(ok[len(ok) // 2])
    out["rounds_step_ms_median"] = [round(r["step_ms_median"], 2) for r in results if r in ok]
    return out


def _median_first_step(runs: list) -> dict:
    """The run with the median first step (an error result if none was timed)."""
    ok = sorted((r for r in runs if "first_step_s" in r), key=lambda r: r["first_step_s"])
    return ok[len(ok) // 2] if ok else (runs[0] if runs else {})


def _run(kind: str, steps: int, env=None, device: str = "cpu", python: str | None = None) -> dict:
    cmd = [python or sys.executable, __file__, "--worker", kind, "--steps", str(steps),
           "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both frameworks)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="alternating dlx/torch runs")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--baseline-python", metavar="PYTHON",
                    help="also time the dlx installed for this interpreter (another commit)")
    ap.add_argument("--first-step-python", metavar="PYTHON",
                    help="time dlx's first steps (cold and warm cache) with this interpreter, "
                         "e.g. a fresh venv with only the main job's dependencies")
    ap.add_argument("--first-step-runs", type=int, default=1,
                    help="cold/warm pairs, each with a new empty Numba cache")
    ap.add_argument("--worker", choices=["dlx", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = worker_dlx if args.worker == "dlx" else worker_torch
        print(json.dumps(fn(args.steps, args.device)))
        return 0

    colds, warms = [], []
    if args.device == "cpu":
        for _ in range(max(1, args.first_step_runs)):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "NUMBA_CACHE_DIR": cache}
                colds.append(_run("dlx", 1, env, python=args.first_step_python))
                warms.append(_run("dlx", 1, env, python=args.first_step_python))
    cold, warm = (_median_first_step(runs) for runs in (colds, warms))
    rounds = {"dlx": [], "torch": []}
    if args.baseline_python:
        rounds["dlx_baseline"] = []
    for _ in range(args.rounds):
        for kind in rounds:
            python = args.baseline_python if kind == "dlx_baseline" else None
            rounds[kind].append(_run(kind.split("_")[0], args.steps, device=args.device,
                                     python=python))
    dlx_res, torch_res = (_median_round(rounds[k]) for k in ("dlx", "torch"))
    result = {
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "batch": BATCH,
        "dlx": dlx_res,
        "torch": torch_res,
        "dlx_first_step_cold_cache_s": cold.get("first_step_s"),
        "dlx_first_step_warm_cache_s": warm.get("first_step_s"),
        "dlx_import_cold_s": cold.get("import_s"),
        "dlx_first_step_python": args.first_step_python or sys.executable,
        "dlx_first_step_cold_cache_runs_s": [r.get("first_step_s") for r in colds],
        "dlx_first_step_warm_cache_runs_s": [r.get("first_step_s") for r in warms],
    }
    if "images_per_s" in dlx_res and "images_per_s" in torch_res:
        result["throughput_ratio_dlx_over_torch"] = dlx_res["images_per_s"] / torch_res["images_per_s"]
        mem = "peak_gpu_mib" if args.device != "cpu" else "peak_training_mib"
        result["peak_memory_ratio_dlx_over_torch"] = dlx_res[mem] / max(torch_res[mem], 1e-9)
        result["epoch_s_dlx"] = 391 * dlx_res["step_ms_median"] / 1e3  # CIFAR-10: 391 batches
        result["epoch_s_torch"] = 391 * torch_res["step_ms_median"] / 1e3
    print(f"LeNet-5 training step, batch {BATCH}, Adam, {args.device} ({result['machine']})")
    for name, r in (("dlx", dlx_res), ("torch", torch_res)):
        if "error" in r:
            print(f"  {name:6s} not run: {r['error']}")
            continue
        print(f"  {name:6s} {r['images_per_s']:8.0f} images/s  step {r['step_ms_median']:6.1f} ms "
              f"(min {r['step_ms_min']:.1f}; round medians {r.get('rounds_step_ms_median')})  "
              f"peak +{r['peak_training_mib']:.1f} MiB during training"
              + (f", GPU +{r['peak_gpu_mib']:.1f} MiB" if "peak_gpu_mib" in r else ""))
    if "throughput_ratio_dlx_over_torch" in result:
        print(f"  ratio dlx/torch: throughput {result['throughput_ratio_dlx_over_torch']:.2f}x, "
              f"peak memory {result['peak_memory_ratio_dlx_over_torch']:.2f}x")
    if args.baseline_python:
        base = result["dlx_baseline"] = _median_round(rounds["dlx_baseline"])
        result["baseline_python"] = args.baseline_python
        if "images_per_s" in base and "images_per_s" in dlx_res:
            result["throughput_ratio_dlx_over_baseline"] = dlx_res["images_per_s"] / base["images_per_s"]
            print(f"  baseline dlx ({args.baseline_python}): {base['images_per_s']:8.0f} images/s  "
                  f"step {base['step_ms_median']:6.1f} ms (round medians "
                  f"{base.get('rounds_step_ms_median')}); this dlx over it: "
                  f"{result['throughput_ratio_dlx_over_baseline']:.3f}x")
        else:
            print(f"  baseline dlx not run: {base.get('error')}")
    if "epoch_s_dlx" in result:
        print(f"  CIFAR-10 epoch (391 steps): dlx {result['epoch_s_dlx']:.2f} s, "
              f"torch {result['epoch_s_torch']:.2f} s")
    if args.device == "cpu":
        cold_s, warm_s = result["dlx_first_step_cold_cache_s"], result["dlx_first_step_warm_cache_s"]
        if cold_s is None or warm_s is None:
            print(f"  dlx first step not timed: {cold.get('error') or warm.get('error')}")
        else:
            print(f"  dlx first step in a fresh process ({result['dlx_first_step_python']}): "
                  f"cold Numba cache {cold_s:.2f} s, warm {warm_s:.2f} s (medians; runs: cold "
                  f"{result['dlx_first_step_cold_cache_runs_s']}, warm "
                  f"{result['dlx_first_step_warm_cache_runs_s']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
