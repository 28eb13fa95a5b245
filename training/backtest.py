"""Backtest on the last fully observed window before `--as-of`: Kairos against BG/NBD, Pareto/NBD and RFM.

The backtest cutoff is `as_of - max(horizon, value_horizon)`; the model is trained on rolling cutoffs whose
label windows end by that cutoff, and every model (Kairos and baselines) is scored on the customers who had
bought by the cutoff, against what they did in the windows after it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.errors import InputError
from features.labels import build_labels, training_frame, value_column
from features.pipeline import build_features
from training.btyd import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter, rfm_summary
from training.metrics import classification_metrics, value_metrics
from training.models import KairosModel

__all__ = ["SCORERS", "Backtest", "backtest_cutoff", "baseline_scores", "evaluate", "run_backtest"]

SCORERS = ("kairos", "bgnbd", "paretonbd", "rfm")


@dataclass
class Backtest:
    """What one backtest produced: its cutoff, metrics, the scored evaluation set and the fitted model."""

    cutoff: pd.Timestamp
    metrics: dict[str, float]
    scored: pd.DataFrame
    model: KairosModel


def backtest_cutoff(as_of: pd.Timestamp, horizon_days: int, value_horizon_days: int) -> pd.Timestamp:
    """The cutoff whose label windows end exactly at `as_of`."""
    return pd.Timestamp(as_of) - pd.Timedelta(days=max(horizon_days, value_horizon_days))


def _rfm_heuristic(features: pd.DataFrame, last_year_value: np.ndarray,
                   value_horizon_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain RFM: the sum of recency, frequency and monetary quintile scores, and last year's value rate (in the
    units of the label: margin where margins are complete)."""
    def quintile(s: pd.Series) -> np.ndarray:
        return np.ceil(s.rank(method="first", pct=True).to_numpy() * 5)

    score = quintile(-features["recency_days"]) + quintile(features["n_orders"]) + quintile(features["net_spend_total"])
    return (score - 3) / 12, np.clip(last_year_value, 0, None) * value_horizon_days / 365


def baseline_scores(transactions: pd.DataFrame, features: pd.DataFrame, cutoff: pd.Timestamp,
                    horizon_days: int, value_horizon_days: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per baseline, (probability of a purchase in the horizon, expected value in the value horizon) for the
    rows of `features`. BTYD probabilities are the models' exact P(at least one purchase in the horizon)."""
    vcol = value_column(transactions)
    summary = rfm_summary(transactions.assign(amount=transactions[vcol]), cutoff)
    summary = summary.reindex(features["customer_id"].to_numpy())
    ok = summary["frequency"].notna().to_numpy()
    f, r, t, m = (summary[c].fillna(0).to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    fit = summary.loc[ok]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    repeat = (fit["frequency"] > 0) & (fit["monetary_value"] > 0)
    try:
        gg = GammaGammaFitter(penalizer_coef=0.001).fit(fit["frequency"][repeat], fit["monetary_value"][repeat])
        if gg.params_["q"] <= 1:  # the population mean spend p v / (q - 1) does not exist
            raise ValueError(f"q = {gg.params_['q']:.3g} <= 1, heavy-tailed spend")
        spend = np.asarray(gg.conditional_expected_average_profit(f, np.where(f > 0, m, 0)), dtype=float)
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot be fitted is reported, not fatal
        print(f"note: Gamma-Gamma did not fit ({exc}); BTYD value uses the mean order value", file=sys.stderr)
        spend = np.full(len(f), float(fit["monetary_value"][repeat].mean()))
    for name, fitter in (("bgnbd", BetaGeoFitter), ("paretonbd", ParetoNBDFitter)):
        try:
            model = fitter(penalizer_coef=0.001).fit(fit["frequency"], fit["recency"], fit["T"])
            p_h = np.asarray(model.prob_purchase(horizon_days, f, r, t), dtype=float)
            e_v = np.asarray(model.expected_purchases(value_horizon_days, f, r, t), dtype=float)
            out[name] = (np.where(ok, p_h, 0.0), np.where(ok, e_v * spend, 0.0))
        except Exception as exc:  # noqa: BLE001 - as above
            print(f"note: {name} did not fit ({exc}); its metrics are left out", file=sys.stderr)
    t = transactions["timestamp"].to_numpy()
    year = transactions.loc[(t > (cutoff - pd.Timedelta(days=365)).to_datetime64()) & (t <= cutoff.to_datetime64())]
    last_year = year.groupby(year["customer_id"].astype(str))[vcol].sum()
    out["rfm"] = _rfm_heuristic(features, last_year.reindex(features["customer_id"].astype(str)).fillna(0.0).to_numpy(),
                                value_horizon_days)
    return out


def evaluate(scored: pd.DataFrame, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Metrics `<scorer>.<metric>` on all buyers and `new.<scorer>.<metric>` on one-order customers."""
    y, yv = scored["y_purchase"].to_numpy(), scored["y_value"].to_numpy(dtype=float)
    one = scored["n_orders"].to_numpy() == 1
    metrics: dict[str, float] = {"n_customers": float(len(scored)), "n_new_customers": float(one.sum())}
    for name, (p, value) in scores.items():
        metrics.update({f"{name}.{k}": v for k, v in classification_metrics(y, p).items()})
        metrics.update({f"{name}.{k}": v for k, v in value_metrics(yv, value).items()})
        if name == "kairos":
            p = scored["p_second_purchase"].to_numpy()
        if one.sum() >= 10:
            metrics.update({f"new.{name}.{k}": v for k, v in classification_metrics(y[one], p[one]).items()})
    return {k: float(v) for k, v in metrics.items()}


def run_backtest(transactions: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int, value_horizon_days: int,
                 events: pd.DataFrame | None = None, customers: pd.DataFrame | None = None,
                 params: dict | None = None, n_cutoffs: int = 12, step_days: int = 14,
                 progress: Callable = tqdm) -> Backtest:
    """Train Kairos as of the backtest cutoff, score it and the baselines on the window after it."""
    cutoff = backtest_cutoff(as_of, horizon_days, value_horizon_days)
    try:
        frame = training_frame(transactions, cutoff, horizon_days, value_horizon_days, events, customers,
                               n_cutoffs=n_cutoffs, step_days=step_days, progress=progress)
    except InputError as exc:
        raise InputError(f"{exc} (the backtest trains as of {cutoff.date()}: --as-of {pd.Timestamp(as_of).date()} "
                         f"minus the longest horizon, {max(horizon_days, value_horizon_days)} days)") from None
    model = KairosModel(params, horizon_days=horizon_days).fit(frame)
    feats = build_features(transactions, cutoff, events, customers)
    feats = feats.loc[feats["n_orders"] > 0].reset_index(drop=True)
    labels = build_labels(transactions, cutoff, feats["customer_id"].to_numpy(dtype=str), horizon_days, value_horizon_days)
    scored = pd.concat([feats, labels.drop(columns="customer_id"), model.predict(feats)], axis=1)
    scores = {"kairos": (scored["p_purchase"].to_numpy(), scored["expected_value"].to_numpy())}
    scores.update(baseline_scores(transactions, feats, cutoff, horizon_days, value_horizon_days))
    for name, (p, value) in scores.items():
        if name != "kairos":
            scored[f"{name}_p"], scored[f"{name}_value"] = p, value
    return Backtest(cutoff, evaluate(scored, scores), scored, model)
