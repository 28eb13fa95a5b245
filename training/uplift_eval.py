"""Evaluation of uplift learners on a stratified hold-out: curves, uplift@k, policy values and the next hold-out size.

`evaluate(frame, spec)` splits the nudge rows (treated x outcome strata), picks a learner on an inner split of the
training part, fits every learner on the training part and measures them on the untouched test part. Policies are
valued off-policy on the test part in units of the outcome's value (revenue or margin) minus contact cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from training.models import FeatureSpec
from training.uplift import LEARNERS, TLearner, select_learner, stratified_split, value_per_purchase
from training.uplift_metrics import (
    holdout_size,
    normalized_auuc,
    normalized_qini,
    policy_value,
    qini_curve,
    uplift_at_k,
    uplift_by_decile,
)

__all__ = ["POLICIES", "UpliftEvaluation", "campaign_size", "evaluate", "learner_metrics", "policies"]

POLICIES = ("kairos", "everyone", "no_one", "random", "by_purchase_probability")


@dataclass
class UpliftEvaluation:
    """Everything the report shows: the split, each learner's test metrics and curves, policies, power."""

    chosen: str
    selection: dict[str, dict[str, float]]
    split: dict[str, int]
    metrics: dict[str, dict[str, float]]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    deciles: list[dict[str, float]]
    policy_values: dict[str, dict[str, float]]
    power: dict
    value_per_purchase: float
    settings: dict = field(default_factory=dict)


def learner_metrics(y, treated, uplift) -> dict[str, float]:
    """Normalised Qini, AUUC and uplift@10%/30% with the treatment/control counts of each top k."""
    out = {"qini": normalized_qini(y, treated, uplift), "auuc": normalized_auuc(y, treated, uplift)}
    for k in (0.1, 0.3):
        at = uplift_at_k(y, treated, uplift, k)
        tag = f"uplift_at_{int(k * 100)}"
        out.update({tag: at["uplift"], f"{tag}_n_treated": at["n_treated"], f"{tag}_n_control": at["n_control"],
                    f"{tag}_by_group": uplift_at_k(y, treated, uplift, k, "by_group")["uplift"]})
    return out


def _cost(frame: pd.DataFrame, channel_costs: dict[str, float] | None) -> np.ndarray:
    """Contact cost of each nudge: its `cost`, else the policy's cost of its channel, else 0."""
    cost = frame["cost"].to_numpy(dtype=float) if "cost" in frame else np.full(len(frame), np.nan)
    if channel_costs:
        by_channel = frame["channel"].astype(str).map(channel_costs).to_numpy(dtype=float)
        cost = np.where(np.isnan(cost), by_channel, cost)
    return np.nan_to_num(cost, nan=0.0)


def policies(uplift: np.ndarray, p_purchase: np.ndarray, value_per_purchase: float, cost: np.ndarray,
             seed: int = 0) -> dict[str, np.ndarray]:
    """0/1 nudge decisions: Kairos (uplift x value > cost), everyone, no one, and random and by purchase probability
    with Kairos's share of nudges (so they spend the same budget)."""
    kairos = uplift * value_per_purchase > cost
    n = len(uplift)
    k = int(kairos.sum())
    rng = np.random.default_rng(seed)
    random = np.zeros(n, bool)
    random[rng.permutation(n)[:k]] = True
    by_p = np.zeros(n, bool)
    by_p[np.argsort(-p_purchase, kind="stable")[:k]] = True
    return {"kairos": kairos, "everyone": np.ones(n, bool), "no_one": np.zeros(n, bool), "random": random,
            "by_purchase_probability": by_p}


def campaign_size(frame: pd.DataFrame) -> int:
    """Treated nudges of an average campaign so far (a campaign may be sent over several days)."""
    campaigns = frame["campaign"].nunique() if "campaign" in frame else 1
    return int(np.ceil(frame["treated"].to_numpy(dtype=bool).sum() / max(campaigns, 1)))


