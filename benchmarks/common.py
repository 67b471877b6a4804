"""What several benchmarks share: running one measured piece in a fresh subprocess (so its wall time and
peak resident memory are its own)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def run_child(script: str, spec) -> dict:
    """``python SCRIPT --child JSON(spec)``; returns the JSON object the child prints last."""
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child failed for {spec}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, device: str) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after (CUDA runs asynchronously)."""
    import time

    import torch

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def step_peak_increase(step, device: str) -> dict:
    """Peak memory that one call of ``step`` adds over the steady state before it (run one warm-up step first):
    peak allocated memory on CUDA, peak RSS on the CPU (VmHWM, reset to the current RSS first)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return {"peak_increase_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "base_mib": base / 2**20}
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    step()
    return {"peak_increase_mib": (_status_kib("VmHWM") - base) / 1024, "base_mib": base / 1024}


def parse_schedule(text: str) -> dict:
    """A schedule written ``peak lr / warm-up / decay`` (e.g. ``1e-2/0.05/0.2``; a constant lr is ``lr/0/0``) ->
    TrainConfig's fields ``lr``, ``lr_warmup``, ``lr_decay``."""
    try:
        lr, warmup, decay = (float(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"schedule {text!r} should be peak lr / warm-up / decay, e.g. 1e-2/0.05/0.2") from None
    return dict(lr=lr, lr_warmup=warmup, lr_decay=decay)
