"""One training run: backtest against the baselines, report, final fit, registration as `kairos`."""
from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.errors import InputError
from features.labels import training_frame
from features.pipeline import build_features
from training.backtest import run_backtest
from training.models import DEFAULT_PARAMS, MIN_CUSTOMERS, KairosModel
from training.registry import MODEL_NAME, alias_version, configure, set_alias

__all__ = ["BACKTEST_MODEL", "Inputs", "best_tuned_params", "check_enough_customers", "fingerprint", "git_commit", "train"]

BEST_PARAMS_TAG = "kairos.best_params"
BACKTEST_MODEL = "backtest_model.pkl"  # the model trained as of the backtest cutoff


@dataclass
class Inputs:
    """The validated input tables of a run."""

    transactions: pd.DataFrame
    events: pd.DataFrame | None = None
    customers: pd.DataFrame | None = None
    nudges: pd.DataFrame | None = None
    sample: dict | None = None  # set by sample_customers: logged to MLflow as params


def fingerprint(inputs: Inputs, as_of: pd.Timestamp) -> dict[str, str | int]:
    """A content hash of the inputs (row-order independent), with row and customer counts and as-of."""
    digest = hashlib.sha256()
    for name in ("transactions", "events", "customers", "nudges"):
        df = getattr(inputs, name)
        if df is not None:
            h = pd.util.hash_pandas_object(df, index=False).to_numpy()
            digest.update(name.encode() + int(h.sum(dtype="uint64")).to_bytes(8, "little") + len(df).to_bytes(8, "little"))
    tx = inputs.transactions
    return {"data_hash": digest.hexdigest()[:16], "data_rows": len(tx),
            "data_customers": int(tx["customer_id"].nunique()), "as_of": str(as_of)}


