"""Point-in-time features and labels: hand-made cases, invariance to the future, to row order and to partitioning."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labels import build_labels, rolling_cutoffs, training_frame
from features.pipeline import FeatureParams, build_features
from features.schema import parse_as_of, validate
from features.spec import FEATURE_DOCS

AS_OF = parse_as_of("2024-03-31")
AHA = FeatureParams(aha_actions=(("app_session", 7), ("purchase_categories", 3), ("return_orders", 30)))
"""Parameters that add Aha-rule count columns, so that the invariance tests cover them too."""


@pytest.fixture
def hand_made() -> dict[str, pd.DataFrame]:
    tx = pd.DataFrame([
        ["A", "2024-01-01 10:00", 10.0, "o1", "x", "app", 5.0],    # A's first order: two lines, two categories
        ["A", "2024-01-01 10:00", 20.0, "o1", "y", "app", 2.0],
        ["A", "2024-01-11 09:00", 30.0, "o2", "x", "web", 15.0],   # second purchase 10 days later, high margin
        ["A", "2024-01-15 09:00", -5.0, "r1", "x", "web", -2.5],   # a return: not a purchase
        ["A", "2024-03-31 23:00", 40.0, "o3", "z", "web", 4.0],    # last hour of the as-of day: included
        ["A", "2024-04-01 00:00", 999.0, "o4", "z", "web", 9.0],   # after as-of: excluded
        ["B", "2024-02-01 12:00", 50.0, "o5", "x", "store", 10.0], # one-order customer
        ["C", "2024-02-10 12:00", -8.0, "r2", "x", "web", -1.0],   # only a return
    ], columns=["customer_id", "timestamp", "amount", "order_id", "category", "channel", "margin"])
    ev = pd.DataFrame([
        ["A", "2024-01-02", "app_session"], ["A", "2024-01-05", "app_session"], ["A", "2024-01-20", "review"],
        ["B", "2024-01-20", "newsletter_optin"],   # before B's first purchase
        ["D", "2024-03-01", "newsletter_optin"],   # a prospect who never bought
        ["D", "2024-04-02", "app_session"],        # after as-of: excluded
    ], columns=["customer_id", "timestamp", "event"])
    return {"transactions": validate(tx, "transactions"), "events": validate(ev, "events")}


def test_features_of_hand_made_customers(hand_made):
    f = build_features(hand_made["transactions"], AS_OF, hand_made["events"]).set_index("customer_id")
    assert list(f.index) == ["A", "B", "C", "D"]
    a, b, c, d = (f.loc[k] for k in "ABCD")
    assert a["n_orders"] == 3 and a["n_return_orders"] == 1
    assert a["net_spend_total"] == pytest.approx(95.0)           # 30 + 30 - 5 + 40; the 999 is in the future
    assert a["days_first_to_second"] == pytest.approx(10 - 1 / 24)
    assert a["first_order_value"] == 30.0 and a["first_order_lines"] == 2 and a["first_order_categories"] == 2
    assert a["first_order_channel"] == "app" and a["app_order_share"] == pytest.approx(1 / 3)
    assert a["high_margin_share"] == pytest.approx(40 / 100)     # the 10.0 and 30.0 lines have margin rate >= 0.4
    assert a["recency_days"] == pytest.approx(1 / 24, abs=1e-6)
    assert a["return_share"] == pytest.approx(5 / 100)
    assert a["app_sessions_first_7d"] == 2 and a["events_first_30d"] == 3
    assert a["lifecycle_stage"] == "loyal"                       # 3 orders and a review
    assert b["n_orders"] == 1 and np.isnan(b["days_first_to_second"]) and b["events_before_first_purchase"] == 1
    assert b["lifecycle_stage"] == "new"
    assert c["n_orders"] == 0 and c["net_spend_total"] == -8.0 and c["lifecycle_stage"] == "prospect"
    assert d["n_orders"] == 0 and d["n_newsletter_optin"] == 1 and d["n_app_session"] == 0
    assert set(FEATURE_DOCS) <= set(f.columns) and len(FEATURE_DOCS) >= 30
    assert a["last_gap_days"] == pytest.approx(80 + 14 / 24)      # 2024-01-11 09:00 -> 2024-03-31 23:00
    assert a["days_since_first_advocacy"] == pytest.approx(71 + 1 - 1e-9 / 86_400, abs=1e-6)  # review 2024-01-20
    assert b["days_since_optin"] == pytest.approx(72, abs=1e-6) and np.isnan(a["days_since_optin"])
    assert b["days_since_first_seen"] == pytest.approx(72, abs=1e-6)  # the opt-in came before the first purchase
    assert c["days_since_first_seen"] == pytest.approx(50.5, abs=1e-6)  # a return is a row too
    assert c["days_since_first_order"] == pytest.approx(50.5, abs=1e-6)  # ... and an order, though no purchase
    assert not any(col.startswith("aha_") for col in f.columns)


def test_aha_rule_counts_of_hand_made_customers(hand_made):
    f = build_features(hand_made["transactions"], AS_OF, hand_made["events"], params=AHA).set_index("customer_id")
    assert f.loc["A", "aha_app_session_first_7d"] == 2                # day 1 and day 4 after the first purchase
    assert f.loc["A", "aha_purchase_categories_first_3d"] == 2        # x and y in the first order; z came later
    assert f.loc["A", "aha_return_orders_first_30d"] == 1
    assert f.loc["B", "aha_app_session_first_7d"] == 0                # an opt-in before the first purchase: no count
    assert f.loc[["C", "D"], "aha_app_session_first_7d"].isna().all()  # no purchase: unknown, not zero


def test_labels_of_hand_made_customers(hand_made):
    tx = hand_made["transactions"]
    cutoff = parse_as_of("2024-01-31")
    y = build_labels(tx, cutoff, np.array(["A", "B", "C", "D"]), horizon_days=30, value_horizon_days=60).set_index("customer_id")
    assert y["y_purchase"].tolist() == [0, 1, 0, 0]         # B buys on 02-01; A's next purchase is 03-31, after 30 days
    assert y.loc["A", "y_value"] == pytest.approx(4.0)      # margins are complete, so value = margin; 04-01 is day 61
    assert y.loc["B", "y_value"] == pytest.approx(10.0)
    assert y.loc["C", "y_value"] == 0.0                     # a return floors at 0


def test_attribute_types_are_decided_on_the_whole_customers_table(tmp_path):
    from features.schema import load

    (tmp_path / "c.csv").write_text("customer_id,zip,score\nA,02139,1.5\nB,SW1A,2\n")
    (tmp_path / "t.csv").write_text("customer_id,timestamp,amount\nA,2024-01-01,10\nB,2024-01-02,7\n")
    cu, tx = load("customers", tmp_path / "c.csv"), load("transactions", tmp_path / "t.csv")
    whole = build_features(tx, parse_as_of("2024-02-01"), customers=cu)
    one = build_features(tx.loc[tx["customer_id"] == "A"].reset_index(drop=True), parse_as_of("2024-02-01"),
                         customers=cu.loc[cu["customer_id"] == "A"].reset_index(drop=True))
    assert whole["attr_zip"].tolist() == ["02139", "SW1A"] and one["attr_zip"].tolist() == ["02139"]  # text
    assert whole["attr_score"].tolist() == [1.5, 2.0] and one["attr_score"].tolist() == [1.5]  # numbers


def test_a_return_after_the_purchase_window_does_not_undo_the_purchase_label():
    tx = validate(pd.DataFrame({"customer_id": ["A", "A", "A"], "order_id": ["o0", "o1", "o1"],
                                "timestamp": ["2023-12-01", "2024-02-01", "2024-07-20"],
                                "amount": ["10", "50", "-60"]}), "transactions")
    y = build_labels(tx, parse_as_of("2024-01-01"), np.array(["A"]), horizon_days=90, value_horizon_days=365)
    assert y["y_purchase"].tolist() == [1]  # bought on day 31; the return on day 201 is outside the 90 days
    assert y["y_value"].tolist() == [0.0]   # net value over the 365 days: 50 - 60, floored at 0


def _future_noise(tx: pd.DataFrame, cutoff: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Rows after the cutoff for existing and new customers: huge orders, returns, new categories and channels."""
    rng = np.random.default_rng(seed)
    ids = tx["customer_id"].drop_duplicates().sample(100, random_state=seed).tolist() + ["NEW1", "NEW2"]
    n = len(ids) * 3
    return pd.DataFrame({
        "customer_id": np.repeat(ids, 3),
        "timestamp": cutoff + pd.to_timedelta(rng.integers(1, 200 * 86_400, n), "s"),
        "amount": rng.choice([1e7, -5e4, 12.0], n),
        "order_id": [f"F{i}" for i in range(n)],
        "product_id": "P-future", "category": "never-seen", "quantity": 1.0, "margin": 1.0, "channel": "app",
    })


