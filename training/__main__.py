"""Command line of the training stage: `python -m training train|evaluate|tune|promote|uplift ...`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from features.errors import InputError, run_cli

__all__ = ["main"]



def _data_options(p: argparse.ArgumentParser) -> None:
    from features.schema import add_input_arguments

    add_input_arguments(p)
    p.add_argument("--nudges")
    p.add_argument("--horizon-days", type=int, default=90)
    p.add_argument("--value-horizon-days", type=int, default=365)
    p.add_argument("--experiment", default="kairos")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="backtest, fit and register a new version of 'kairos'")
    _data_options(tr)
    tr.add_argument("--sample-customers", type=int,
                    help="train on this many customers, picked by a hash of customer_id (logged to MLflow)")
    e = sub.add_parser("evaluate", help="backtest Kairos against the baselines and write the report, no registration")
    _data_options(e)
    e.add_argument("--out", required=True, help="directory for backtest_report.html and plots")
    t = sub.add_parser("tune", help="Optuna search; the best parameters are used by the next train")
    _data_options(t)
    t.add_argument("--trials", type=int, default=30)
    t.add_argument("--timeout", type=float, default=None, help="seconds")
    pr = sub.add_parser("promote", help="move alias 'champion' to a version after the gate")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--version")
    which.add_argument("--run-id")
    pr.add_argument("--force", action="store_true", help="skip the gate")
    u = sub.add_parser("uplift", help="learn the uplift of nudges from random hold-outs; report and policy values")
    u.add_argument("--customers", required=True)
    u.add_argument("--nudges", required=True)
    u.add_argument("--transactions", required=True)
    u.add_argument("--events")
    u.add_argument("--response-days", type=int, required=True, help="outcome window after each nudge (days)")
    u.add_argument("--score-customers", help="customers file to score: writes DIR/uplift_scores.csv")
    u.add_argument("--out", required=True, help="directory for uplift_report.html (and uplift_scores.csv)")
    u.add_argument("--experiment", default="kairos")
    u.add_argument("--seed", type=int, default=0)
    return p


def _inputs(args: argparse.Namespace):
    from features.schema import check_days, load, parse_as_of
    from training.train import Inputs

    as_of = parse_as_of(args.as_of)
    for opt in ("horizon_days", "value_horizon_days"):
        check_days(f"--{opt.replace('_', '-')}", getattr(args, opt))
    print("loading inputs", file=sys.stderr)
    inputs = Inputs(load("transactions", args.transactions), load("events", args.events),
                    load("customers", args.customers), load("nudges", args.nudges))
    return inputs, as_of


def _train(args: argparse.Namespace) -> int:
    from training.train import sample_customers, train

    inputs, as_of = _inputs(args)
    inputs = sample_customers(inputs, args.sample_customers)
    if inputs.sample:
        print(f"training on {min(args.sample_customers, inputs.sample['sample_population']):,} of "
              f"{inputs.sample['sample_population']:,} customers (hash sample)", file=sys.stderr)
    result = train(inputs, as_of, args.horizon_days, args.value_horizon_days, args.experiment)
    print(json.dumps(result, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from features.io import check_output_dir
    from training.backtest import run_backtest
    from training.report import metrics_table, write_report

    check_output_dir(args.out)
    inputs, as_of = _inputs(args)
    bt = run_backtest(inputs.transactions, as_of, args.horizon_days, args.value_horizon_days, inputs.events,
                      inputs.customers)
    write_report(bt, Path(args.out))
    print(f"backtest as of {bt.cutoff} on {int(bt.metrics['n_customers']):,} customers")
    print(metrics_table(bt.metrics).to_string(float_format=lambda v: f"{v:.4f}"))
    print("new customers (second purchase):")
    print(metrics_table(bt.metrics, "new.").to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"report: {Path(args.out) / 'backtest_report.html'}", file=sys.stderr)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from training.tune import tune

    if args.trials < 1:
        raise InputError("--trials must be at least 1")
    inputs, as_of = _inputs(args)
    result = tune(inputs, as_of, args.horizon_days, args.value_horizon_days, args.experiment, args.trials, args.timeout)
    print(json.dumps(result, default=str))
    return 0


def _promote(args: argparse.Namespace) -> int:
    from training.promote import promote

    result = promote(args.version, args.run_id, args.force)
    print(json.dumps(result, default=str))
    return 0 if result["promoted"] else 1


def _uplift(args: argparse.Namespace) -> int:
    from features.io import check_output_dir
    from features.schema import check_days, load
    from training.uplift_run import run_uplift, summary_json

    check_days("--response-days", args.response_days)
    check_output_dir(args.out)
    print("loading inputs", file=sys.stderr)
    customers, nudges = load("customers", args.customers), load("nudges", args.nudges)
    transactions, events = load("transactions", args.transactions), load("events", args.events)
    score = load("customers", args.score_customers)
    result = run_uplift(customers, nudges, transactions, events, args.response_days, args.out, score,
                        args.experiment, args.seed)
    print(f"report: {result['report']}", file=sys.stderr)
    print(summary_json(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one command."""
    args = _parser().parse_args(argv)
    if getattr(args, "experiment", "x").strip() == "":
        raise InputError("--experiment: the MLflow experiment name is empty")
    if getattr(args, "seed", 0) < 0:
        raise InputError(f"--seed {args.seed}: must be at least 0")
    if getattr(args, "timeout", None) is not None and not args.timeout > 0:
        raise InputError(f"--timeout {args.timeout}: must be a positive number of seconds")
    return {"train": _train, "evaluate": _evaluate, "tune": _tune, "promote": _promote,
            "uplift": _uplift}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