def git_commit() -> str:
    """The current git commit of the code, or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def best_tuned_params(experiment: str, horizon_days: int | None = None,
                      value_horizon_days: int | None = None) -> tuple[dict, str] | None:
    """The best LightGBM parameters of the latest finished `tune` run of `experiment` (for these horizons, when
    given) and that run's id, if any."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = f"tags.`{BEST_PARAMS_TAG}` != ''"
    if horizon_days is not None:
        query += f" and params.horizon_days = '{horizon_days}' and params.value_horizon_days = '{value_horizon_days}'"
    runs = mlflow.search_runs([exp.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return (json.loads(runs[0].data.tags[BEST_PARAMS_TAG]), runs[0].info.run_id) if runs else None


def sample_customers(inputs: Inputs, n: int | None) -> Inputs:
    """Keep the `n` customers with the smallest 64-bit hash of their id, with all their rows in every table.

    Training at scale: the sample is the same on every run and machine (a hash, not a random draw), holds whole
    customers (so features and labels are exact for them), and grows only by adding customers as `n` grows.
    LightGBM fits a few million customers x cutoffs in minutes on one machine; scoring covers everyone (on Spark).
    """
    if n is None:
        return inputs
    if n < 1:
        raise InputError(f"--sample-customers {n}: must be at least 1")
    tables = {k: getattr(inputs, k) for k in ("transactions", "events", "customers", "nudges")}
    ids = pd.unique(pd.concat([df["customer_id"].astype(str) for df in tables.values() if df is not None]))
    if len(ids) <= n:
        return Inputs(**tables, sample={"sample_customers": n, "sample_population": len(ids), "sample_share": 1.0})
    h = pd.util.hash_array(ids.astype(object), categorize=False)
    keep = pd.Index(ids[h.argsort(kind="stable")[:n]])
    picked = {k: None if df is None else df.loc[df["customer_id"].astype(str).isin(keep)].reset_index(drop=True)
              for k, df in tables.items()}
    return Inputs(**picked, sample={"sample_customers": n, "sample_population": len(ids),
                                    "sample_share": round(n / len(ids), 6)})


def check_enough_customers(transactions: pd.DataFrame, as_of: pd.Timestamp) -> None:
    """Fail early, with a clear message, when fewer than MIN_CUSTOMERS customers bought before `as_of`."""
    seen = transactions.loc[(transactions["timestamp"] <= as_of) & (transactions["amount"] > 0), "customer_id"]
    if seen.nunique() < MIN_CUSTOMERS:
        raise InputError(f"transactions: only {seen.nunique()} customers with purchases up to --as-of {as_of.date()}; "
                         f"Kairos needs at least {MIN_CUSTOMERS} customers to train")


def train(inputs: Inputs, as_of: pd.Timestamp, horizon_days: int = 90, value_horizon_days: int = 365,
          experiment: str = "kairos", params: dict | None = None) -> dict:
    """Backtest, report, fit on all cutoffs up to `as_of`, register; return the JSON summary of DESIGN.md."""
    import mlflow

    check_enough_customers(inputs.transactions, as_of)
    configure()
    mlflow.set_experiment(experiment)
    tuned = best_tuned_params(experiment, horizon_days, value_horizon_days) if params is None else None
    source = f"tune run {tuned[1]}" if tuned else "default"
    print(f"parameters: {source}" + (f" (the latest tune of experiment {experiment!r} for these horizons)"
                                     if tuned else ""), file=sys.stderr)
    params = {**DEFAULT_PARAMS, **(tuned[0] if tuned else {}), **(params or {})}
    t0 = time.perf_counter()
    tx, ev, cu = inputs.transactions, inputs.events, inputs.customers
    with mlflow.start_run() as run:
        mlflow.set_tags({"kairos.kind": "train", "git_commit": git_commit(), **fingerprint(inputs, as_of),
                         "params_source": source})
        mlflow.log_params({"horizon_days": horizon_days, "value_horizon_days": value_horizon_days,
                           "as_of": str(as_of), "n_nudges": 0 if inputs.nudges is None else len(inputs.nudges),
                           **{f"lgb.{k}": v for k, v in params.items()}, **(inputs.sample or {})})
        print("backtest: training as of the backtest cutoff and fitting the baselines", file=sys.stderr)
        bt = run_backtest(tx, as_of, horizon_days, value_horizon_days, ev, cu, params)
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in bt.metrics.items() if pd.notna(v)})
        mlflow.log_params({"value_form": bt.model.value_form_, "backtest_cutoff": str(bt.cutoff)})
        with tempfile.TemporaryDirectory() as tmp:
            from training.report import write_report

            print("report: plots and backtest_report.html", file=sys.stderr)
            write_report(bt, Path(tmp) / "backtest")
            bt.scored.to_parquet(Path(tmp) / "backtest" / "backtest_set.parquet", index=False)
            with open(Path(tmp) / "backtest" / BACKTEST_MODEL, "wb") as f:  # what `promote` compares versions by
                pickle.dump(bt.model, f)
            mlflow.log_artifacts(str(Path(tmp) / "backtest"), artifact_path="backtest")
        print("final model: training on all cutoffs up to as-of", file=sys.stderr)
        frame = training_frame(tx, as_of, horizon_days, value_horizon_days, ev, cu)
        model = KairosModel(params, value_form=bt.model.value_form_, horizon_days=horizon_days).fit(frame)
        mlflow.log_metric("train_rows", len(frame))
        from training.uplift_run import uplift_for_training

        model.uplift_ = uplift_for_training(inputs.nudges, tx, as_of, ev, cu)
        mlflow.log_param("uplift_learner", type(model.uplift_.learner).name if model.uplift_ else "none (prior)")
        from training.pyfunc import log_kairos_model

        example = build_features(tx, as_of, ev, cu)
        info = log_kairos_model(model, example.loc[example["n_orders"] > 0])
        version = str(info.registered_model_version)
        set_alias("challenger", version)
        champion = alias_version("champion")
        if champion is None:
            set_alias("champion", version)
            champion = version
        mlflow.log_metric("train_seconds", time.perf_counter() - t0)
    return {"run_id": run.info.run_id, "model_uri": f"models:/{MODEL_NAME}/{version}",
            "registered_version": version, "champion_version": champion,
            "value_form": bt.model.value_form_, "backtest_cutoff": str(bt.cutoff), "params_source": source,
            "metrics": bt.metrics}
