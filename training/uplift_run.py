"""`python -m training uplift`: learn, evaluate, report and log the uplift of nudges; score customers on request."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from features.io import write_csv
from features.pipeline import build_features
from training.uplift import (
    LEARNERS,
    UpliftModel,
    check_nudges,
    feature_spec,
    nudge_frame,
    select_learner,
    value_per_purchase,
)
from training.uplift_eval import UpliftEvaluation, evaluate

__all__ = ["MIN_PER_ARM", "fit_uplift", "observed_nudges", "run_uplift", "score_customers", "uplift_for_training"]

MIN_PER_ARM = 20


def _channel_costs() -> dict[str, float]:
    from serving.policy import load_policy

    try:
        return load_policy().channels
    except InputError:
        return {}


def _check_frame(frame: pd.DataFrame, response_days: int) -> None:
    t = frame["treated"].to_numpy(dtype=bool)
    y = frame["y_purchase"].to_numpy()
    for arm, mask in (("treated", t), ("held-out", ~t)):
        if mask.sum() < MIN_PER_ARM:
            raise InputError(f"nudges: only {int(mask.sum())} {arm} rows; uplift needs at least {MIN_PER_ARM} per arm")
        if not y[mask].any():
            raise InputError(f"transactions: no purchase within {response_days} days after any {arm} nudge; "
                             f"check the nudge dates against the transactions or use a longer --response-days")


def fit_uplift(frame: pd.DataFrame, response_days: int, learner: str | None = None, seed: int = 0) -> UpliftModel:
    """Fit the uplift model on all rows of `frame`: `learner`, or the one `select_learner` picks."""
    spec = feature_spec(frame)
    X, t, y = spec.matrix(frame), frame["treated"].to_numpy(dtype=bool), frame["y_purchase"].to_numpy(dtype=float)
    if learner is None:
        learner = select_learner(X, t, y, seed=seed)[0]
    return UpliftModel(LEARNERS[learner](seed=seed).fit(X, t, y), spec, response_days,
                       value_per_purchase=value_per_purchase(y, frame["y_value"].to_numpy(dtype=float)))


def score_customers(model: UpliftModel, customers: pd.DataFrame, transactions: pd.DataFrame,
                    events: pd.DataFrame | None, as_of: pd.Timestamp) -> pd.DataFrame:
    """customer_id, uplift for every row of `customers` (also customers without any transaction), as of `as_of`."""
    feats = build_features(transactions, as_of, events, customers)
    ids = customers["customer_id"].astype(str).to_numpy()
    feats = feats.set_index(feats["customer_id"].astype(str)).reindex(ids)  # signed up after as-of: attributes only
    return pd.DataFrame({"customer_id": ids, "uplift": model.predict(feats.reset_index(drop=True))})


def _flat_metrics(ev: UpliftEvaluation) -> dict[str, float]:
    out = {f"{name}.{k}": v for name, m in ev.metrics.items() for k, v in m.items()}
    out.update({f"chosen.{k}": v for k, v in ev.metrics[ev.chosen].items()})
    out.update({f"policy.{p}.{k}": v for p, vals in ev.policy_values.items() for k, v in vals.items()})
    out.update({f"power.{k}": v for k, v in ev.power.items() if isinstance(v, (int, float)) and v is not None})
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(float(v))}


def run_uplift(customers: pd.DataFrame, nudges: pd.DataFrame, transactions: pd.DataFrame,
               events: pd.DataFrame | None, response_days: int, out_dir: str | Path,
               score: pd.DataFrame | None = None, experiment: str = "kairos", seed: int = 0) -> dict:
    """Build the nudge frame, evaluate the learners, refit the chosen one on all nudges, write the report
    (and the scores), and log the run to MLflow. Returns the JSON summary."""
    import mlflow

    from training.registry import configure
    from training.uplift_report import learner_table, policy_table, write_uplift_report

    check_nudges(nudges)
    if response_days < 1:
        raise InputError("--response-days must be at least 1 day")
    nudges = observed_nudges(nudges, transactions, response_days)
    frame = nudge_frame(nudges, transactions, response_days, events, customers)
    _check_frame(frame, response_days)
    print(f"evaluating {', '.join(LEARNERS)} on a stratified hold-out of {len(frame):,} nudges", file=sys.stderr)
    spec = feature_spec(frame)
    ev = evaluate(frame, spec, channel_costs=_channel_costs(), seed=seed)
    print(f"fitting {ev.chosen} on all nudges", file=sys.stderr)
    model = fit_uplift(frame, response_days, ev.chosen, seed)
    scores = None
    if score is not None:
        as_of = max(transactions["timestamp"].max(), nudges["timestamp"].max())
        scores = score_customers(model, score, transactions, events, as_of)
    out_dir = Path(out_dir)
    context = {"nudges": f"{len(frame):,} ({int(frame['treated'].sum()):,} treated)",
               "response window": f"{response_days} days", "seed": seed}
    configure()
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.set_tags({"kairos.kind": "uplift"})
        mlflow.log_params({"response_days": response_days, "n_nudges": len(frame), "chosen_learner": ev.chosen,
                           "seed": seed, "test_size": ev.settings["test_size"], "learners": ",".join(LEARNERS)})
        mlflow.log_metrics(_flat_metrics(ev))
        report = write_uplift_report(ev, out_dir, context)
        mlflow.log_artifact(str(report), artifact_path="uplift")
        with tempfile.TemporaryDirectory() as tmp:
            learner_table(ev).to_csv(Path(tmp) / "uplift_learners.csv")
            policy_table(ev).to_csv(Path(tmp) / "uplift_policies.csv")
            mlflow.log_artifacts(tmp, artifact_path="uplift")
        if scores is not None:
            write_csv(scores, out_dir / "uplift_scores.csv")
    m = ev.metrics[ev.chosen]
    return {"run_id": run.info.run_id, "chosen": ev.chosen, "report": str(report),
            "scores": str(out_dir / "uplift_scores.csv") if scores is not None else None,
            "metrics": {k: m[k] for k in ("qini", "auuc", "uplift_at_10", "uplift_at_30")},
            "policy_values": ev.policy_values, "power": ev.power, "split": ev.split}


def observed_nudges(nudges: pd.DataFrame, transactions: pd.DataFrame, response_days: int) -> pd.DataFrame:
    """The nudges whose response window ends by the last transaction: a window that runs past the data would count
    its unobserved days as "no purchase" and bias the uplift towards zero. When every window runs past it (one
    campaign whose purchases were recorded up to a date, as in Hillstrom), all are kept with a warning."""
    end = transactions["timestamp"].max()
    done = (nudges["timestamp"] + pd.Timedelta(days=response_days) <= end).to_numpy()
    if done.all():
        return nudges
    if not done.any():
        print(f"note: every nudge's {response_days}-day response window ends after the last transaction "
              f"({end}); purchases after it count as none", file=sys.stderr)
        return nudges
    print(f"note: left out {int((~done).sum()):,} of {len(nudges):,} nudges whose {response_days}-day response "
          f"window ends after the last transaction ({end}): their outcome is not observed yet", file=sys.stderr)
    return nudges.loc[done].reset_index(drop=True)


def uplift_for_training(nudges: pd.DataFrame | None, transactions: pd.DataFrame, as_of: pd.Timestamp,
                        events: pd.DataFrame | None, customers: pd.DataFrame | None,
                        response_days: int = 14) -> UpliftModel | None:
    """The uplift model `train` attaches to KairosModel: from the nudges whose response window ends by `as_of`,
    when they have both treated and held-out rows with purchases; None otherwise (the policy keeps its prior)."""
    if nudges is None:
        return None
    done = nudges.loc[(nudges["timestamp"] + pd.Timedelta(days=response_days) <= as_of).to_numpy()]
    t = done["treated"].to_numpy(dtype=bool)
    if len(done) == 0 or t.all() or not t.any():
        print("uplift: no randomised nudges with a finished response window; the policy keeps its prior",
              file=sys.stderr)
        return None
    frame = nudge_frame(done, transactions, response_days, events, customers, progress=False)
    try:
        _check_frame(frame, response_days)
    except InputError as exc:
        print(f"uplift: skipped ({exc})", file=sys.stderr)
        return None
    print(f"uplift: fitting on {len(frame):,} nudges", file=sys.stderr)
    return fit_uplift(frame, response_days)


def summary_json(result: dict) -> str:
    """The last stdout line of the command."""
    return json.dumps(result, default=str)
