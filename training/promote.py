"""Promotion: `champion` moves to a candidate only if it is not worse than the champion on the same backtest.

"The same backtest" is the candidate's own backtest set (features at its backtest cutoff and the labels after
it, logged with its run): both models score it, and the candidate must match the champion's AUC and value
Gini within `tolerance`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from features.errors import InputError
from training.metrics import classification_metrics, normalized_gini
from training.registry import MODEL_NAME, alias_version, client, set_alias

__all__ = ["compare_on_backtest", "promote"]


def _version_of(version: str | None, run_id: str | None) -> str:
    c = client()
    if version:
        try:
            return str(c.get_model_version(MODEL_NAME, str(version)).version)
        except MlflowException:
            raise InputError(f"model registry: no version {version} of '{MODEL_NAME}'") from None
    found = c.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_id}'")
    if not found:
        raise InputError(f"model registry: run {run_id} registered no version of '{MODEL_NAME}'")
    return str(found[0].version)


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
    comparison = compare_on_backtest(candidate, champion)
    ok = all(comparison[f"candidate.{m}"] >= comparison[f"champion.{m}"] - tolerance for m in ("auc", "gini"))
    if ok:
        set_alias("champion", candidate)
    return {**result, "promoted": ok, "comparison": comparison}
