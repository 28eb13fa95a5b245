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

Moments that matter (`moment_triggers`), emitted for automation systems when they happened within the last
`lookback_days` before as-of (default 1: since the previous nightly run):
- `opt_in`: a `newsletter_optin` event;
- `first_communication`: the customer was first seen (first transaction or event) and has not been contacted since;
- `first_purchase`: the first purchase, when the customer's first order of any kind came within the lookback too;
  `repeat_purchase`: any further purchase;
- `reactivated`: a purchase after a gap longer than `new_days` (the customer had been at risk or lapsed), also when
  more purchases followed within the lookback;
- `reactivation_due`: the customer has just become `at_risk` or `lapsed` by the rules above (no purchase since);
- `became_loyal`: the `loyal_orders`-th purchase, also when more purchases followed within the lookback (the count
  crossed the threshold); `first_advocacy`: the first referral or review (the way to brand ambassador).

A full refund booked on an order (its net falls to zero or below) takes the order out of the purchases from the
refund's time on; the moments follow what happened within the lookback:
- a refund is no purchase moment, and the refunded first order stays the customer's first order: a later purchase
  is a `repeat_purchase`, never a second `first_purchase` (so is a purchase after a return, of a purchase from
  before the data);
- purchases are counted, and gaps measured, among the purchases that stand at as-of: a purchase that reaches
  `loyal_orders` again after a refund is `became_loyal` again, and one after a gap left by a refunded order is
  `reactivated`;
