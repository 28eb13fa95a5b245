"""The feature specification: every feature built by `features.pipeline.build_features`, documented."""
from __future__ import annotations

__all__ = ["CATEGORICAL", "EVENT_TYPES", "FEATURE_DOCS", "ID_COLUMNS", "WINDOWS"]

EVENT_TYPES: tuple[str, ...] = (
    "app_session", "feedback", "survey", "newsletter_optin", "email_open",
    "support_ticket", "review", "referral", "coupon_redemption",
)
"""Event types with their own count column; any other event name is counted as `other`."""

WINDOWS: tuple[int, ...] = (30, 90, 365)
ID_COLUMNS: tuple[str, ...] = ("customer_id", "as_of")

FEATURE_DOCS: dict[str, str] = {
    # RFM and rhythm (purchase = an order whose net amount is positive; returns are orders with a negative net)
    "n_orders": "number of purchase orders so far",
    "recency_days": "days from the last purchase to as-of",
    "tenure_days": "days from the first purchase to as-of",
    "net_spend_total": "net revenue so far (purchases minus returns)",
    "avg_order_value": "mean net value of a purchase order",
    "max_order_value": "largest purchase order",
    "gap_mean_days": "mean days between consecutive purchases",
    "gap_std_days": "standard deviation of the days between purchases",
    "recency_over_gap": "recency relative to the usual gap (above 1: overdue)",
    "orders_per_30d": "purchase rate per 30 days of tenure",
    **{f"spend_{w}d": f"net purchase value in the last {w} days" for w in WINDOWS},
    **{f"orders_{w}d": f"purchase orders in the last {w} days" for w in WINDOWS},
    "spend_trend_90d": "spend of the last 90 days over a quarter of the last 365 days (above 1: growing)",
    "days_first_to_second": "days from the first to the second purchase (empty with one order)",
    "last_gap_days": "days between the last two purchases (a long one: the customer came back after lapsing)",
    "n_return_orders": "orders with a negative net amount (returns, cancellations)",
    "return_share": "returned value over purchased value",
    # first-order traits
    "first_order_value": "value of the first purchase order",
    "first_order_lines": "lines in the first purchase order",
    "first_order_quantity": "units in the first purchase order",
    "first_order_categories": "distinct categories in the first purchase order",
    "first_order_channel": "channel of the first purchase order (categorical)",
    "first_order_margin_rate": "gross margin over revenue of the first order",
    # key performance actions
    "n_categories": "distinct categories bought (cross-sell)",
    "n_products": "distinct products bought",
    "high_margin_share": "share of revenue from high-margin lines (up-sell)",
    "margin_rate": "gross margin over revenue of all purchases",
    "app_order_share": "share of purchase orders placed in the app",
    "n_channels": "distinct channels used to buy",
    # engagement
    **{f"n_{e}": f"'{e}' events so far" for e in EVENT_TYPES},
    "n_other_events": "events of any other type so far",
    "events_first_7d": "events in the 7 days after the first purchase",
    "events_first_14d": "events in the 14 days after the first purchase",
    "events_first_30d": "events in the 30 days after the first purchase",
    "app_sessions_first_7d": "app sessions in the 7 days after the first purchase",
    "events_before_first_purchase": "events before the first purchase (all events of prospects)",
    "events_last_7d": "events in the last 7 days",
    "events_last_30d": "events in the last 30 days",
    "events_last_90d": "events in the last 90 days",
    "days_since_last_event": "days from the last event to as-of",
    "days_since_first_seen": "days from the customer's first row (transaction or event) to as-of",
    "days_since_optin": "days from the last 'newsletter_optin' event to as-of",
    "days_since_first_advocacy": "days from the first referral or review to as-of",
    # lifecycle moments (`features.lifecycle.moment_triggers`; thresholds of `FeatureParams.stage_rules`)
    "days_since_first_order": "days from the first order of any kind (a purchase, a return, a purchase since refunded "
                              "in full; not an empty order such as a free sample) to as-of",
    "days_since_loyal_order": "days from the `loyal_orders`-th purchase (the 5th) to as-of (empty with fewer)",
    "days_since_comeback": "days from the last purchase that came more than `new_days` (90) after the previous one",
    "days_in_stage": "days since the customer entered today's at_risk or lapsed stage, by time or by a full refund "
                     "(empty in other stages)",
    # lifecycle
    "lifecycle_stage": "stage as of the date, by the rules of features.lifecycle (categorical)",
}
"""Name -> description; static attributes of the customers table follow as `attr_<column>`, and with
`FeatureParams.aha_actions` the Aha-rule counts `aha_<action>_first_<d>d` (not model inputs)."""

CATEGORICAL: tuple[str, ...] = ("first_order_channel", "lifecycle_stage")
