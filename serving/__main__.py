"""Command line of the serving stage: `python -m serving batch|serve|top ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from features.errors import InputError, run_cli

__all__ = ["main"]

DEFAULT_MODEL = "models:/kairos@champion"


def _parser() -> argparse.ArgumentParser:
    from features.schema import add_input_arguments

    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="score every customer as of a date and decide the next best action")
    add_input_arguments(b)
    b.add_argument("--out", required=True, help="scores.parquet (a directory with --partition-by-date)")
    b.add_argument("--model-uri", default=DEFAULT_MODEL)
    b.add_argument("--budget", type=float, help="total contact cost of this run (highest priority first)")
    b.add_argument("--partition-by-date", action="store_true", help="write OUT/as_of=YYYY-MM-DD/scores.parquet")
    b.add_argument("--policy", help="policy YAML (default: serving/policy.yaml)")
    b.add_argument("--aha-rules", help="aha_rules.csv of `features aha`: new customers' message is the top Aha action "
                   "not reached yet (default: the policy's aha.rules)")
    b.add_argument("--reasons", choices=["all", "nudged", "none"], default="nudged",
                   help="whose top drivers to compute (a few ms per customer); the policy's reason is always given")
    b.add_argument("--no-record", dest="record", action="store_false",
                   help="do not record the nudges in the contact log")
    b.add_argument("--features-out", help="also write the features (the snapshot for `serve --features`)")
    b.add_argument("--engine", choices=["pandas", "spark"], default="pandas",
                   help="pandas (one process) or spark (features and scores per customer partition, same output)")
    b.add_argument("--spark-master", default="local[*]", help="Spark master URL (--engine spark)")
    b.add_argument("--partitions", type=int, help="customer hash partitions (--engine spark; default 4 x cores)")
    s = sub.add_parser("serve", help="start the BentoML HTTP service in the foreground")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model-uri", default=DEFAULT_MODEL)
    s.add_argument("--features", help="feature snapshot answering requests by customer_id (features build output)")
    s.add_argument("--policy", help="policy YAML (default: serving/policy.yaml)")
    s.add_argument("--aha-rules", help="aha_rules.csv of `features aha` (default: the policy's aha.rules)")
    t = sub.add_parser("top", help="print the customers to nudge first from a scores file")
    t.add_argument("--scores", required=True)
    t.add_argument("--n", type=int, default=10)
    return p


def _batch(args: argparse.Namespace) -> int:
    from serving.batch import BatchOptions, run_batch

    opts = {k: v for k, v in vars(args).items() if k not in ("command", "engine", "spark_master", "partitions")}
    if args.engine == "spark":
        from serving.spark_batch import run_batch_spark

        if args.partitions is not None and args.partitions < 1:
            raise InputError(f"--partitions {args.partitions}: must be at least 1")
        summary = run_batch_spark(BatchOptions(**opts), args.spark_master, args.partitions)
    else:
        summary = run_batch(BatchOptions(**opts))
    print(json.dumps(summary, default=str))
    return 0


def _check_port_free(host: str, port: int) -> None:
    """InputError if `host:port` cannot be bound (in use, or not an address of this machine): BentoML would fail
    with a traceback after the model has loaded."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def _check_contact_log() -> None:
    """InputError if the contact log (KAIROS_CONTACT_DB) cannot be opened (a driver not installed, a database
    unreachable): the service's workers would fail at start with a traceback, again and again, answering nothing."""
    from serving.batch import contact_log_errors
    from serving.contact_log import ContactLog

    with contact_log_errors("open it", "the service was not started"):
        ContactLog().close()


def _absolute_store(url: str) -> str:
    """A SQLite URL (any driver) with a relative path made absolute from here: the service's workers run in the
    checkout, and the batch and the service must share one contact log (and one model store). Other URLs are
    returned as they are."""
    from urllib.parse import urlsplit

    if urlsplit(url).scheme.split("+")[0] == "sqlite":
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:") and not Path(db).is_absolute():
            return parsed.set(database=str(Path(db).resolve())).render_as_string(hide_password=False)
    return url


def _serve(args: argparse.Namespace) -> int:
    from serving.contact_log import default_url
    from serving.policy import load_policy
    from serving.scoring import resolve_model_uri
    from training.registry import configure, tracking_uri

    config = load_policy(args.policy, args.aha_rules)
    if args.features:
        from serving.snapshot import check_snapshot

        check_snapshot(args.features, config)
    _check_port_free(args.host, args.port)
    _check_contact_log()
    configure()
    uri, version = resolve_model_uri(args.model_uri)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "KAIROS_MODEL_URI": uri, "BENTOML_DO_NOT_TRACK": "true",
           "MLFLOW_TRACKING_URI": _absolute_store(tracking_uri()), "KAIROS_CONTACT_DB": _absolute_store(default_url()),
           "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("BENTOML_HOME", str(Path.cwd() / ".venv" / "bentoml"))
    for key, value in (("KAIROS_FEATURES", args.features), ("KAIROS_POLICY", args.policy),
                       ("KAIROS_AHA_RULES", args.aha_rules)):
        if value:
            env[key] = str(Path(value).resolve())
    print(f"serving model version {version} ({uri}) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Kairos", "--host", args.host,
           "--port", str(args.port), "--working-dir", str(root)]
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _latest_partition(path: Path) -> Path:
    """`path`, or for the directory of a `batch --partition-by-date` the newest `as_of=YYYY-MM-DD/scores.parquet`."""
    if not path.is_dir():
        return path
    parts = sorted(path.glob("as_of=*/scores.parquet"))
    if not parts:
        raise InputError(f"--scores {path}: a directory without as_of=YYYY-MM-DD/scores.parquet partitions")
    return parts[-1]


def _top(args: argparse.Namespace) -> int:
    import pandas as pd

    from features.io import read_table

    if args.n < 1:
        raise InputError(f"--n {args.n}: must be at least 1")
    scores = read_table(_latest_partition(Path(args.scores)))
    cols = ["customer_id", "lifecycle_stage", "p_purchase", "expected_value", "channel", "message", "priority"]
    missing = [c for c in ["as_of", "action", *cols] if c not in scores.columns]
    if missing:
        raise InputError(f"--scores {args.scores}: missing column(s) {', '.join(missing)} "
                         f"(expected the output of python -m serving batch)")
    for c in ("p_purchase", "expected_value", "priority"):  # a CSV's columns are text: "9.95" > "236.1"
        numbers = pd.to_numeric(scores[c], errors="coerce")
        if (numbers.isna() & scores[c].notna()).any():
            raise InputError(f"--scores {args.scores}: column {c} is not numeric")
        scores[c] = numbers
    nudge = scores.loc[scores["action"] == "nudge"].sort_values("priority", ascending=False)
    print(f"{len(nudge):,} of {len(scores):,} customers to nudge as of {scores['as_of'].iloc[0]}; "
          f"decisions: {scores['action'].value_counts().to_dict()}")
    if "triggers" in scores.columns:
        moments = scores["triggers"].dropna().str.split(",").explode().value_counts()
        print(f"moments that matter today: {moments.to_dict() or 'none'}")
    if nudge.empty:
        return 0
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(nudge[cols].head(args.n).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one command."""
    args = _parser().parse_args(argv)
    if getattr(args, "port", 1) is not None and not 0 < getattr(args, "port", 1) < 65536:
        raise InputError(f"--port {args.port}: not a TCP port")
    return {"batch": _batch, "serve": _serve, "top": _top}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
