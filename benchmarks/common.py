"""Timing, peak-memory and reporting helpers shared by benchmarks/run.py and the suites.

Peak memory is measured from the kernel's own accounting: /proc/self/clear_refs resets the
process's high-water mark (VmHWM), the function runs once, and the peak minus the resident size
before the call is the extra memory it needed. run.py fixes glibc's mmap threshold
(MALLOC_MMAP_THRESHOLD_) so large temporaries are really returned to the system between calls
and reused heap pages cannot hide a peak.
"""
import csv
import ctypes
import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

_LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mib(fn: Callable[[], object]) -> Optional[float]:
    """Extra resident memory (MiB) at the peak of one call of fn; None where unmeasurable."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024.0


def time_fn(fn: Callable[[], object], repeats: int, warmup: int = 1) -> List[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def quantile(values: List[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


@dataclass
class Row:
    suite: str
    case: str
    impl: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    extra_peak_mib: Optional[float]
    threads: int = field(default_factory=torch.get_num_threads)
    note: str = ""


def measure(suite: str, case: str, impl: str, fn: Callable[[], object], repeats: int,
            memory: bool = True, warmup: int = 1, note: str = "") -> Row:
    times = time_fn(fn, repeats, warmup)
    mem = peak_extra_mib(fn) if memory else None
    return Row(suite, case, impl, 1e3 * statistics.median(times), 1e3 * quantile(times, 0.2),
               1e3 * quantile(times, 0.8), mem, note=note)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def format_table(rows: List[Row], reference_impl: str = "fastsoftmax") -> str:
    """Markdown table; 'x vs fastsoftmax' is impl time / fastsoftmax time in the same case."""
    ours: Dict[str, float] = {r.case: r.median_ms for r in rows if r.impl == reference_impl}
    lines = ["| case | impl | median ms | p20 ms | p80 ms | time / fastsoftmax | extra peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r.median_ms / ours[r.case] if r.case in ours else float("nan")
        mem = "n/a" if r.extra_peak_mib is None else f"{r.extra_peak_mib:.1f}"
        lines.append(f"| {r.case} | {r.impl} | {r.median_ms:.1f} | {r.p20_ms:.1f} | "
                     f"{r.p80_ms:.1f} | {ratio:.2f} | {mem} |")
    return "\n".join(lines)


def write_csv(rows: List[Row], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
