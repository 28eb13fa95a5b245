"""Validated text as sorted categoricals, and the code paths that use the codes instead of the strings."""
from __future__ import annotations

import numpy as np
import pandas as pd

from features.io import read_table
from features.pipeline import _group_min, _sorted_orders, build_features, customer_codes, order_table
from features.schema import load, parse_as_of, text_columns, validate

AS_OF = parse_as_of("2024-03-31")


def _lines(**cols) -> pd.DataFrame:
    base = {"customer_id": [" B", "A", "B "], "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "amount": ["1", "2", "3"], "order_id": ["o2", "o1", "o3"], "channel": ["web", None, "app"]}
    base.update(cols)
    return pd.DataFrame(base)


def test_ids_and_text_become_sorted_categoricals():
    tx = validate(_lines(), "transactions")
    assert tx["customer_id"].tolist() == ["B", "A", "B"]  # stripped, and " B" and "B " are one id
    for col in ("customer_id", "order_id", "channel"):
        cats = tx[col].cat.categories
        assert isinstance(tx[col].dtype, pd.CategoricalDtype) and cats.is_monotonic_increasing and cats.is_unique
    assert tx["channel"].isna().tolist() == [False, True, False]


def test_an_order_id_shared_by_two_customers_is_two_orders():
    tx = validate(_lines(order_id=["o1", "o1", "o1"]), "transactions")
    orders, line_order = order_table(tx, np.array([1, 0, 1]))
    assert orders["cust"].tolist() == [0, 1] and orders["lines"].tolist() == [1, 2]
    assert line_order.tolist() == [1, 0, 1]


def test_lines_without_order_id_group_by_customer_and_timestamp():
    tx = validate(_lines(customer_id=["B", "A", "B", "B"], order_id=[None, "o1", None, None],
                         timestamp=["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-03"],
                         amount=["1", "2", "3", "4"], channel=["web", None, "app", "app"]), "transactions")
    orders, _ = order_table(tx, np.array([1, 0, 1, 1]))
    assert orders["cust"].tolist() == [0, 1, 1] and orders["lines"].tolist() == [1, 1, 2]
    assert orders["amount"].tolist() == [2.0, 1.0, 7.0]


def test_a_full_refund_on_the_order_nets_to_zero_not_to_a_rounding_residue():
    """0.1 + 0.2 - 0.3 is 5.6e-17 in floating point: without settling the refunded order would stay a purchase
    (a first purchase in the features, a purchase label, an Aha cohort member)."""
    tx = validate(_lines(customer_id=["A", "A", "A"], order_id=["o1", "o1", "o1"],
                         timestamp=["2024-01-01", "2024-01-01", "2024-01-05"], amount=["0.1", "0.2", "-0.3"],
                         channel=["web", "web", "web"]), "transactions")
    orders, _ = order_table(tx, np.zeros(3, np.int64))
    assert orders["amount"].tolist() == [0.0]
    big = validate(_lines(customer_id=["A"] * 4, order_id=["o1"] * 4, timestamp=["2024-01-01"] * 4,
                          amount=["2768912.04", "1606520.09", "9699254.13", "-14074686.26"],  # nets +1.9e-9
                          channel=["web"] * 4), "transactions")
    assert order_table(big, np.zeros(4, np.int64))[0]["amount"].tolist() == [0.0]  # in any currency's magnitude
    feats = build_features(tx, AS_OF)
    assert feats["n_orders"].tolist() == [0.0] and feats["lifecycle_stage"].tolist() == ["prospect"]


def test_an_order_channel_is_its_lines_first_channel_even_if_one_line_has_none():
    tx = validate(_lines(customer_id=["A", "A", "B"], order_id=["o1", "o1", "o2"], channel=["app", None, None]),
                  "transactions")
    feats = build_features(tx, AS_OF).set_index("customer_id")
    assert feats.loc["A", "first_order_channel"] == "app" and feats.loc["A", "app_order_share"] == 1.0
    assert feats.loc["B", "first_order_channel"] == "" and feats.loc["B", "app_order_share"] == 0.0


def test_features_equal_for_categorical_and_plain_text_inputs():
    tx = validate(_lines(), "transactions")
    plain = tx.assign(**{c: tx[c].astype("str").where(tx[c].notna(), None) for c in ("customer_id", "order_id", "channel")})
    pd.testing.assert_frame_equal(build_features(tx, AS_OF), build_features(plain, AS_OF))


def test_parquet_dictionaries_and_strings_validate_alike(tmp_path):
    df = validate(_lines(), "transactions")
    df.astype({c: "str" for c in text_columns("transactions") if c in df.columns}).to_parquet(tmp_path / "t.parquet")
    read = read_table(tmp_path / "t.parquet", text_columns("transactions"))
    assert isinstance(read["channel"].dtype, pd.CategoricalDtype)  # few values: read from the dictionary
    pd.testing.assert_frame_equal(load("transactions", tmp_path / "t.parquet"), df)


def test_duplicates_are_exact_among_hash_candidates():
    rows = _lines(customer_id=["A", "A", "A"], order_id=["o1", "o1", "o1"], timestamp=["2024-01-01"] * 3,
                  amount=["1", "1", "1"], channel=["web", "web", "app"])
    out = validate(rows, "transactions")
    assert out["channel"].tolist() == ["web", "app"]


def test_fast_grouping_helpers_agree_with_the_plain_numpy_forms():
    """The packed-key sort and the write-then-fold group minimum, on data made to collide: customers with many
    orders at equal and nearly equal times (closer than the packing keeps), and tiny to huge time ranges."""
    rng = np.random.default_rng(7)
    for span in (10**3, 10**9, 10**15, 2 * 10**18, 18 * 10**18):  # the last: more than int64 holds as a difference
        n = 5_000
        cust = rng.integers(0, 300, n)
        ts = rng.integers(-(span // 2), span // 2, n)
        ts[1::7] = ts[::7][: len(ts[1::7])]  # equal times
        ts[::11] += 1  # 1 ns apart: collide in any packing coarser than a nanosecond
        key = rng.permutation(n)
        assert (_sorted_orders(cust, ts, key) == np.lexsort((key, ts, cust))).all()
        groups = rng.integers(0, 400, n)
        groups[:400] = np.arange(400)  # every group has a row
        expect = pd.Series(ts).groupby(groups).min().to_numpy()
        assert (_group_min(ts, groups, 400) == expect).all()
    customers, _ = customer_codes(pd.Series(["b", "a", None, "é", "a"]), pd.Series([], dtype=object),
                                  pd.Series(["c", "b"], dtype="category"))
    assert customers.tolist() == ["a", "b", "c", "é"]


def test_customers_without_transactions_get_rows_from_an_empty_text_typed_transactions_frame():
    """The Spark engine (a partition with only events or customers rows) and the service (a raw item without
    purchases) hand the builder empty transactions whose id column is pandas text: each customer still gets a row."""
    tx = pd.DataFrame({"customer_id": pd.Series([], dtype="str"), "timestamp": pd.Series([], dtype="datetime64[ns]"),
                       "amount": pd.Series([], dtype=float)})
    ev = validate(pd.DataFrame({"customer_id": ["e-1"], "timestamp": ["2024-03-01"], "event": ["newsletter_optin"]}),
                  "events")
    cu = validate(pd.DataFrame({"customer_id": ["c-1"], "segment": ["b2c"]}), "customers")
    feats = build_features(tx, AS_OF, ev, cu)
    assert feats["customer_id"].tolist() == ["c-1", "e-1"]
    assert feats["n_orders"].tolist() == [0.0, 0.0] and feats["lifecycle_stage"].tolist() == ["prospect", "prospect"]
    assert feats["attr_segment"].iloc[0] == "b2c" and pd.isna(feats["attr_segment"].iloc[1])