- `reactivation_due` follows the stage the customer actually had, with the purchases standing at each time: a
  refund that puts the customer into `at_risk` or `lapsed` (a stage the time rule on the remaining purchases
  reached earlier) fires it at the refund, once, also when a later refund within the lookback keeps the stage; a
  refund that leaves the stage as it was fires nothing, and does not undo a crossing of the time rule (on the
  purchases standing then) within the same lookback. The feature `days_in_stage` (days since the customer entered
  today's at_risk or lapsed stage) carries this.
The features these need are point-in-time (`features.spec`: `days_since_first_order`, `days_since_loyal_order`,
`days_since_comeback`, `days_in_stage`), so any lookback works on one feature row; `days_in_stage` follows the
stage rules the features were built with (`FeatureParams.stage_rules`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["STAGES", "TRIGGERS", "TRIGGER_COLUMNS", "StageRules", "lifecycle_stage", "moment_triggers", "scored_stage",
           "stages_of"]

STAGES: tuple[str, ...] = ("prospect", "new", "repeat", "loyal", "at_risk", "lapsed")
TRIGGERS: tuple[str, ...] = ("opt_in", "first_communication", "first_purchase", "repeat_purchase", "reactivated",
                             "reactivation_due", "became_loyal", "first_advocacy")
TRIGGER_COLUMNS: tuple[str, ...] = ("n_orders", "recency_days", "tenure_days", "recency_over_gap", "n_referral",
                                    "n_review", "days_since_first_seen", "days_since_optin",
                                    "days_since_first_advocacy", "days_since_first_order", "days_since_loyal_order",
                                    "days_since_comeback", "days_in_stage")


@dataclass(frozen=True)
class StageRules:
    """Thresholds of the lifecycle rules (days and counts)."""

    new_days: float = 90.0
    lapsed_days: float = 365.0
    overdue_factor: float = 3.0
    loyal_orders: int = 5
    at_risk_probability: float = 0.1


def stages_of(n: np.ndarray, rec: np.ndarray, overdue: np.ndarray, advocacy: np.ndarray,
              rules: StageRules) -> np.ndarray:
    """The stage rules (module doc) on arrays: orders, recency, recency over the usual gap, referrals + reviews."""
    at_risk = ((n == 1) & (rec > rules.new_days)) | (
        (n >= 2) & (rec > rules.new_days) & (np.nan_to_num(overdue) > rules.overdue_factor))
    loyal = (n >= rules.loyal_orders) | ((n >= 2) & (advocacy > 0))
    return np.select([n == 0, rec > rules.lapsed_days, at_risk, n == 1, loyal],
                     ["prospect", "lapsed", "at_risk", "new", "loyal"], default="repeat")


def lifecycle_stage(features: pd.DataFrame, rules: StageRules = StageRules()) -> pd.Series:
    """Return the stage of each row of `features` (needs n_orders, recency_days, recency_over_gap, n_referral, n_review)."""
    stage = stages_of(features["n_orders"].to_numpy(dtype=float), features["recency_days"].to_numpy(dtype=float),
                      features["recency_over_gap"].to_numpy(dtype=float),
                      features["n_referral"].to_numpy(dtype=float) + features["n_review"].to_numpy(dtype=float), rules)
    return pd.Series(stage, index=features.index, name="lifecycle_stage")


def scored_stage(stage: np.ndarray, p_purchase: np.ndarray, rules: StageRules = StageRules()) -> np.ndarray:
    """The stages with the model's score (module doc): repeat and loyal customers whose purchase probability is
    below `rules.at_risk_probability` are at risk. Applied where scores meet features (the policy), so the feature
    table itself stays score-free."""
    p = np.asarray(p_purchase, dtype=float)
    low = np.isin(stage, ("repeat", "loyal")) & (p < rules.at_risk_probability)
    return np.where(low, "at_risk", np.asarray(stage, dtype=object)).astype(object)


def moment_triggers(features: Mapping[str, np.ndarray] | pd.DataFrame, n_rows: int, lookback_days: float = 1.0,
                    contacted: np.ndarray | None = None, rules: StageRules = StageRules()) -> np.ndarray:
    """The moments that matter of each row within the last `lookback_days` (see the module doc), comma-separated.

    Args:
        features: rows with the columns of `TRIGGER_COLUMNS` (a frame, or column arrays; missing ones are unknown).
        n_rows: the number of rows.
        lookback_days: how far back a moment counts (the time since the previous run).
        contacted: per row, whether the customer was contacted since first seen (None: nobody was).
        rules: the stage thresholds.

    Returns:
        An object array: the triggers in `TRIGGERS` order joined by ",", or None where there is none.
    """
    def col(name: str) -> np.ndarray:
        return np.asarray(features[name], dtype=float) if name in features else np.full(n_rows, np.nan)

    # a moment counts when it is younger than the lookback (half-open: a moment exactly one lookback old belonged
    # to the previous run, so consecutive runs never report it twice)
    n, rec = col("n_orders"), col("recency_days")
    recent = rec < lookback_days
    stage = stages_of(n, rec, col("recency_over_gap"), col("n_referral") + col("n_review"), rules)
    fired = {
        "opt_in": col("days_since_optin") < lookback_days,
        "first_communication": (col("days_since_first_seen") < lookback_days) & (
            True if contacted is None else ~np.asarray(contacted, bool)),
        "first_purchase": (col("tenure_days") < lookback_days) & (col("days_since_first_order") < lookback_days),
        "repeat_purchase": recent & ((n >= 2) | (col("days_since_first_order") >= lookback_days)),
        "reactivated": col("days_since_comeback") < lookback_days,
        "reactivation_due": np.isin(stage, ("at_risk", "lapsed")) & (  # entered by time or by a refund, and
            col("days_in_stage") < lookback_days),  # no purchase since (it would have changed the stage)
        "became_loyal": col("days_since_loyal_order") < lookback_days,
        "first_advocacy": col("days_since_first_advocacy") < lookback_days,
    }
    out = np.full(n_rows, None, dtype=object)
    hit = np.column_stack([fired[t] for t in TRIGGERS]) if n_rows else np.zeros((0, len(TRIGGERS)), bool)
    for i in np.flatnonzero(hit.any(axis=1)):
        out[i] = ",".join(t for t, h in zip(TRIGGERS, hit[i]) if h)
    return out
