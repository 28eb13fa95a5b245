"""Command line of the features stage: `python -m features build|aha|simulate|adapt|summary ...`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from features.errors import InputError, run_cli

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from features.schema import add_input_arguments

    p = argparse.ArgumentParser(prog="python -m features", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="point-in-time features as of a date, to Parquet")
    add_input_arguments(b)
    b.add_argument("--out", required=True)
    b.add_argument("--engine", choices=["pandas", "spark"], default="pandas",
                   help="pandas (one process) or spark (the same feature function per customer partition)")
    b.add_argument("--spark-master", default="local[*]", help="Spark master URL (--engine spark)")
    b.add_argument("--partitions", type=int, help="customer hash partitions (--engine spark; default 4 x cores)")
    b.add_argument("--aha-rules", help="aha_rules.csv of `features aha`: add each top rule's count column "
                   "(aha_<action>_first_<d>d) for the policy's Aha message")
    h = sub.add_parser("aha", help="Aha-moment / KPA discovery: rules, grid, earn table and an HTML report")
    h.add_argument("--transactions", required=True)
    h.add_argument("--events", help="events file (required: the behaviours to test)")
    h.add_argument("--as-of", required=True)
    h.add_argument("--within-days", type=int, help="only windows of at most this many days after the first purchase")
    h.add_argument("--horizon-days", type=int, default=90, help="outcome window after the action window")
    h.add_argument("--min-coverage", type=float, default=0.02, help="minimum share reaching (and missing) a rule")
    h.add_argument("--out", required=True, help="directory for aha_rules.csv, aha_grid.csv, earn_table.csv, "
                   "aha_report.html")
    s = sub.add_parser("simulate", help="write the demo world (known ground truth) to a directory")
    s.add_argument("--customers", type=int, default=50_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    s.add_argument("--out", required=True)
    m = sub.add_parser("summary", help="print a short summary of a features Parquet file (the output of "
                       "`features build` or of `serving batch --features-out`; not a scores file)")
    m.add_argument("--features", required=True)
    a = sub.add_parser("adapt", help="map a public data set onto the canonical schema")
    a.add_argument("--source", required=True, choices=["online_retail", "hillstrom", "complete_journey"])
    a.add_argument("--input", required=True)
    a.add_argument("--out", required=True, help="directory for transactions/events/nudges/customers .parquet")
    return p


def _build(args: argparse.Namespace) -> int:
    from features.io import check_not_an_input, check_output_path, check_parquet_name, write_parquet
    from features.pipeline import FeatureParams, build_features
    from features.schema import load, parse_as_of

    as_of = parse_as_of(args.as_of)
    check_parquet_name("--out", args.out)
    check_not_an_input("--out", args.out, {"--transactions": args.transactions, "--events": args.events,
                                           "--customers": args.customers, "--aha-rules": args.aha_rules})
    t0 = time.perf_counter()
    params = FeatureParams()
    if args.aha_rules:
        from features.aha_rules import feature_params, load_aha_rules

        params = feature_params(load_aha_rules(args.aha_rules))
    if args.engine == "spark":
        from features.spark_engine import run_build

        if args.partitions is not None and args.partitions < 1:
            raise InputError(f"--partitions {args.partitions}: must be at least 1")
        print(f"building features as of {as_of} on Spark ({args.spark_master})", file=sys.stderr)
        done = run_build(args.transactions, as_of, args.out, args.events, args.customers, args.spark_master,
                         args.partitions, params)
        print(f"wrote {done['customers']:,} customers x {done['features']} features to {done['out']} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 0
    check_output_path(args.out)
    print(f"loading inputs as of {as_of}", file=sys.stderr)
    tx = load("transactions", args.transactions)
    ev = load("events", args.events)
    cu = load("customers", args.customers)
    print(f"building features for {tx['customer_id'].nunique():,} customers from {len(tx):,} lines", file=sys.stderr)
    feats = build_features(tx, as_of, ev, cu, params)
    if feats.empty:
        raise InputError(f"{args.transactions}: no customer is known by --as-of {args.as_of}")
    write_parquet(feats, args.out)
    print(f"wrote {len(feats):,} customers x {feats.shape[1] - 2} features to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _aha(args: argparse.Namespace) -> int:
    from features.aha_report import run_aha
    from features.io import check_output_dir
    from features.schema import check_days, load, parse_as_of

    if not args.events:
        raise InputError("aha: --events is required (the behaviours whose thresholds are tested)")
    as_of = parse_as_of(args.as_of)
    for option, days in (("--within-days", args.within_days), ("--horizon-days", args.horizon_days)):
        if days is not None:
            check_days(option, days)
    check_output_dir(args.out)
    t0 = time.perf_counter()
    print(f"loading inputs as of {as_of}", file=sys.stderr)
    tx = load("transactions", args.transactions)
    ev = load("events", args.events)
    print(f"searching thresholds over {len(ev):,} events and {len(tx):,} transaction lines", file=sys.stderr)
    found = run_aha(tx, ev, as_of, args.out, args.within_days, args.horizon_days, args.min_coverage)
    rules = found["rules"]
    print(f"wrote {len(rules)} rules and the report to {args.out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for _, r in rules.head(5).iterrows():
        print(f"{r['action']}: at least {int(r['min_count'])} within {int(r['within_days'])} days -> "
              f"{r['rate_if']:.1%} come back vs {r['rate_else']:.1%} (coverage {r['coverage']:.1%}, "
              f"phi {r['phi']:.3f}, {r['verdict']})")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from features.simulate import simulate_world, summary, write_world

    if args.customers < 1:
        raise InputError(f"--customers {args.customers}: must be at least 1")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be at least 0")
    print(f"simulating {args.customers:,} customers (seed {args.seed})", file=sys.stderr)
    world = simulate_world(n_customers=args.customers, seed=args.seed)
    counts = summary(world)  # before writing: a failure leaves no files
    paths = write_world(world, Path(args.out), fmt=args.format)
    for key, value in counts.items():
        print(f"  {key}: {value}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from features.adapters import adapt
    from features.io import check_output_dir, write_parquet

    check_output_dir(args.out)
    try:
        tables = adapt(args.source, Path(args.input))
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    for name, df in tables.items():
        write_parquet(df, Path(args.out) / f"{name}.parquet")
        print(f"wrote {len(df):,} rows to {Path(args.out) / f'{name}.parquet'}", file=sys.stderr)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from features.io import read_table

    df = read_table(args.features)
    absent = [c for c in ("as_of", "n_orders", "days_first_to_second", "lifecycle_stage") if c not in df.columns]
    if absent:
        raise InputError(f"{args.features}: not a features file (no column {', '.join(absent)}); "
                         "make one with `python -m features build`")
    buyers = df.loc[df["n_orders"] > 0]
    print(f"{len(df):,} customers as of {df['as_of'].iloc[0]}; {len(buyers):,} have bought")
    print(f"orders per buyer: median {buyers['n_orders'].median():.0f}, mean {buyers['n_orders'].mean():.2f}; "
          f"one-order customers: {(buyers['n_orders'] == 1).mean():.1%}")
    second = buyers["days_first_to_second"].dropna()
    if len(second):
        shares = ", ".join(f"{(second <= d).mean():.0%} by day {d}" for d in (10, 30, 90))
        print(f"second purchases: {shares}")
    print("lifecycle stages: " + ", ".join(f"{k} {v:,}" for k, v in df["lifecycle_stage"].value_counts().items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one command."""
    args = _parser().parse_args(argv)
    return {"build": _build, "aha": _aha, "simulate": _simulate, "adapt": _adapt, "summary": _summary}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
