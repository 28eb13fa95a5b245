"""Benchmark of the Aha-moment discovery: 1,000,000 simulated customers and 20,000,000 events.

Usage: python bench/bench_aha.py [--customers 1000000] [--events 20000000] [--cache DIR]

Step 1 (not timed) simulates the world and tops the events up to `--events` with synthetic noise events (random
customers, times and types, vectorised), cached as Parquet in `--cache`. Step 2 runs in a fresh subprocess, so that
its peak memory (max RSS) is the discovery's own: it loads the Parquet files, validates them, then times
`discover`, `analyse` and `write_outputs` separately and prints one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_data(n_customers: int, n_events: int, cache: Path) -> tuple[Path, Path]:
    """Simulate (or reuse) the world and pad its events with synthetic ones up to `n_events` rows."""
    tx_path, ev_path = cache / f"tx_{n_customers}.parquet", cache / f"ev_{n_customers}_{n_events}.parquet"
    if tx_path.exists() and ev_path.exists():
        return tx_path, ev_path
    from features.simulate import simulate_world

    t0 = time.perf_counter()
    world = simulate_world(n_customers=n_customers, seed=0)
    print(f"simulated {n_customers:,} customers in {time.perf_counter() - t0:.0f} s: {len(world.transactions):,} "
          f"lines, {len(world.events):,} events", file=sys.stderr)
    ev = world.events
    extra = n_events - len(ev)
    if extra > 0:
        rng = np.random.default_rng(1)
        ids = world.customers["customer_id"].to_numpy(dtype=object)
        start, end = ev["timestamp"].min().value, ev["timestamp"].max().value
        kinds = ev["event"].value_counts(normalize=True)
        pad = pd.DataFrame({
            "customer_id": pd.array(ids[rng.integers(0, len(ids), extra)], dtype="str"),
            "timestamp": pd.to_datetime(rng.integers(start, end, extra)).astype("datetime64[ns]"),
            "event": pd.array(rng.choice(kinds.index.to_numpy(dtype=object), extra, p=kinds.to_numpy()), dtype="str"),
            "value": np.ones(extra),
        })
        ev = pd.concat([ev, pad], ignore_index=True)
    else:
        ev = ev.iloc[:n_events]
    cache.mkdir(parents=True, exist_ok=True)
    world.transactions.to_parquet(tx_path, index=False)
    ev.to_parquet(ev_path, index=False)
    return tx_path, ev_path


def run(tx_path: Path, ev_path: Path, as_of: str) -> dict[str, float]:
    """Load, validate and time the discovery stages in this process."""
    from features.aha import discover
    from features.aha_report import analyse, write_outputs
    from features.schema import parse_as_of, validate

    out: dict[str, float] = {}
    t = time.perf_counter()
    tx, ev = pd.read_parquet(tx_path), pd.read_parquet(ev_path)
    out["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tx, ev = validate(tx, "transactions"), validate(ev, "events")
    out["validate_s"] = time.perf_counter() - t
    out["lines"], out["events"], out["customers"] = len(tx), len(ev), int(tx["customer_id"].nunique())
    t = time.perf_counter()
    result = discover(tx, ev, parse_as_of(as_of))
    out["discover_s"] = time.perf_counter() - t
    t = time.perf_counter()
    found = analyse(result)
    out["analyse_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(result, found, Path(tmp) / "aha")
    out["report_s"] = time.perf_counter() - t
    out["aha_total_s"] = out["discover_s"] + out["analyse_s"] + out["report_s"]
    out["cohort"] = result.cohort.n
    top = found["rules"].iloc[0]
    out["top_rule"] = f"{top['action']} >= {int(top['min_count'])} within {int(top['within_days'])} d"
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--as-of", default="2025-12-31")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kairos_bench_aha"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run(Path(args.child[0]), Path(args.child[1]), args.as_of)))
        return
    tx_path, ev_path = make_data(args.customers, args.events, Path(args.cache))
    child = subprocess.run([sys.executable, __file__, "--as-of", args.as_of, "--child", str(tx_path), str(ev_path)],
                           check=True, capture_output=True, text=True)
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    for key, value in figures.items():
        print(f"{key:>12}: {value:,.2f}" if isinstance(value, float) else f"{key:>12}: {value}")
    print(f"target: discovery + report within 120 s -> {'met' if figures['aha_total_s'] <= 120 else 'MISSED'}")


if __name__ == "__main__":
    main()