def test_rows_after_the_cutoff_change_no_feature(history):
    tx, ev, cu = history["transactions"], history["events"], history["customers"]
    cutoff = parse_as_of("2024-01-15")
    before = build_features(tx, cutoff, ev, cu, AHA)
    noisy_tx = pd.concat([tx, _future_noise(tx, cutoff, 1)], ignore_index=True)
    future_ev = ev.assign(timestamp=cutoff + pd.Timedelta(days=3))
    after = build_features(noisy_tx, cutoff, pd.concat([ev, future_ev], ignore_index=True), cu, AHA)
    assert before.filter(like="aha_").notna().any().all()
    pd.testing.assert_frame_equal(before, after)


def test_row_order_does_not_change_features(history):
    tx, ev, cu = history["transactions"], history["events"], history["customers"]
    cutoff = parse_as_of("2024-06-30")
    shuffled = build_features(tx.sample(frac=1, random_state=3), cutoff, ev.sample(frac=1, random_state=4), cu.sample(frac=1, random_state=5))
    pd.testing.assert_frame_equal(build_features(tx, cutoff, ev, cu), shuffled)


def test_any_customer_partition_gives_the_same_rows(history):
    tx, ev, cu = history["transactions"], history["events"], history["customers"]
    cutoff = parse_as_of("2024-06-30")
    full = build_features(tx, cutoff, ev, cu, AHA)
    part = np.array([hash(c) % 3 for c in full["customer_id"]])
    pieces = []
    for k in range(3):
        ids = set(full["customer_id"][part == k])
        pieces.append(build_features(tx[tx.customer_id.isin(ids)], cutoff, ev[ev.customer_id.isin(ids)],
                                     cu[cu.customer_id.isin(ids)], AHA))
    stacked = pd.concat(pieces).sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(full, stacked, check_dtype=False)


def test_no_training_label_window_crosses_as_of(history):
    tx = history["transactions"]
    as_of = parse_as_of("2024-10-31")
    cutoffs = rolling_cutoffs(tx, as_of, label_days=90, n_cutoffs=6, step_days=30)
    assert len(cutoffs) == 6 and all(c + pd.Timedelta(days=90) <= as_of for c in cutoffs)
    frame = training_frame(tx, as_of, 90, 60, history["events"], history["customers"], progress=lambda x, **k: x)
    assert frame["as_of"].max() + pd.Timedelta(days=90) <= as_of
    # the labels do not change when everything after as-of is replaced by noise
    noisy = pd.concat([tx, _future_noise(tx, as_of, 2)], ignore_index=True)
    again = training_frame(noisy, as_of, 90, 60, history["events"], history["customers"], progress=lambda x, **k: x)
    pd.testing.assert_frame_equal(frame, again)


def test_too_short_history_is_a_clear_error(history):
    from features.errors import InputError
    with pytest.raises(InputError, match="too short"):
        training_frame(history["transactions"], parse_as_of("2023-03-01"), 90, 365, progress=lambda x, **k: x)
