"""Hyper-parameter tuning with Optuna: TPE, pruning by LightGBM early stopping, each trial a nested MLflow run.

The objective is the out-of-time log loss of the next-purchase model (train on the older rolling cutoffs,
validate on the newest, as `KairosModel.fit` does). The best parameters are stored as the tag
`kairos.best_params` of the parent run, where the next `train` of the same experiment picks them up.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightgbm as lgb
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from features.errors import InputError
from features.labels import training_frame
from training.models import DEFAULT_PARAMS, FeatureSpec, check_both_classes, time_split
from training.registry import configure, tracking_uri
from training.train import BEST_PARAMS_TAG, Inputs, check_enough_customers, fingerprint, git_commit

__all__ = ["search_space", "tune"]


def search_space(trial) -> dict:
    """LightGBM parameters proposed by one Optuna trial (the ranges hold `DEFAULT_PARAMS`, the first trial)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 4, 128, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 400, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def _study_storage() -> str:
    """Optuna's study store: beside the MLflow sqlite store, else ./mlruns/optuna.db."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    Path("mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{Path.cwd() / 'mlruns' / 'optuna.db'}"


def tune(inputs: Inputs, as_of: pd.Timestamp, horizon_days: int = 90, value_horizon_days: int = 365,
         experiment: str = "kairos", trials: int = 30, timeout: float | None = None, seed: int = 0) -> dict:
    """Run the study and return the best parameters, score and run id."""
    import mlflow
    import optuna
    from optuna_integration import LightGBMPruningCallback

    check_enough_customers(inputs.transactions, as_of)
    configure()
    mlflow.set_experiment(experiment)
    frame = training_frame(inputs.transactions, as_of, horizon_days, value_horizon_days, inputs.events, inputs.customers)
    spec = FeatureSpec.from_frame(frame)
    X, y = spec.matrix(frame), frame["y_purchase"].to_numpy()
    train, valid = time_split(frame)
    check_both_classes(y[train], "next-purchase")
    check_both_classes(y[valid], "next-purchase")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        params = {**DEFAULT_PARAMS, "n_estimators": 1000, **search_space(trial)}
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            clf = lgb.LGBMClassifier(**params, random_state=seed, n_jobs=2, verbose=-1)
            clf.fit(X[train], y[train], eval_X=(X[valid],), eval_y=(y[valid],), eval_metric="binary_logloss",
                    callbacks=[lgb.early_stopping(50, verbose=False),
                               LightGBMPruningCallback(trial, "binary_logloss", valid_name="valid_0")])
            p = clf.predict_proba(X[valid])[:, 1]
            loss, auc = log_loss(y[valid], p), roc_auc_score(y[valid], p)
            mlflow.log_params(params)
            mlflow.log_metrics({"valid.log_loss": loss, "valid.auc": auc, "best_iteration": clf.best_iteration_})
            trial.set_user_attr("best_iteration", int(clf.best_iteration_))
        return loss

    with mlflow.start_run(run_name="tune") as run:
        mlflow.set_tags({"kairos.kind": "tune", "git_commit": git_commit(), **fingerprint(inputs, as_of)})
        mlflow.log_params({"trials": trials, "timeout": timeout, "horizon_days": horizon_days,
                           "value_horizon_days": value_horizon_days})
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_warmup_steps=20), storage=_study_storage(),
            study_name=f"{experiment}-{run.info.run_id}")
        # the first trial is the defaults, so the tuned parameters validate at least as well as the untuned ones
        study.enqueue_trial(search_space(optuna.trial.FixedTrial(DEFAULT_PARAMS)))
        study.optimize(objective, n_trials=trials, timeout=timeout, show_progress_bar=sys.stderr.isatty())
        done = [t for t in study.trials if t.value is not None]
        if not done:
            raise InputError(f"--timeout {timeout}: no trial finished in time; raise --timeout")
        best = {**study.best_params, "n_estimators": 1000}
        mlflow.log_metrics({"best.valid.log_loss": study.best_value,
                            "trials_pruned": sum(t.state.name == "PRUNED" for t in study.trials),
                            "trials_complete": len(done)})
        mlflow.log_dict(best, "best_params.json")
        mlflow.set_tag(BEST_PARAMS_TAG, json.dumps(best))
    return {"run_id": run.info.run_id, "best_params": best, "best_valid_log_loss": study.best_value,
            "trials": len(study.trials)}