def evaluate(frame: pd.DataFrame, spec: FeatureSpec, outcome: str = "y_purchase", value: str = "y_value",
             channel_costs: dict[str, float] | None = None, params: dict | None = None, seed: int = 0,
             test_size: float = 0.3, learners: tuple[str, ...] = tuple(LEARNERS), budget: int | None = None,
             n_boot: int = 300) -> UpliftEvaluation:
    """Select, fit and measure the learners on a stratified hold-out of `frame` (rows of `nudge_frame`).

    Args:
        frame: one row per nudge with treated, the outcome columns, cost and channel, and the features.
        spec: the features the learners use.
        outcome: the column whose uplift is learned (0/1 purchase, or a value).
        value: the column valued by the policies (revenue or margin in the response window).
        channel_costs: cost per contact by channel where a nudge has no cost (serving/policy.yaml).
        budget: nudges of the next campaign for the power calculation (default: the treated rows per campaign date).
    """
    X = spec.matrix(frame)
    t = frame["treated"].to_numpy(dtype=bool)
    y = frame[outcome].to_numpy(dtype=float)
    yv = frame[value].to_numpy(dtype=float)
    train, test = stratified_split(t, y, test_size, seed)
    chosen, selection = select_learner(X[train], t[train], y[train], learners, params, seed)
    preds, curves, metrics = {}, {}, {}
    fitted = {}
    for name in learners:
        fitted[name] = LEARNERS[name](params, seed).fit(X[train], t[train], y[train])
        preds[name] = fitted[name].predict(X[test])
        curves[name] = qini_curve(y[test], t[test], preds[name])
        metrics[name] = learner_metrics(y[test], t[test], preds[name])
    tl = fitted["t_learner"] if "t_learner" in fitted else TLearner(params, seed).fit(X[train], t[train], y[train])
    mu0_p, mu1_p = tl.outcomes(X[test])
    e = float(t[train].mean())
    value_model = TLearner(params, seed).fit(X[train], t[train], yv[train])  # outcome models for the DR estimate
    mu0_v, mu1_v = value_model.outcomes(X[test])
    vpp = value_per_purchase(y[train], yv[train])
    cost = _cost(frame, channel_costs)[test]
    uplift = preds[chosen] if set(np.unique(y)) <= {0.0, 1.0} else preds[chosen] / max(vpp, 1e-9)
    rules = policies(uplift, e * mu1_p + (1 - e) * mu0_p, vpp, cost, seed)
    values = {name: policy_value(yv[test], t[test], pi, e, cost, mu0_v, mu1_v, n_boot=n_boot, seed=seed)
              for name, pi in rules.items()}
    target = rules["kairos"] if rules["kairos"].any() else np.ones(len(uplift), bool)
    yt, tt = y[test][target], t[test][target]
    p_control = float(yt[~tt].mean()) if (yt[~tt] > 0).any() else float(y[test][~t[test]].mean())
    # the effect to detect: the DR estimate among the customers Kairos would nudge (predictions overfit small data)
    dr = (mu1_p - mu0_p + t[test] * (y[test] - mu1_p) / e - (~t[test]) * (y[test] - mu0_p) / (1 - e))[target]
    expected = float(dr.mean()) if dr.mean() > 0 else float(uplift[target].mean())
    if budget is None:
        budget = campaign_size(frame)
    power = {"budget": int(budget), "p_control": p_control, "expected_uplift": expected,
             **holdout_size(p_control, expected, budget)}
    split = {"train_treated": int(t[train].sum()), "train_control": int((~t[train]).sum()),
             "test_treated": int(t[test].sum()), "test_control": int((~t[test]).sum()),
             "test_treated_positive": int((y[test][t[test]] > 0).sum()),
             "test_control_positive": int((y[test][~t[test]] > 0).sum())}
    return UpliftEvaluation(chosen, selection, split, metrics, curves, uplift_by_decile(y[test], t[test], preds[chosen]),
                            values, power, vpp, {"outcome": outcome, "value": value, "seed": seed,
                                                 "test_size": test_size, "propensity": e})
