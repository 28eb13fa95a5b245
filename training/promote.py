"""Promotion: `champion` moves to a candidate only if it is not worse than the champion on the same backtest.

"The same backtest" is the candidate's backtest set (features at its backtest cutoff and the labels after it,
logged with its run), scored by each version's backtest model: the model its run trained as of its own backtest
cutoff, so neither has seen those labels (the registered final models were trained on them: the final model's
newest training cutoff is the backtest cutoff). The candidate must match the champion's AUC and value Gini within
`tolerance`. Versions trained for different horizons are not compared, nor a champion whose backtest cutoff is
later than the candidate's (its backtest model has seen the candidate's backtest window): errors, unless forced.
"""
from __future__ import annotations

import pickle
import re
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from features.errors import InputError
from training.metrics import classification_metrics, normalized_gini
from training.registry import MODEL_NAME, alias_version, client, set_alias

__all__ = ["HORIZON_PARAMS", "compare_on_backtest", "promote"]

HORIZON_PARAMS = ("horizon_days", "value_horizon_days")


def _version_of(version: str | None, run_id: str | None) -> str:
    c = client()
    if version:
        try:
            return str(c.get_model_version(MODEL_NAME, str(version)).version)
        except MlflowException:
            raise InputError(f"model registry: no version {version} of '{MODEL_NAME}'") from None
    if not re.fullmatch(r"[0-9a-f]{32}", str(run_id)):
        raise InputError(f"--run-id {run_id!r}: not an MLflow run id (32 hexadecimal characters)")
    found = c.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_id}'")
    if not found:
        raise InputError(f"model registry: run {run_id} registered no version of '{MODEL_NAME}'")
    return str(found[0].version)


def _check_same_task(params: dict[str, dict[str, str]], candidate: str, champion: str) -> None:
    """Raise InputError unless both versions (their runs' `params`) predict the same horizons: a p_purchase over 30
    days and one over 90 days answer different questions, and each would win on its own backtest."""
    differ = [k for k in HORIZON_PARAMS if params[candidate].get(k) != params[champion].get(k)]
    if differ:
        shown = ", ".join(f"{k} {params[candidate].get(k)} vs {params[champion].get(k)}" for k in differ)
        raise InputError(f"model registry: version {candidate} and champion {champion} predict different horizons "
                         f"({shown}); they are not comparable: train with the champion's horizons, or --force")


def _backtest_artifact(run_id: str, version: str, name: str, tmp: str) -> Path:
    """The file `backtest/<name>` logged by the training run of `version`, downloaded to `tmp`."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"backtest/{name}", dst_path=tmp))
    except (MlflowException, OSError):
        raise InputError(f"model registry: version {version} has no backtest/{name} (trained before promotion "
                         f"compared backtest models?); train it again to compare it, or --force") from None


def compare_on_backtest(candidate: str, champion: str) -> dict[str, float]:
    """AUC and value Gini of both versions' backtest models on the candidate's backtest set; InputError when the
    versions are not comparable (other horizons, or a champion backtested later than the candidate)."""
    from training.train import BACKTEST_MODEL

    c = client()
    runs = {v: c.get_run(c.get_model_version(MODEL_NAME, v).run_id) for v in (candidate, champion)}
    _check_same_task({v: r.data.params for v, r in runs.items()}, candidate, champion)
    cutoffs = {v: pd.Timestamp(r.data.params.get("backtest_cutoff", "NaT")) for v, r in runs.items()}
    if pd.notna(cutoffs[champion]) and pd.notna(cutoffs[candidate]) and cutoffs[champion] > cutoffs[candidate]:
        raise InputError(f"model registry: champion {champion} was backtested as of {cutoffs[champion].date()}, "
                         f"after candidate {candidate}'s backtest cutoff {cutoffs[candidate].date()}: its backtest "
                         f"model has seen the candidate's backtest window; use --force to promote anyway")
    with tempfile.TemporaryDirectory() as tmp:
        data = pd.read_parquet(_backtest_artifact(runs[candidate].info.run_id, candidate, "backtest_set.parquet", tmp))
        models = {}
        for role, v in (("candidate", candidate), ("champion", champion)):
            with open(_backtest_artifact(runs[v].info.run_id, v, BACKTEST_MODEL, f"{tmp}/{role}"), "rb") as f:
                models[role] = pickle.load(f)  # our own run's artifact, in our own store
    out = {}
    for role, model in models.items():
        scores = model.predict(data)
        out[f"{role}.auc"] = classification_metrics(data["y_purchase"], scores["p_purchase"])["auc"]
        out[f"{role}.gini"] = normalized_gini(data["y_value"], scores["expected_value"])
    return out


def promote(version: str | None = None, run_id: str | None = None, force: bool = False,
            tolerance: float = 0.005) -> dict:
    """Move `champion` to the candidate after the gate (or unconditionally with `force`)."""
    candidate = _version_of(version, run_id)
    champion = alias_version("champion")
    result: dict = {"candidate": candidate, "previous_champion": champion, "forced": force}
    if champion is None or champion == candidate or force:
        set_alias("champion", candidate)
        return {**result, "promoted": True}
    comparison = compare_on_backtest(candidate, champion)
    ok = all(comparison[f"candidate.{m}"] >= comparison[f"champion.{m}"] - tolerance for m in ("auc", "gini"))
    if ok:
        set_alias("champion", candidate)
    return {**result, "promoted": ok, "comparison": comparison}
