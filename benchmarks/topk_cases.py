"""Top-k inner-product benchmark table (issue 3): fastsoftmax vs torch, faiss and the matmul floor.

``run_topk(args) -> list of row dicts`` is what benchmarks/run.py calls for its ``topk`` section;
this file also runs on its own:

    python benchmarks/topk_cases.py --quick            # subset, ~minutes on 2 cores
    python benchmarks/topk_cases.py                    # full grid B x d x N x k
    python benchmarks/topk_cases.py --csv out.csv --markdown benchmarks/RESULTS_topk.md

Rows: case, impl, median_ms, p20_ms, p80_ms, ratio (median / matmul floor median of the same
case, measured in the same run), extra_peak_mib (peak resident memory above the resident memory
before the call; CPU: /proc/self/status VmHWM after resetting it through /proc/self/clear_refs,
with freed heap returned by malloc_trim first).

The matmul floor is torch.mm of the same shapes into a preallocated [B, N] buffer, no selection.
Where [B, N] float32 exceeds --max-buffer-gib the floor (and torch.topk over the full matrix) runs
in column blocks of that size into a preallocated buffer instead, and the row says so.
"""
import argparse
import csv
import ctypes
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastsoftmax  # noqa: E402

FULL_GRID = [(B, d, N, k) for B in (256, 4096) for d in (64, 128)
             for N in (100_000, 1_000_000) for k in (10, 100, 1000)]
QUICK_GRID = [(256, 64, 100_000, 10), (256, 64, 100_000, 100), (256, 64, 100_000, 1000),
              (256, 128, 100_000, 100), (256, 128, 1_000_000, 100), (4096, 64, 100_000, 100)]
NUM_EXCLUDED = 100
TORCH_CHUNK = 65_536

try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no trimming, the memory column is then an upper-bound-free estimate
    _libc = None


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> Optional[int]:
    if _libc is not None:
        _libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _rss_kib("VmRSS:")


def measure(fn: Callable[[], object], *, min_reps: int = 3, max_reps: int = 9,
            min_total_s: float = 2.0) -> Dict[str, float]:
    """One warm-up call (also measured for memory), then repetitions until both bounds are met."""
    base = _reset_peak()
    fn()
    extra = None if base is None else max(0, _rss_kib("VmHWM:") - base) / 1024
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < min_total_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    qs = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else times * 4
    return {"median_ms": statistics.median(times) * 1e3, "p20_ms": qs[0] * 1e3,
            "p80_ms": qs[-1] * 1e3, "extra_peak_mib": extra, "reps": len(times)}


def torch_topk_chunked(q, w, k, chunk=TORCH_CHUNK):
    """torch.topk over column chunks with a running merge (what users write to save memory)."""
    best_s = best_i = None
    for c0 in range(0, w.shape[0], chunk):
        s = q @ w[c0:c0 + chunk].T
        cs, ci = torch.topk(s, min(k, s.shape[1]), dim=1)
        ci += c0
        if best_s is not None:
            cs, pos = torch.topk(torch.cat([best_s, cs], 1), k, dim=1)
            ci = torch.gather(torch.cat([best_i, ci], 1), 1, pos)
        best_s, best_i = cs, ci
    return best_s, best_i


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    return sys.modules["faiss"]


