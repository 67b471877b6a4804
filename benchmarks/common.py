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
