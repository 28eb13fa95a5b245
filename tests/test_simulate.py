"""The demo world: reproducible, in the canonical schema, with its planted ground truth recoverable from the data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.schema import validate
from features.simulate import World, simulate_world, summary, write_world

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def world() -> World:
    return simulate_world(n_customers=4_000, seed=7)


@pytest.fixture(scope="module")
def big_world() -> World:
    """Large enough for per-segment uplift and the Aha jump (about a second to simulate)."""
    return simulate_world(n_customers=40_000, seed=11)


def _sales_orders(tx: pd.DataFrame) -> pd.DataFrame:
    """One row per (non-return) order: customer_id, timestamp, order rank per customer (0 = first)."""
    orders = tx[tx["amount"] > 0].drop_duplicates("order_id")[["customer_id", "order_id", "timestamp"]]
    orders = orders.sort_values(["customer_id", "timestamp"], kind="stable")
    return orders.assign(rank=orders.groupby("customer_id").cumcount())


def _purchase_within(tx: pd.DataFrame, nudges: pd.DataFrame, days: int) -> np.ndarray:
    """For each nudge: does its customer buy (positive amount) in (timestamp, timestamp + days]?"""
    sales = tx[tx["amount"] > 0]
    codes, _ = pd.factorize(pd.concat([sales["customer_id"], nudges["customer_id"]], ignore_index=True))
    secs = 10**10  # seconds since the epoch stay below this
    s_key = np.sort(codes[: len(sales)] * secs + sales["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64))
    n_key = codes[len(sales):] * secs + nudges["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64)
    return np.searchsorted(s_key, n_key + days * 86_400, side="right") > np.searchsorted(s_key, n_key, side="right")


def _repeat_by_sessions(w: World, end: str = "2025-06-30") -> pd.DataFrame:
    """Per buyer (first order by `end`): app sessions within 7 days after the first order, and any second order."""
    orders = _sales_orders(w.transactions)
    first = orders[orders["rank"] == 0].set_index("customer_id")["timestamp"]
    first = first[first <= pd.Timestamp(end)]
    repeat = orders[orders["rank"] == 1].set_index("customer_id")["timestamp"].reindex(first.index).notna()
    ev = w.events[w.events["event"] == "app_session"].merge(first.rename("first"), left_on="customer_id",
                                                            right_index=True)
    in_window = (ev["timestamp"] > ev["first"]) & (ev["timestamp"] <= ev["first"] + pd.Timedelta(days=7))
    sessions = ev[in_window].groupby("customer_id").size().reindex(first.index, fill_value=0)
    return pd.DataFrame({"sessions": sessions, "repeat": repeat})


def test_same_seed_gives_identical_frames_and_other_seeds_differ():
    a, b = simulate_world(2_000, seed=3), simulate_world(2_000, seed=3)
    for name in ("transactions", "events", "nudges", "customers", "truth"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = simulate_world(2_000, seed=4)
    assert not a.transactions["amount"].equals(c.transactions["amount"])
    assert not a.truth["purchase_rate"].equals(c.truth["purchase_rate"])


def test_frames_follow_the_canonical_schema_and_dtypes(world):
    expected = {
        "transactions": {"customer_id": "str", "timestamp": "datetime64[ns]", "amount": "float64", "order_id": "str",
                         "product_id": "str", "category": "str", "quantity": "float64", "margin": "float64",
                         "channel": "str"},
        "events": {"customer_id": "str", "timestamp": "datetime64[ns]", "event": "str", "value": "float64"},
        "nudges": {"customer_id": "str", "timestamp": "datetime64[ns]", "campaign": "str", "channel": "str",
                   "treated": "bool", "cost": "float64"},
        "customers": {"customer_id": "str", "signup_date": "datetime64[ns]", "segment": "str", "region": "str",
                      "age_band": "str"},
    }
    for name, cols in expected.items():
        df = getattr(world, name)
        assert {c: str(t) for c, t in df.dtypes.items()} == cols, name
        assert df.notna().all().all(), name
        validated = validate(df, name)  # the pipeline's own validation accepts it unchanged (up to duplicates)
        assert list(validated.columns) == list(df.columns)
    assert world.transactions["customer_id"].str.fullmatch(r"C\d{7}").all()
    assert world.customers["customer_id"].is_unique and len(world.customers) == 4_000
    truth_cols = {"customer_id", "segment", "purchase_rate", "dropout_prob", "first_basket_premium", "aha_reached",
                  "true_uplift"}
    assert truth_cols <= set(world.truth.columns)
    assert world.truth["customer_id"].equals(world.customers["customer_id"])
    assert set(world.events["event"]) == {"app_session", "newsletter_optin", "email_open", "feedback", "review",
                                          "referral", "support_ticket", "survey"}
    assert world.transactions["timestamp"].is_monotonic_increasing
    assert world.transactions["timestamp"].max() < pd.Timestamp("2026-01-01")


def test_orders_have_one_customer_and_time_and_distinct_products(world):
    sales = world.transactions[world.transactions["amount"] > 0].drop_duplicates()
    per_order = sales.groupby("order_id").agg(customers=("customer_id", "nunique"), times=("timestamp", "nunique"),
                                              lines=("product_id", "size"), products=("product_id", "nunique"))
    assert (per_order["customers"] == 1).all() and (per_order["times"] == 1).all()
    assert (per_order["lines"] == per_order["products"]).all() and per_order["lines"].between(1, 6).all()
    assert sales["quantity"].isin([1.0, 2.0, 3.0]).all()
    assert (sales["margin"] > 0).all() and (sales["margin"] < sales["amount"]).all()
    assert set(sales["channel"]) == {"web", "app", "store"} and sales["category"].nunique() == 8
    assert 150 <= sales["product_id"].nunique() <= 200


def test_returns_are_negative_later_rows_of_a_bought_line(world):
    tx = world.transactions.drop_duplicates()
    returns = tx[tx["order_id"].str.startswith("R")]
    assert (returns["amount"] < 0).all() and (returns["margin"] < 0).all()
    assert ((tx["amount"] < 0) == tx["order_id"].str.startswith("R")).all()
    assert 0.03 < len(returns) / len(tx) < 0.05
    bought = tx.assign(key=tx["order_id"].str.slice(1))
    matched = returns.assign(key=returns["order_id"].str.slice(1)).merge(
        bought[bought["order_id"].str.startswith("O")], on=["key", "customer_id", "product_id", "quantity"])
    assert len(matched) == len(returns)
    assert np.allclose(matched["amount_x"], -matched["amount_y"])
    delay = (matched["timestamp_x"] - matched["timestamp_y"]).dt.total_seconds() / 86_400
    assert delay.between(3 - 1e-4, 20 + 1e-4).all()


def test_exact_duplicate_rows_exist_at_about_half_a_percent(world):
    share = world.transactions.duplicated().mean()
    assert 0.003 < share < 0.008


def test_about_twenty_lines_per_customer_and_a_quarter_prospects(world):
    s = summary(world)
    assert 15 <= s["lines_per_customer"] <= 25
    assert 0.6 < s["buyers"] / s["customers"] < 0.8
    assert 0 < s["second_within_10d"] < s["second_within_30d"] < s["second_within_90d"] < 1
    assert 0.3 < s["second_purchase_share"] < 0.85
    optin = world.events[world.events["event"] == "newsletter_optin"]["customer_id"].nunique()
    assert 0.55 < optin / len(world.customers) < 0.65


def test_some_events_come_before_the_first_purchase_and_signups_grow(world):
    first = _sales_orders(world.transactions).query("rank == 0").set_index("customer_id")["timestamp"]
    ev = world.events.merge(first.rename("first"), left_on="customer_id", right_index=True)
    assert (ev["timestamp"] < ev["first"]).mean() > 0.02
    signup = world.customers["signup_date"]
    assert (signup >= "2024-07-01").mean() > 0.55
    gap = (first - world.customers.set_index("customer_id")["signup_date"].reindex(first.index)).dt.days
    assert gap.between(0, 60).all()


def test_seasonality_peaks_in_december_and_dips_in_summer(world):
    orders = _sales_orders(world.transactions)
    per_month = orders[orders["timestamp"].dt.year == 2024].groupby(orders["timestamp"].dt.month).size()
    assert per_month[12] / 31 > 1.4 * per_month[7] / 31


def test_truth_first_basket_premium_matches_the_first_order(world):
    tx = world.transactions[world.transactions["amount"] > 0]
    orders = _sales_orders(world.transactions)
    first_ids = orders[orders["rank"] == 0]["order_id"]
    has_premium = tx[tx["order_id"].isin(first_ids) & (tx["category"] == "premium")]["customer_id"].unique()
    truth = world.truth.set_index("customer_id")
    buyers = orders[orders["rank"] == 0]["customer_id"]
    assert set(has_premium) == set(truth.index[truth["first_basket_premium"]]) & set(buyers)
    assert not truth.loc[~truth.index.isin(buyers), "first_basket_premium"].any()


def test_planted_aha_is_three_app_sessions_within_seven_days(big_world):
    df = _repeat_by_sessions(big_world)
    truth = big_world.truth.set_index("customer_id").loc[df.index]
    assert (df["sessions"] == truth["app_sessions_7d"]).all()  # the data shows exactly the planted counts
    assert ((df["sessions"] >= 3) == truth["aha_reached"]).all()
    assert df["sessions"].value_counts().reindex(range(6)).min() > 0.04 * len(df)  # a wide spread of 0..5
    rate = df.groupby(df["sessions"].clip(upper=5))["repeat"].mean()
    assert df.loc[truth["aha_reached"], "repeat"].mean() > df.loc[~truth["aha_reached"], "repeat"].mean() + 0.15
    jump = rate[3] - rate[2]
    assert jump > 0.15
    assert jump > 3 * abs(rate[2] - rate[1]) and jump > 3 * abs(rate[4] - rate[3])


def test_nudges_are_randomised_and_uplift_matches_the_truth_per_segment(big_world):
    nudges = big_world.nudges
    assert 0.77 < nudges["treated"].mean() < 0.83
    assert dict(nudges.groupby("channel")["cost"].first()) == {"email": 0.1, "postcard": 1.0, "push": 0.05}
    assert set(nudges["campaign"]) == {"winback", "second_purchase", "newsletter"}
    first = _sales_orders(big_world.transactions).query("rank == 0").set_index("customer_id")["timestamp"]
    assert (nudges["timestamp"].to_numpy() > first.reindex(nudges["customer_id"]).to_numpy()).all()
    bought = _purchase_within(big_world.transactions, nudges, 14)
    truth = big_world.truth.set_index("customer_id")
    seg = truth["segment"].reindex(nudges["customer_id"]).to_numpy()
    rates = pd.DataFrame({"seg": seg, "treated": nudges["treated"].to_numpy(), "bought": bought})
    rates = rates.groupby(["seg", "treated"])["bought"].mean().unstack()
    uplift = rates[True] - rates[False]
    expected = truth.groupby("segment")["true_uplift"].first()
    assert expected.to_dict() == pytest.approx({"deal_seeker": 0.12, "casual": 0.05, "loyalist": 0.01})
    assert (uplift - expected).abs().max() < 0.03, uplift
    assert uplift["deal_seeker"] > uplift["casual"] + 0.03 and uplift["deal_seeker"] > uplift["loyalist"] + 0.05


def test_write_world_writes_every_table_atomically(world, tmp_path):
    small = World(*(getattr(world, n).head(500) for n in ("transactions", "events", "nudges", "customers", "truth")))
    for fmt in ("parquet", "csv"):
        paths = write_world(small, tmp_path / fmt, fmt=fmt)
        assert sorted(paths) == ["customers", "events", "nudges", "transactions", "truth"]
        assert all(p.suffix == f".{fmt}" and p.exists() for p in paths.values())
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(p.name for p in paths.values())
    back = pd.read_parquet(tmp_path / "parquet" / "transactions.parquet")
    pd.testing.assert_frame_equal(back, small.transactions, check_dtype=False)
    with pytest.raises(ValueError, match="fmt"):
        write_world(small, tmp_path, fmt="xlsx")


def test_an_interrupted_world_has_no_transactions_file(world, tmp_path, monkeypatch):
    """transactions.parquet is what `make demo` takes as "the world exists": it is written last."""
    import features.simulate

    small = World(*(getattr(world, n).head(50) for n in ("transactions", "events", "nudges", "customers", "truth")))
    real = features.simulate.write_parquet

    def killed_at_truth(df, path):
        if Path(path).stem == "truth":
            raise KeyboardInterrupt
        return real(df, path)

    monkeypatch.setattr(features.simulate, "write_parquet", killed_at_truth)
    with pytest.raises(KeyboardInterrupt):
        write_world(small, tmp_path)
    assert not (tmp_path / "transactions.parquet").exists()


@pytest.mark.parametrize("n", [1, 2])
def test_a_world_of_one_or_two_customers_is_summarised(n):
    """`features simulate --customers 1` wrote its five files and then failed with a traceback in the summary."""
    counts = summary(simulate_world(n_customers=n, seed=1))
    assert counts["customers"] == n and 0 <= counts["buyers"] <= n and counts["orders"] >= counts["buyers"]
