"""fastsoftmax benchmark suite: correctness check, then a side-by-side table and a CSV.

    python benchmarks/run.py                 # every suite at the issues' shapes
    python benchmarks/run.py --quick         # smaller shapes, a minute or two
    python benchmarks/run.py --suite softmax --repeats 7 --csv benchmarks/out/softmax.csv

Times are medians (and p20/p80) of forward+backward calls; 'time / fastsoftmax' is the other
implementation's median over fastsoftmax's in the same run. State the thread count you ran with:
it is printed in the header.
"""
import argparse
import os
import sys

# NB: set before glibc's first large allocation so freed temporaries go back to the system and
# the peak-memory measurement sees every allocation (see common.py).
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable] + sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import fastsoftmax  # noqa: E402
from common import format_table, machine_description, write_csv  # noqa: E402

SUITES = ("softmax", "mining")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="all", help=f"comma-separated of {SUITES} or 'all'")
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baselines (they take minutes to compile)")
    parser.add_argument("--csv", default=os.path.join("benchmarks", "out", "results.csv"))
    parser.add_argument("--markdown", default=None,
                        help="also write the table and target verdicts to this Markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = SUITES if args.suite == "all" else tuple(args.suite.split(","))
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {sorted(unknown)}; choose from {SUITES}")

    print(f"# fastsoftmax benchmarks\n{machine_description()}; build {fastsoftmax.build_info()}")
    rows, verdicts = [], []
    if "softmax" in suites:
        import softmax_cases
        r, v = softmax_cases.run(args.quick, args.repeats, compile_baseline=not args.no_compile)
        rows += r
        verdicts += v
    if "mining" in suites:
        import mining_cases
        r, v = mining_cases.run(args.quick, args.repeats)
        rows += r
        verdicts += v
    report = f"{machine_description()}\n\n{format_table(rows)}\n"
    if verdicts:
        report += "\nTargets:\n" + "\n".join(verdicts) + "\n"
    print()
    print(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report)
    write_csv(rows, args.csv)
    print(f"\nCSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
