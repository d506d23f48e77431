"""What the `bench_*.py` tools share: timing, per-process peak memory, interleaved worker rounds.

A baseline and the thing it is compared with each run in their own subprocess (`run_worker`):
each gets its own peak memory, neither inherits the other's threads or allocator state (torch's
OpenMP pool and XLA's thread pool in one process slowed XLA by ~15 % at the paper size), and
`--rounds N` alternates them N times so slow drift of the machine reaches both.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

RESULT_PREFIX = "RESULT "


def time_calls(fn: Callable[[], object], repeats: int) -> list:
    """Wall seconds of `repeats` calls of `fn` after one warm-up call (which also allocates)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets VmHWM to the current RSS
        f.write("5")


def release_freed_memory() -> None:
    """glibc keeps memory freed by the compiler; the trainer hands it back (both frameworks
    get the same treatment in the benchmarks)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed_with_memory(fn: Callable[[], object], repeats: int) -> dict:
    """Median wall time of `fn` and the process's peak RSS while the timed calls ran (the peak
    is reset after the warm-up, so compilation does not count); `extra_mb` is the part of the
    peak above the resident memory before the timed calls."""
    fn()
    release_freed_memory()
    before = rss_mb("VmRSS")
    reset_peak_rss()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = rss_mb("VmHWM")
    return {"seconds": statistics.median(times), "peak_rss_mb": round(peak, 1),
            "extra_mb": round(peak - before, 1)}


def emit_result(result: dict) -> None:
    """A worker's answer on stdout (other lines are ignored by `run_worker`)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: str, arguments: Sequence[str]) -> dict:
    """Runs `python script arguments...` and returns its last RESULT line, or {'error': ...}."""
    proc = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if lines:
        return json.loads(lines[-1][len(RESULT_PREFIX):])
    return {"error": (proc.stderr.strip() or f"exit status {proc.returncode}")[-500:]}


def merge_rounds(rounds: list, time_keys: Sequence[str], memory_keys: Sequence[str]) -> dict:
    """One entry from the same worker run in several rounds: the median over rounds of every
    time key (each round's value listed under `<key>_rounds`), the largest of every memory
    key.  Rounds that failed are left out; if all failed, the last failure is returned."""
    ok = [r for r in rounds if all(k in r for k in time_keys)]
    if not ok:
        return rounds[-1]
    merged = dict(ok[-1])
    for key in time_keys:
        merged[key] = round(statistics.median(r[key] for r in ok), 4)
        if len(rounds) > 1:
            merged[f"{key}_rounds"] = [round(r[key], 4) for r in ok]
    for key in memory_keys:
        if all(key in r for r in ok):
            merged[key] = max(r[key] for r in ok)
    return merged


def machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
