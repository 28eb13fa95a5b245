"""The nightly batch: score every customer as of a date with the model loaded in-process, decide, write Parquet.

Inputs are validated before the model is loaded (bad input fails fast, nothing is written); the outputs are written
to temporaries, renamed into place only after the nudges are recorded in the contact log, so a failed run leaves
neither (should a rename fail after that, the contacts stay: those customers are held, not nudged twice, until the
re-run replaces them); the same inputs give the same file (decisions use contacts before as-of only, and a re-run
replaces its own contacts in the log); each run is logged to MLflow (experiment `kairos-batch`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from serving.contact_log import ContactLog

__all__ = ["BatchOptions", "check_outputs", "contact_log_errors", "decision_summary", "log_run", "output_path",
           "record_contacts", "run_batch"]


@dataclass
class BatchOptions:
    """Options of one batch run (the command line of `python -m serving batch`)."""

    transactions: str
    as_of: str
    out: str
    events: str | None = None
    customers: str | None = None
    model_uri: str = "models:/kairos@champion"
    budget: float | None = None
    partition_by_date: bool = False
    policy: str | None = None
    aha_rules: str | None = None
    reasons: str = "nudged"
    record: bool = True
    features_out: str | None = None
    log_mlflow: bool = True


def _say(msg: str) -> None:
    print(f"[batch] {msg}", file=sys.stderr, flush=True)


def output_path(out: str | Path, as_of: pd.Timestamp, partition_by_date: bool) -> Path:
    """`out`, or `out/as_of=YYYY-MM-DD/scores.parquet` with date partitions."""
    return Path(out) / f"as_of={as_of:%Y-%m-%d}" / "scores.parquet" if partition_by_date else Path(out)


def run_batch(opt: BatchOptions) -> dict:
    """Run the batch; returns a summary (path, counts, model version, fingerprint, seconds)."""
    from features.errors import InputError
    from features.io import staged_parquet
    from features.pipeline import build_features
    from features.schema import load, parse_as_of
    from serving.contact_log import ContactLog, split_own_run
    from serving.policy import load_policy, resolve_timing
    from serving.scoring import load_model, score_features
    from training.train import Inputs, fingerprint

    t0 = time.perf_counter()
    as_of = parse_as_of(opt.as_of)
    out = output_path(opt.out, as_of, opt.partition_by_date)
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory (use --partition-by-date to write into a directory)")
    check_outputs(out, opt.features_out, [out, *filter(None, [opt.features_out])], input_files(opt))
    config = load_policy(opt.policy, opt.aha_rules)
    if opt.budget is not None:
        if not opt.budget >= 0:  # also NaN
            raise InputError(f"--budget {opt.budget}: must be a number, not negative")
        config = replace(config, budget=opt.budget)
    with contact_log_errors("open it"):  # a bad KAIROS_CONTACT_DB fails here, before any work
        log = ContactLog()
    _say(f"loading inputs as of {as_of}")
    inputs = Inputs(load("transactions", opt.transactions), load("events", opt.events), load("customers", opt.customers))
    _say(f"building features for {inputs.transactions['customer_id'].nunique():,} customers "
         f"from {len(inputs.transactions):,} lines")
    feats = build_features(inputs.transactions, as_of, inputs.events, inputs.customers, config.feature_params)
    if feats.empty:
        raise InputError(f"{opt.transactions}: no customer is known by --as-of {opt.as_of}")
    _say(f"loading model {opt.model_uri}")
    model, version = load_model(opt.model_uri)
    config = resolve_timing(config, feats)
    since = as_of - pd.Timedelta(days=max(config.cooldown_days, config.cap_window_days) + 1)
    # the contact time of this run's nudges, and the decision time (so that a nudge exactly `cooldown_days` before
    # is within the cooldown, as the stored, microsecond contact times compare); a re-run ignores (and replaces) them
    sent_at = as_of.floor("us")
    with contact_log_errors("read the past contacts"):
        history, _ = split_own_run(log.history(feats["customer_id"].tolist(), since), sent_at)
    _say(f"scoring {len(feats):,} customers with model version {version} "
         f"({len(history):,} past contacts; new customers eligible from day {config.delay_days:g})")
    t1 = time.perf_counter()
    scores = score_features(model, feats, config, history, now=sent_at, model_version=version,
                            with_reasons={"all": True, "nudged": "nudged", "none": False}[opt.reasons])
    score_s = time.perf_counter() - t1
    counts = scores.groupby(["action", "channel"], dropna=False).size()
    summary = {"out": str(out), "customers": len(scores),
               **decision_summary(scores.loc[scores["action"] == "nudge", "channel"],
                                  [(a, c, n) for (a, c), n in counts.items()], config.channels),
               "model_version": version, "score_seconds": round(score_s, 3),
               "timing": {"delay_days": config.delay_days, **config.timing}, **fingerprint(inputs, as_of)}
    with ExitStack() as staged:  # the outputs are put in place after the nudges are recorded
        staged.enter_context(staged_parquet(scores, out))
        if opt.features_out:
            staged.enter_context(staged_parquet(feats, opt.features_out))
        summary["recorded_contacts"] = record_contacts(log, scores, sent_at, config.channels) if opt.record else 0
    log.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if opt.log_mlflow:
        log_run(summary, opt)
    _say(f"wrote {len(scores):,} rows to {out}: {summary['nudges']:,} nudges costing {summary['cost']:.2f} "
         f"in {summary['seconds']:.1f} s")
    return summary


def input_files(opt: BatchOptions) -> dict[str, str | None]:
    """The input files of a batch run by option."""
    return {"--transactions": opt.transactions, "--events": opt.events, "--customers": opt.customers,
            "--policy": opt.policy, "--aha-rules": opt.aha_rules}


def check_outputs(out: str | Path, features_out: str | None, files: list[str | Path],
                  inputs: dict[str, str | None]) -> None:
    """InputError before any work: `--features-out` is `--out` or lies inside it (or it inside the features), an
    output is one of the `inputs` (option -> file), or one of the output `files` cannot be written there (a
    directory, a parent that is a file)."""
    from features.errors import InputError
    from features.io import check_not_an_input, check_output_path, check_parquet_name

    if features_out:
        a, b = Path(features_out).resolve(), Path(out).resolve()
        if a == b or a.is_relative_to(b) or b.is_relative_to(a):
            raise InputError(f"--features-out {features_out}: the same path as --out {out} or one inside the other; "
                             f"the features need a path of their own")
    for option, path in (("--out", out), ("--features-out", features_out)):
        if path is not None:
            check_parquet_name(option, path)
            check_not_an_input(option, path, inputs)
    for path in files:
        check_output_path(path)


@contextmanager
def contact_log_errors(doing: str, outcome: str = "no output was written") -> Iterator[None]:
    """A failure of the contact database while `doing` (locked, read-only, corrupt, unreachable) as an InputError
    naming it and the `outcome` (by default the batch's: its outputs are not yet in place)."""
    import sqlalchemy as sa

    from features.errors import InputError
    from serving.contact_log import default_url

    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        db = sa.engine.make_url(default_url()).render_as_string(hide_password=True)
        why = " ".join(str(getattr(exc, "orig", None) or exc).split())[:160]
        raise InputError(f"contact database {db}: cannot {doing} ({type(exc).__name__}: {why}); {outcome}") from None


def record_contacts(log: ContactLog, decisions: pd.DataFrame, sent_at: pd.Timestamp, costs: dict[str, float]) -> int:
    """Record a run's nudges as sent by the batch at `sent_at`, replacing its own earlier attempt's; returns how many.
    Called before the outputs are put in place: a failure is an InputError and leaves no output."""
    with contact_log_errors("record this run's nudges"):
        return log.record(decisions, sent_at, "batch", costs, replace_same_run=True)


def decision_summary(nudge_channels: pd.Series, counts: list[tuple[str, str | None, int]],
                     costs: dict[str, float]) -> dict:
    """Nudges, their total cost and the count of each decision (`action.channel`) of one run.

    Args:
        nudge_channels: the channel of each nudge.
        counts: (action, channel or None, number of customers) of each decision.
        costs: the cost of each channel.
    """
    return {"nudges": len(nudge_channels), "cost": float(nudge_channels.map(costs).astype(float).sum()),
            "decisions": {f"{a}.{c if isinstance(c, str) else 'none'}": int(n) for a, c, n in sorted(
                counts, key=lambda x: (x[0], str(x[1])))}}


def log_run(summary: dict, opt: BatchOptions) -> None:
    """Record the run in MLflow (experiment kairos-batch); a failure is a warning: the output is already written."""
    try:
        _log_run(summary, opt)
    except Exception as exc:  # noqa: BLE001 - any store error; the scores file is complete and stays
        _say(f"warning: the run was not logged to MLflow ({type(exc).__name__}: {exc})")


def _log_run(summary: dict, opt: BatchOptions) -> None:
    """Record the run in MLflow (experiment kairos-batch): model version, data fingerprint, counts, durations."""
    import mlflow

    from training.registry import configure

    configure()
    mlflow.set_experiment("kairos-batch")
    with mlflow.start_run(run_name=f"batch {summary['as_of'][:10]}"):
        mlflow.set_tags({"kairos.kind": "batch", "model_version": summary["model_version"],
                         "model_uri": opt.model_uri, "data_hash": summary["data_hash"], "out": summary["out"]})
        mlflow.log_params({"as_of": summary["as_of"], "budget": opt.budget, "reasons": opt.reasons,
                           "partition_by_date": opt.partition_by_date, "new_customer_delay_days":
                           summary["timing"]["delay_days"], "data_rows": summary["data_rows"]})
        mlflow.log_metrics({"customers": summary["customers"], "nudges": summary["nudges"], "cost": summary["cost"],
                            "seconds": summary["seconds"], "score_seconds": summary["score_seconds"],
                            "recorded_contacts": summary["recorded_contacts"],
                            **{f"decisions.{k}": v for k, v in summary["decisions"].items()},
                            **{f"second_purchase_share_by_day_{d}": s for d, s in
                               summary["timing"].get("share_by_day", {}).items()}})
        mlflow.log_dict(summary, "batch_summary.json")
