"""Scores rows (DESIGN.md "Scores"): model scores, top drivers and the policy's decision, shared by batch and HTTP."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.errors import InputError
from serving.policy import DAY_NS, SCORE_FEATURES, PolicyConfig, contact_summary, decide_arrays, required_columns

__all__ = [
    "SCORE_COLUMNS",
    "decision_columns",
    "driver_reasons",
    "load_model",
    "model_scores",
    "resolve_model_uri",
    "score_features",
    "to_records",
]

SCORE_COLUMNS = ["customer_id", "as_of", "n_orders", "lifecycle_stage", "p_purchase", "p_second_purchase",
                 "expected_value", "action", "channel", "message", "priority", "reasons", "model_version", "triggers"]


def driver_reasons(model, features: pd.DataFrame, k: int = 3) -> list[str]:
    """The top `k` drivers of each row in words (`KairosModel.reasons`: LightGBM contributions, TreeSHAP)."""
    return model.reasons(features, k) if len(features) else []


def model_scores(model, features: pd.DataFrame, with_reasons: bool = True) -> pd.DataFrame:
    """p_purchase, p_second_purchase, expected_value and (with_reasons) `drivers` of each row of `features`."""
    scores = model.predict(features)
    if with_reasons:
        scores["drivers"] = driver_reasons(model, features)
    return scores


def decision_columns(cols: dict[str, np.ndarray], config: PolicyConfig, history: pd.DataFrame | None,
                     now_ns: int) -> dict[str, np.ndarray | list]:
    """Run the policy on column arrays (features + expected_value) with the contact history of those customers."""
    contacts = None
    if history is not None and len(history):
        ids = np.asarray(cols["customer_id"], dtype=str)
        pos = pd.Index(ids).get_indexer(history["customer_id"].astype(str)) if len(ids) > 32 else np.array(
            [dict(zip(ids, range(len(ids)))).get(str(c), -1) for c in history["customer_id"]], dtype=np.int64)
        ts = pd.to_datetime(history["timestamp"]).to_numpy().astype("datetime64[ns]").astype(np.int64)
        as_of_ns = np.asarray(cols["as_of"]).astype("datetime64[ns]").astype(np.int64)
        last_purchase = as_of_ns - np.asarray(cols["recency_days"], dtype=float) * DAY_NS
        contacts = contact_summary(len(ids), pos, ts, last_purchase, now_ns, config.cap_window_days)
    return decide_arrays(cols, config, contacts, now_ns)


def score_features(model, features: pd.DataFrame, config: PolicyConfig, history: pd.DataFrame | None = None,
                   now: pd.Timestamp | None = None, with_reasons: bool | str = True, model_version: str = "",
                   scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Score `features` (rows of build_features) and decide: exactly SCORE_COLUMNS, same row order.

    Args:
        model: a KairosModel (training.pyfunc.load_kairos_model).
        features: rows of `features.pipeline.build_features`.
        config: the policy (with a resolved timing for reproducible answers).
        history: past contacts (customer_id, timestamp) of these customers.
        now: decision time (naive UTC); default: the features' as_of.
        with_reasons: add the model's top drivers to the policy's reason: True (all rows), "nudged" (only the
            rows to nudge: drivers cost a few ms per row), False.
        model_version: written into every row.
        scores: precomputed `model_scores` of these rows (skips the model).
    """
    features = features.reset_index(drop=True)
    if scores is None:
        scores = model_scores(model, features, with_reasons is True)
    scores = scores.reset_index(drop=True)
    as_of = features["as_of"].to_numpy().astype("datetime64[ns]")
    now_ns = int(pd.Timestamp(now).value) if now is not None else int(as_of.astype(np.int64).max(initial=0))
    cols = {c: features[c].to_numpy() for c in required_columns(config) if c in features.columns}
    # the model's scores (uplift: learned uplift bundled with the model), as the service's decisions see them
    cols.update({c: scores[c].to_numpy(dtype=float) for c in SCORE_FEATURES if c in scores.columns})
    dec = decision_columns(cols, config, history, now_ns)
    reasons = dec["reasons"]
    drivers = scores["drivers"].tolist() if with_reasons is True and "drivers" in scores else None
    if with_reasons == "nudged":
        nudged = np.flatnonzero(dec["action"] == "nudge")
        drivers = [None] * len(features)
        for i, d in zip(nudged, driver_reasons(model, features.iloc[nudged])):
            drivers[i] = d
    if drivers is not None:
        reasons = [f"{r}; drivers: {d}" if d else r for r, d in zip(reasons, drivers)]
    out = pd.DataFrame({
        "customer_id": features["customer_id"].astype(str).to_numpy(),
        "as_of": as_of,
        "n_orders": features["n_orders"].to_numpy(dtype=float).astype(np.int64),
        "lifecycle_stage": dec["lifecycle_stage"].astype(str),
        "p_purchase": scores["p_purchase"].to_numpy(dtype=float),
        "p_second_purchase": scores["p_second_purchase"].to_numpy(dtype=float),
        "expected_value": scores["expected_value"].to_numpy(dtype=float),
        "action": dec["action"], "channel": dec["channel"], "message": dec["message"],
        "priority": np.asarray(dec["priority"], dtype=float), "reasons": reasons,
        "model_version": str(model_version), "triggers": dec["triggers"],
    })
    for c in ("customer_id", "lifecycle_stage", "action", "channel", "message", "reasons", "model_version", "triggers"):
        out[c] = out[c].astype("str").where(out[c].notna(), None)
    return out[SCORE_COLUMNS]


def _json_value(v):
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) or math.isinf(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(v).isoformat()
    return v


def to_records(scores: pd.DataFrame) -> list[dict]:
    """JSON-ready rows of a scores frame (NaN -> None, timestamps -> ISO 8601)."""
    return [{k: _json_value(v) for k, v in zip(scores.columns, row)} for row in scores.itertuples(index=False)]


def resolve_model_uri(model_uri: str) -> tuple[str, str]:
    """(a pinned URI, the model version) for `model_uri`: an alias is resolved once, so the answer names it."""
    import re

    from training.registry import client

    m = re.fullmatch(r"models:/([^/@]+)@(.+)", model_uri)
    if m:
        from mlflow.exceptions import MlflowException

        try:
            version = client().get_model_version_by_alias(m.group(1), m.group(2)).version
        except MlflowException:
            raise InputError(f"--model-uri {model_uri}: no model version holds alias '{m.group(2)}' "
                             f"(train one with python -m training train, or pass --model-uri)") from None
        return f"models:/{m.group(1)}/{version}", str(version)
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    return model_uri, (m.group(2) if m else model_uri)


def load_model(model_uri: str, compiled: bool = True):
    """Load the KairosModel behind `model_uri` from the configured MLflow store; returns (model, version).

    `compiled`: compile its boosters (`KairosModel.compile`: the same scores, several times faster; the first load
    of a model version on a machine compiles, later loads read the cache)."""
    from training.pyfunc import load_kairos_model
    from training.registry import configure

    configure()
    uri, version = resolve_model_uri(model_uri)
    try:
        model = load_kairos_model(uri)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (MLflow raises many types for a missing model)
        raise InputError(f"--model-uri {model_uri}: cannot load the model ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    return (model.compile() if compiled else model), version
