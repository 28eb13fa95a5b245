"""`serving batch --engine spark`: the nightly batch on Spark, same output as the pandas engine.

1. Features: `features.spark_engine` (the very same `build_features` per customer group), persisted.
2. The one population statistic of the policy (the "auto" new-customer delay: a quantile of days from first to
   second purchase) is computed exactly on the driver from that one column; the contact history since the cap
   window is read once on the driver and shipped to the tasks (small: one row per contact of the last weeks).
3. Scoring: `mapInPandas` over the features. The driver loads the registered model once
   (`training.pyfunc.load_kairos_model` via `serving.scoring.load_model`) and broadcasts it: each Python worker
   deserializes it once, and executors need no access to the MLflow store (a sqlite store on the driver, or
   credentials of a tracking server). Each batch of customers goes through `serving.scoring.score_features`:
   the same model, the same policy, the same reasons.
4. Output as the pandas engine (one file, or a directory for `--out dir/` or a URI), written to a temporary and
   put in place only once the nudges are recorded in the contact log from the driver (as the pandas engine).
`--budget` is not supported on Spark yet (it is one greedy pass over all customers by priority).
"""
from __future__ import annotations

import sys
import time
from contextlib import ExitStack

import pandas as pd

__all__ = ["run_batch_spark"]


def _say(msg: str) -> None:
    print(f"[batch/spark] {msg}", file=sys.stderr, flush=True)


def score_udf(model_bc, version: str, config, history: pd.DataFrame, now: pd.Timestamp, with_reasons):
    """The function applied to each batch of feature rows: model scores, then the policy decided at `now` (the
    batch's contact time)."""
    from features.spark_engine import from_spark, to_spark
    from serving.scoring import score_features

    def fn(batches):
        model = model_bc.value  # deserialized once per Python worker
        for pdf in batches:
            if pdf.empty:
                continue
            feats = from_spark(pdf, sort_by=None)
            hist = history.loc[history["customer_id"].isin(feats["customer_id"])] if len(history) else history
            out = score_features(model, feats, config, hist, now=now, model_version=version,
                                 with_reasons=with_reasons)
            yield to_spark(out)

    return fn


def _scores_schema():
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    types = {"as_of": LongType(), "n_orders": LongType(), "p_purchase": DoubleType(), "p_second_purchase": DoubleType(),
             "expected_value": DoubleType(), "priority": DoubleType()}
    from serving.scoring import SCORE_COLUMNS

    return StructType([StructField(c, types.get(c, StringType())) for c in SCORE_COLUMNS])


