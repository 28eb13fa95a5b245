"""Benchmark: feature build time and peak memory for N simulated customers, against the DuckDB floor.

Run `python bench/bench_features.py --customers 100000 1000000`; each size is simulated once into
bench/data/ (ignored by git), then `features build` runs in a fresh process so peak RSS is its own. A second
fresh process loads the same inputs and times `build_features` alone (the builder: pandas in, pandas out).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a child process: a wrapper process runs it as its only child, so the peak
    is this command's own (RUSAGE_CHILDREN here would also hold the simulate and earlier runs)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK, *cmd], check=True, stdout=subprocess.PIPE, text=True).stdout
    return time.perf_counter() - t0, int(out.split()[-1]) / 1024**2


def floor_seconds(tx: Path) -> float:
    """DuckDB's single pass: group by customer, count and sum (best of three)."""
    import duckdb

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        duckdb.sql(f"SELECT customer_id, count(*), sum(amount) FROM '{tx}' GROUP BY 1").fetchall()
        best = min(best, time.perf_counter() - t0)
    return best


def builder_seconds(d: Path) -> float:
    """Seconds of `build_features` alone on the validated inputs of world `d` (in this process; best of three,
    as the floor)."""
    from features.memory import keep_freed_memory
    from features.pipeline import build_features
    from features.schema import load, parse_as_of

    keep_freed_memory()  # as the commands do (`features.errors.run_cli`)

    tx, ev, cu = (load(kind, d / f"{kind}.parquet") for kind in ("transactions", "events", "customers"))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        build_features(tx, parse_as_of("2025-12-31"), ev, cu)  # as the command's --as-of: the end of that day
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--builder-only", type=Path, help=argparse.SUPPRESS)  # the child that times build_features
    args = p.parse_args()
    if args.builder_only:
        print(builder_seconds(args.builder_only))
        return
    py = sys.executable
    print("| customers | lines | build s (command) | peak RSS GB | build_features s | DuckDB floor s | ratio (command) "
          "| ratio (build_features) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.customers:
        d = DATA / f"world_{n}"
        if not (d / "transactions.parquet").exists():
            subprocess.run([py, "-m", "features", "simulate", "--customers", str(n), "--out", str(d)], check=True)
        import pyarrow.parquet as pq

        lines = pq.ParquetFile(d / "transactions.parquet").metadata.num_rows
        wall, rss = _child([py, "-m", "features", "build", "--transactions", str(d / "transactions.parquet"),
                            "--events", str(d / "events.parquet"), "--customers", str(d / "customers.parquet"),
                            "--as-of", "2025-12-31", "--out", str(d / "features.parquet")])
        builder = float(subprocess.run([py, __file__, "--builder-only", str(d)], check=True, capture_output=True,
                                       text=True).stdout.split()[-1])
        floor = floor_seconds(d / "transactions.parquet")
        print(f"| {n:,} | {lines:,} | {wall:.1f} | {rss:.2f} | {builder:.1f} | {floor:.2f} | {wall / floor:.0f}x "
              f"| {builder / floor:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