def run_topk(args) -> List[dict]:
    """Runs the grid selected by args (quick, cases, impls, threads, max_buffer_gib)."""
    threads = getattr(args, "threads", None) or torch.get_num_threads()
    torch.set_num_threads(threads)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    grid = QUICK_GRID if getattr(args, "quick", False) else FULL_GRID
    only = getattr(args, "cases", None)
    if only:
        grid = [c for c in grid if "B{}-d{}-N{}-k{}".format(*c) in only]
    impls = set(getattr(args, "impls", None) or [])
    max_buffer = int(getattr(args, "max_buffer_gib", 2.0) * 2 ** 30)
    rows: List[dict] = []
    gen = torch.Generator().manual_seed(0)
    items_cache: Dict[tuple, torch.Tensor] = {}
    for B, d, N, k in grid:
        case = f"B{B}-d{d}-N{N}-k{k}"
        q = torch.randn(B, d, generator=gen)
        if (N, d) not in items_cache:
            items_cache.clear()  # NB: one table at a time (N = 1M, d = 128 is 512 MiB)
            items_cache[(N, d)] = torch.randn(N, d, generator=gen)
        w = items_cache[(N, d)]
        w_bf16 = w.bfloat16()
        excl = torch.randint(0, N, (B, NUM_EXCLUDED), generator=gen)
        excl_csr = (torch.arange(0, B * NUM_EXCLUDED + 1, NUM_EXCLUDED), excl.reshape(-1))
        blocked = B * N * 4 > max_buffer
        block_cols = N if not blocked else max(1, max_buffer // (B * 4))
        floor_buf = torch.empty(B, block_cols)

        def floor():
            for c0 in range(0, N, block_cols):
                c1 = min(N, c0 + block_cols)
                torch.mm(q, w[c0:c1].T, out=floor_buf[:, :c1 - c0])

        cand: Dict[str, Callable[[], object]] = {
            "matmul floor" + (f" (blocks of {block_cols})" if blocked else ""): floor,
            "fastsoftmax": lambda: fastsoftmax.topk_inner_product(q, w, k),
            f"fastsoftmax excl{NUM_EXCLUDED}":
                lambda: fastsoftmax.topk_inner_product(q, w, k, exclude=excl_csr),
            "torch.topk chunked": lambda: torch_topk_chunked(q, w, k),
            # The bfloat16 scan with float64 re-scoring (exact float32 result); the table's
            # bfloat16 copy is made once, as ItemIndex(bf16_scan=True) keeps it.
            "fastsoftmax bf16 scan (exact fp32)":
                lambda: fastsoftmax.topk_inner_product_bf16(q, w, k, items_bf16=w_bf16),
        }
        if not blocked:
            cand["torch.topk(q @ W.T)"] = lambda: torch.topk(q @ w.T, k, dim=1)
        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            index.add(w.numpy())
            qn = q.numpy()
            default_thr = faiss.cvar.distance_compute_blas_threshold

            def faiss_default():
                faiss.cvar.distance_compute_blas_threshold = default_thr
                return index.search(qn, k)

            def faiss_blas():
                faiss.cvar.distance_compute_blas_threshold = 0
                try:
                    return index.search(qn, k)
                finally:
                    faiss.cvar.distance_compute_blas_threshold = default_thr

            cand["faiss IndexFlatIP (default)"] = faiss_default
            cand["faiss IndexFlatIP (BLAS forced)"] = faiss_blas
        extra_impls = getattr(args, "extra_impls", None)
        if extra_impls:
            cand.update(extra_impls(q, w, k))
        floor_ms = None
        for name, fn in cand.items():
            if impls and name not in impls and not name.startswith("matmul floor"):
                continue
            big = B * N * d >= 4096 * 1_000_000 * 64
            m = measure(fn, min_reps=1 if big else 3, max_reps=3 if big else 9,
                        min_total_s=0.0 if big else 2.0)
            if name.startswith("matmul floor"):
                floor_ms = m["median_ms"]
            row = {"case": case, "impl": name, "threads": threads, **m,
                   "ratio": m["median_ms"] / floor_ms if floor_ms else None}
            rows.append(row)
            print(f"{case:28s} {name:36s} {m['median_ms']:10.1f} ms  "
                  f"x{row['ratio']:.2f}  +{m['extra_peak_mib'] or 0:.0f} MiB", flush=True)
        del cand
    return rows


def write_csv(rows: List[dict], path: str) -> None:
    keys = ["case", "impl", "threads", "median_ms", "p20_ms", "p80_ms", "ratio",
            "extra_peak_mib", "reps"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: List[dict]) -> str:
    lines = ["| case | impl | median ms | p20 ms | p80 ms | × floor | extra peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = "" if r["extra_peak_mib"] is None else f"{r['extra_peak_mib']:.0f}"
        lines.append(f"| {r['case']} | {r['impl']} | {r['median_ms']:.1f} | {r['p20_ms']:.1f} | "
                     f"{r['p80_ms']:.1f} | {r['ratio']:.2f} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick subset of the grid")
    parser.add_argument("--cases", nargs="*", help="only these cases, e.g. B256-d64-N100000-k10")
    parser.add_argument("--impls", nargs="*", help="only these implementations (floor always)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-buffer-gib", type=float, default=2.0,
                        help="largest [B, N] float32 buffer the floor / full torch.topk may use")
    parser.add_argument("--csv", default=None)
    parser.add_argument("--markdown", default=None, help="write the table to this file")
    args = parser.parse_args(argv)
    rows = run_topk(args)
    if args.csv:
        write_csv(rows, args.csv)
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
