"""Promotion: `champion` moves to a candidate only if it is not worse than the champion on the same backtest.

"The same backtest" is the candidate's own backtest set (features at its backtest cutoff and the labels after
it, logged with its run): both models score it, and the candidate must match the champion's AUC and value
Gini within `tolerance`. Versions trained for different horizons are not compared (an error, unless forced).
"""
from __future__ import annotations

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


def _check_same_task(candidate: str, champion: str) -> None:
    """Raise InputError unless both versions predict the same horizons: a p_purchase over 30 days and one over 90
    days answer different questions, and each would win on its own backtest."""
    c = client()
    params = {v: c.get_run(c.get_model_version(MODEL_NAME, v).run_id).data.params for v in (candidate, champion)}
    differ = [k for k in HORIZON_PARAMS if params[candidate].get(k) != params[champion].get(k)]
    if differ:
        shown = ", ".join(f"{k} {params[candidate].get(k)} vs {params[champion].get(k)}" for k in differ)
        raise InputError(f"model registry: version {candidate} and champion {champion} predict different horizons "
                         f"({shown}); they are not comparable: train with the champion's horizons, or --force")


def compare_on_backtest(candidate: str, champion: str) -> dict[str, float]:
    """AUC and value Gini of both versions on the candidate's backtest set."""
    import mlflow

    from training.pyfunc import load_kairos_model

    run_id = client().get_model_version(MODEL_NAME, candidate).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="backtest/backtest_set.parquet", dst_path=tmp)
        data = pd.read_parquet(Path(path))
    out = {}
    for role, version in (("candidate", candidate), ("champion", champion)):
        scores = load_kairos_model(f"models:/{MODEL_NAME}/{version}").predict(data)
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
    _check_same_task(candidate, champion)
    comparison = compare_on_backtest(candidate, champion)
    ok = all(comparison[f"candidate.{m}"] >= comparison[f"champion.{m}"] - tolerance for m in ("auc", "gini"))
    if ok:
        set_alias("champion", candidate)
    return {**result, "promoted": ok, "comparison": comparison}
