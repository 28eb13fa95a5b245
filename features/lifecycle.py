"""Lifecycle stages as of a date, by documented rules on the point-in-time features.

Rules, first match wins:
- `prospect`: no purchase yet (opted-in or known customers, and customers whose only rows are returns);
- `lapsed`: last purchase more than `lapsed_days` ago;
- `at_risk`: one order and more than `new_days` since it, or several orders and overdue by more than
  `overdue_factor` times the usual gap (and at least `new_days`); with a model score, also a purchase
  probability below `at_risk_probability` for repeat and loyal customers;
- `new`: exactly one order, within `new_days`;
- `loyal`: at least `loyal_orders` orders, or a referral/review (ambassador behaviour) with 2+ orders;
- `repeat`: everyone else with 2+ orders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["STAGES", "StageRules", "lifecycle_stage"]

STAGES: tuple[str, ...] = ("prospect", "new", "repeat", "loyal", "at_risk", "lapsed")


@dataclass(frozen=True)
class StageRules:
    """Thresholds of the lifecycle rules (days and counts)."""

    new_days: float = 90.0
    lapsed_days: float = 365.0
    overdue_factor: float = 3.0
    loyal_orders: int = 5
    at_risk_probability: float = 0.1


def lifecycle_stage(features: pd.DataFrame, p_purchase: np.ndarray | None = None,
                    rules: StageRules = StageRules()) -> pd.Series:
    """Return the stage of each row of `features` (needs n_orders, recency_days, recency_over_gap, n_referral, n_review)."""
    n = features["n_orders"].to_numpy()
    rec = features["recency_days"].to_numpy(dtype=float)
    overdue = features["recency_over_gap"].to_numpy(dtype=float)
    ambassador = (features["n_referral"].to_numpy() + features["n_review"].to_numpy()) > 0
    at_risk = ((n == 1) & (rec > rules.new_days)) | (
        (n >= 2) & (rec > rules.new_days) & (np.nan_to_num(overdue) > rules.overdue_factor))
    loyal = (n >= rules.loyal_orders) | ((n >= 2) & ambassador)
    if p_purchase is not None:
        at_risk |= (n >= 2) & (np.asarray(p_purchase, dtype=float) < rules.at_risk_probability)
    stage = np.select(
        [n == 0, rec > rules.lapsed_days, at_risk, n == 1, loyal],
        ["prospect", "lapsed", "at_risk", "new", "loyal"],
        default="repeat",
    )
    return pd.Series(stage, index=features.index, name="lifecycle_stage")
