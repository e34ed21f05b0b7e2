"""The lifecycle scenario (SPEC 10): `preview` and `check` of the 5,000-
component bench selection when nothing would run, beside a no-op rollout.

    python bench/lifecycle.py [--n 5000] [--files 5] [--runs 5]

One workspace from generate.py (commands and their source trees, no
terraform components), rolled out cold at -j2, rolled out once more (that
rollout writes the up-to-date record), then per round, in rotating order: a
no-op `rollout`, a `preview` and a `check`. Each number is the median over
the rounds; the ratio to the no-op is what the target (<= 1.10x) is about.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import generate  # noqa: E402
import measure  # noqa: E402

OPS = {"noop rollout": ("rollout",), "preview": ("preview",), "check": ("check",)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--files", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    cli, why = measure.find_atmosbuild()
    if cli is None:
        print(f"atmosbuild not runnable: {why}")
        return 1
    with tempfile.TemporaryDirectory(prefix="atmos-bench-lifecycle-") as ws:
        generate.generate(ws, args.n, args.files, 1)
        log = os.path.join(ws, "bench.log")
        for _ in range(2):
            m = measure.run_timed([*cli, "-C", ws, "rollout", f"//{generate.YAML_PACKAGE}:dev", "-j2"], ws, log, 3600)
            if not m.ok:
                print(measure.log_tail(log))
                return 1
        times = {op: [] for op in OPS}
        names = list(OPS)
        for r in range(args.runs):
            for op in names[r % len(names):] + names[:r % len(names)]:
                m = measure.run_timed([*cli, "-C", ws, *OPS[op], f"//{generate.YAML_PACKAGE}:dev", "-j2"], ws, log, 600)
                if not m.ok:
                    print(f"{op} failed:\n{measure.log_tail(log)}")
                    return 1
                times[op].append(m.seconds)
        base = statistics.median(times["noop rollout"])
        print(f"{args.n} components, {args.files} files each, median of {args.runs}:")
        for op, ts in times.items():
            med = statistics.median(ts)
            print(f"  {op:<13} {med:.3f} s  ({med / base:.2f}x the no-op; rounds "
                  f"{min(ts):.3f}-{max(ts):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