def run_batch_spark(opt, master: str = "local[*]", partitions: int | None = None) -> dict:
    """Run the batch on Spark; returns the summary of `serving.batch.run_batch`."""
    from pyspark import StorageLevel

    from features.errors import InputError
    from features.schema import parse_as_of
    from features.spark_engine import (
        build_features_spark,
        check_dir_output,
        is_file_output,
        read_inputs,
        spark_input_errors,
        spark_session,
        staged_output,
    )
    from serving.batch import (
        check_outputs,
        contact_log_errors,
        decision_summary,
        input_files,
        log_run,
        output_path,
        record_contacts,
    )
    from serving.contact_log import ContactLog, split_own_run
    from serving.policy import load_policy, resolve_timing

    t0 = time.perf_counter()
    as_of = parse_as_of(opt.as_of)
    if not opt.partition_by_date:  # as given: pathlib would drop the trailing '/' of `dir/`, fold a URI's '//'
        out = opt.out
    elif "://" in opt.out:
        out = f"{opt.out.rstrip('/')}/as_of={as_of:%Y-%m-%d}/scores.parquet"
    else:
        out = str(output_path(opt.out, as_of, True))
    check_outputs(out, opt.features_out, [p for p in (out, opt.features_out) if p and is_file_output(p)],
                  input_files(opt))
    for path in filter(None, (out, opt.features_out)):
        check_dir_output(path)
    config = load_policy(opt.policy, opt.aha_rules)
    if opt.budget is not None or config.budget is not None:
        raise InputError("--budget is not supported with --engine spark (one greedy pass over all customers); "
                         "run the budgeted batch with --engine pandas")
    with contact_log_errors("open it"):  # a bad KAIROS_CONTACT_DB fails here, before any work
        log = ContactLog()
    spark = spark_session(master)
    _say(f"reading inputs as of {as_of} on {spark.sparkContext.master}")
    inputs = read_inputs(spark, opt.transactions, opt.events, opt.customers)
    feats = build_features_spark(spark, inputs, as_of, partitions, config.feature_params)
    feats = feats.persist(StorageLevel.MEMORY_AND_DISK)
    with ExitStack() as staged:  # outputs put in place after the nudges are recorded, then the features unpersisted
        staged.callback(feats.unpersist)
        with spark_input_errors():
            n = feats.count()
            if n == 0:
                raise InputError(f"{opt.transactions}: no customer is known by --as-of {opt.as_of}")
            days = feats.select("days_first_to_second").where("days_first_to_second IS NOT NULL").toPandas()
        config = resolve_timing(config, days)
        _say(f"features of {n:,} customers built; loading model {opt.model_uri}")
        from serving.scoring import load_model

        # the one-line error if it cannot be loaded; not compiled: the workers unpickle the boosters (machine code
        # is not pickled) and score with LightGBM, bitwise the same scores
        model, version = load_model(opt.model_uri, compiled=False)
        model_bc = spark.sparkContext.broadcast(model)
        since = as_of - pd.Timedelta(days=max(config.cooldown_days, config.cap_window_days) + 1)
        sent_at = as_of.floor("us")
        with contact_log_errors("read the past contacts"):
            history, earlier = split_own_run(log.history(None, since), sent_at)
        history = history[["customer_id", "timestamp"]]
        _say(f"scoring {n:,} customers with model version {version} ({len(history):,} past contacts)")
        t1 = time.perf_counter()
        with_reasons = {"all": True, "nudged": "nudged", "none": False}[opt.reasons]
        scores = feats.mapInPandas(score_udf(model_bc, version, config, history, sent_at, with_reasons),
                                   schema=_scores_schema())
        scores = scores.persist(StorageLevel.MEMORY_AND_DISK)
        nudges = scores.where("action = 'nudge'").select("customer_id", "action", "channel", "message", "priority",
                                                         "model_version").toPandas()
        # the customers of this run whose earlier attempt's contacts a re-run replaces (the driver holds only the
        # nudges, not every customer: the earlier attempt's ids are matched against the run's customers)
        replaced = spark.createDataFrame(earlier[["customer_id"]].drop_duplicates()).join(
            feats.select("customer_id"), "customer_id").toPandas()["customer_id"] if len(earlier) else []
        counts = scores.groupBy("action", "channel").count().toPandas()
        data_rows = inputs.frames["transactions"].count()
        summary = {"out": out, "customers": int(n),
                   **decision_summary(nudges["channel"], list(counts.itertuples(index=False)), config.channels),
                   "model_version": version, "timing": {"delay_days": config.delay_days, **config.timing},
                   "engine": "spark", "data_hash": f"spark-{data_rows}", "data_rows": int(data_rows),
                   "as_of": str(as_of)}
        summary["out"] = staged.enter_context(staged_output(scores, out))
        summary["score_seconds"] = round(time.perf_counter() - t1, 3)
        if opt.features_out:
            staged.enter_context(staged_output(feats, opt.features_out))
        run = pd.concat([nudges, pd.DataFrame({"customer_id": replaced, "action": "hold"})], ignore_index=True)
        summary["recorded_contacts"] = record_contacts(log, run, sent_at, config.channels) if opt.record else 0
    log.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if opt.log_mlflow:
        log_run(summary, opt)
    _say(f"wrote {n:,} rows to {summary['out']}: {summary['nudges']:,} nudges in {summary['seconds']:.1f} s")
    return summary
