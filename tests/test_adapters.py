"""Adapters for the public data sets, checked on the small samples in tests/data (see tests/data/SOURCE.md)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.adapters import ADAPTERS, adapt
from features.schema import SCHEMAS, validate

DATA = Path(__file__).parent / "data"
OR_II = DATA / "online_retail_ii_sample.csv"
OR_OLD = DATA / "online_retail_sample.csv"
HILLSTROM = DATA / "hillstrom_sample.csv"
CJ = DATA / "complete_journey_sample"
DROPPED = {"BANK CHARGES", "AMAZONFEE", "B", "ADJUST", "ADJUST2", "CRUK", "S", "TEST001", "TEST002"}
DTYPES = {"customer_id": "str", "timestamp": "datetime64[ns]", "amount": "float64", "order_id": "str",
          "product_id": "str", "category": "str", "quantity": "float64", "margin": "float64", "channel": "str",
          "event": "str", "value": "float64", "campaign": "str", "treated": "bool", "cost": "float64"}


@pytest.fixture(scope="module")
def retail() -> dict[str, pd.DataFrame]:
    return adapt("online_retail", OR_II)


@pytest.fixture(scope="module")
def raw_retail() -> pd.DataFrame:
    return pd.read_csv(OR_II, dtype={"Invoice": str, "StockCode": str, "Customer ID": str})


@pytest.fixture(scope="module")
def hill() -> dict[str, pd.DataFrame]:
    return adapt("hillstrom", HILLSTROM)


@pytest.fixture(scope="module")
def journey() -> dict[str, pd.DataFrame]:
    return adapt("complete_journey", CJ)


def assert_canonical(tables: dict[str, pd.DataFrame]) -> None:
    """Every table has its required columns, canonical names and dtypes, and passes the schema validation."""
    for kind, df in tables.items():
        schema = SCHEMAS[kind]
        assert set(schema.required) <= set(df.columns), kind
        if not schema.keep_extra:
            assert set(df.columns) <= set(schema.required) | set(schema.optional), kind
        for col in df.columns:
            if col in DTYPES and (col in schema.required or col in schema.optional):
                assert str(df[col].dtype) == DTYPES[col], (kind, col, df[col].dtype)
        assert len(validate(df, kind)) > 0


def test_registry_names_the_three_sources():
    assert set(ADAPTERS) == {"online_retail", "hillstrom", "complete_journey"}


def test_online_retail_gives_canonical_tables(retail):
    assert set(retail) == {"transactions", "customers"}
    assert_canonical(retail)
    tx = retail["transactions"]
    assert (tx["channel"] == "web").all()
    assert not tx["customer_id"].str.endswith(".0").any()
    assert tx["category"].notna().all() and tx["category"].nunique() > 5


def test_online_retail_order_count_per_customer_equals_distinct_invoices(retail, raw_retail):
    raw = raw_retail[raw_retail["Customer ID"].notna() & ~raw_retail["StockCode"].str.upper().isin(DROPPED)]
    expected = raw.groupby(raw["Customer ID"].str.replace(".0", "", regex=False))["Invoice"].nunique().sort_index()
    got = retail["transactions"].groupby("customer_id")["order_id"].nunique().sort_index()
    assert got.to_dict() == expected.to_dict()
    assert len(got) == 134  # 144 customers in the sample; 10 have only ADJUST or BANK CHARGES lines


def test_online_retail_amount_is_quantity_times_price_and_cancellations_are_negative(retail, raw_retail):
    tx = retail["transactions"]
    cancelled = tx["order_id"].str.startswith("C")
    assert cancelled.sum() > 100
    assert (tx.loc[cancelled, "amount"] <= 0).all() and (tx.loc[cancelled, "amount"] < 0).any()
    raw = raw_retail[raw_retail["Customer ID"].notna() & ~raw_retail["StockCode"].str.upper().isin(DROPPED)]
    assert tx["amount"].sum() == pytest.approx((raw["Quantity"] * raw["Price"]).sum())


def test_online_retail_drops_rows_without_customer_and_bookkeeping_codes(retail, raw_retail):
    tx = retail["transactions"]
    assert raw_retail["Customer ID"].isna().sum() == 50
    assert not tx["product_id"].isin(DROPPED).any()
    assert (raw_retail["StockCode"] == "BANK CHARGES").any()
    assert {"POST", "D", "M"} <= set(tx["product_id"])  # postage revenue, discounts, manual lines stay
    assert (tx.loc[tx["product_id"] == "D", "amount"] < 0).all()
    assert set(tx.loc[tx["product_id"] == "POST", "category"]) == {"postage"}
    assert len(tx) == (raw_retail["Customer ID"].notna() & ~raw_retail["StockCode"].isin(DROPPED)).sum()


def test_online_retail_customers_get_their_most_frequent_country(retail, raw_retail):
    customers = retail["customers"]
    assert customers["customer_id"].is_unique
    assert set(customers["customer_id"]) == set(retail["transactions"]["customer_id"])
    raw = raw_retail.dropna(subset=["Customer ID"])
    one = customers["customer_id"].iloc[0]
    assert customers["country"].iloc[0] == raw.loc[raw["Customer ID"] == f"{one}.0", "Country"].mode().iloc[0]


def test_online_retail_both_spellings_and_date_formats_give_identical_frames(retail, tmp_path):
    old = adapt("online_retail", OR_OLD)
    for kind in retail:
        assert_frame_equal(old[kind], retail[kind])
    (tmp_path / "SOURCE.txt").write_text("not data")
    shutil.copy(OR_OLD, tmp_path / "retail.csv")
    assert_frame_equal(adapt("online_retail", tmp_path)["transactions"], retail["transactions"])  # a directory


def test_online_retail_reads_parquet_with_float_customer_ids(retail, raw_retail, tmp_path):
    raw = raw_retail.assign(**{"Customer ID": raw_retail["Customer ID"].astype(float)})
    raw.to_parquet(tmp_path / "retail.parquet")
    assert_frame_equal(adapt("online_retail", tmp_path / "retail.parquet")["transactions"], retail["transactions"])


def test_hillstrom_gives_customers_nudges_and_reconstructed_purchases(hill):
    assert set(hill) == {"transactions", "nudges", "customers"}
    assert_canonical(hill)
    customers, nudges = hill["customers"], hill["nudges"]
    assert customers["customer_id"].iloc[0] == "H00001" and customers["customer_id"].is_unique
    assert "purchase_channel" in customers and "channel" not in customers
    assert (nudges["campaign"] == "hillstrom_email").all() and (nudges["channel"] == "email").all()
    assert nudges["cost"].isna().all() and (nudges["timestamp"] == pd.Timestamp("2008-03-01")).all()


def test_hillstrom_treated_share_and_conversions_equal_direct_counts(hill):
    raw = pd.read_csv(HILLSTROM)
    nudges, tx = hill["nudges"], hill["transactions"]
    assert len(nudges) == len(raw) == 2000
    assert nudges["treated"].sum() == (raw["segment"] != "No E-Mail").sum()
    assert nudges["arm"].value_counts().to_dict() == raw["segment"].map(
        {"Mens E-Mail": "mens", "Womens E-Mail": "womens", "No E-Mail": "none"}).value_counts().to_dict()
    assert nudges["conversion"].sum() == raw["conversion"].sum() == len(tx)
    assert tx["amount"].sum() == pytest.approx(raw["spend"].sum())
    assert (tx["timestamp"] == pd.Timestamp("2008-03-08")).all()
    assert set(tx["customer_id"]) == set(nudges.loc[nudges["conversion"] == 1, "customer_id"])


def test_complete_journey_gives_canonical_tables(journey):
    assert set(journey) == {"transactions", "nudges", "events", "customers"}
    assert_canonical(journey)
    assert (journey["transactions"]["channel"] == "store").all()
    assert journey["nudges"]["treated"].all() and journey["nudges"]["campaign"].str.startswith("campaign_").all()


def test_complete_journey_basket_counts_and_departments_equal_direct_counts(journey):
    raw = pd.read_csv(CJ / "transactions_sample.csv.gz", dtype=str)
    products = pd.read_csv(CJ / "products.csv.gz", dtype=str)
    tx = journey["transactions"]
    expected = raw.groupby("household_id")["basket_id"].nunique().sort_index()
    assert tx.groupby("customer_id")["order_id"].nunique().sort_index().to_dict() == expected.to_dict()
    assert tx["amount"].sum() == pytest.approx(raw["sales_value"].astype(float).sum())
    department = raw["product_id"].map(products.set_index("product_id")["department"]).fillna("UNKNOWN")
    assert tx["category"].tolist() == department.tolist()
    assert tx["category"].isin(["GROCERY", "PRODUCE"]).any()


def test_complete_journey_nudges_events_and_customers_match_the_raw_files(journey):
    campaigns = pd.read_csv(CJ / "campaigns.csv.gz", dtype=str)
    redemptions = pd.read_csv(CJ / "coupon_redemptions.csv.gz", dtype=str)
    demographics = pd.read_csv(CJ / "demographics.csv.gz", dtype=str)
    nudges, events = journey["nudges"], journey["events"]
    assert len(nudges) == len(campaigns.drop_duplicates())
    assert set(nudges["channel"]) <= {"Type A", "Type B", "Type C"}
    assert events["value"].sum() == len(redemptions) and (events["event"] == "coupon_redemption").all()
    assert sorted(journey["customers"]["customer_id"]) == sorted(demographics["household_id"])


@pytest.mark.parametrize("source, path, missing", [
    ("online_retail", HILLSTROM, "Invoice"),
    ("hillstrom", OR_II, "recency"),
    ("complete_journey", HILLSTROM, "transactions"),
])
def test_wrong_file_gives_value_error_naming_the_missing_columns(source, path, missing):
    with pytest.raises(ValueError, match=missing) as info:
        adapt(source, path)
    assert str(path.name) in str(info.value) and "\n" not in str(info.value)


def test_complete_journey_transactions_without_needed_columns_name_them(tmp_path):
    pd.DataFrame({"household_id": ["1"], "basket_id": ["2"]}).to_csv(tmp_path / "transactions.csv", index=False)
    with pytest.raises(ValueError, match=r"transactions\.csv.*product_id, quantity, sales_value"):
        adapt("complete_journey", tmp_path)


def test_unknown_source_is_a_value_error():
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        adapt("nope", OR_II)


def test_float_looking_ids_lose_their_decimal_part(tmp_path):
    shutil.copytree(CJ, tmp_path / "cj")
    raw = pd.read_csv(CJ / "transactions_sample.csv.gz", dtype=str)
    raw.loc[0, "basket_id"] = "4.0128e+10"  # as found once in the published sample
    raw.loc[1, "household_id"] = raw.loc[1, "household_id"] + ".0"
    raw.to_csv(tmp_path / "cj" / "transactions_sample.csv.gz", index=False)
    tx = adapt("complete_journey", tmp_path / "cj")["transactions"]
    assert tx.loc[0, "order_id"] == "40128000000"
    assert tx.loc[1, "customer_id"] == raw.loc[1, "household_id"][:-2]


def test_non_numeric_quantity_or_price_names_the_file_column_and_row(tmp_path):
    raw = pd.read_csv(OR_II, dtype=str)
    row = int(raw["Customer ID"].notna().to_numpy().argmax())  # a row that is kept: it has a customer id
    raw.loc[row, "Quantity"] = "abc"
    raw.to_csv(tmp_path / "or.csv", index=False)
    with pytest.raises(ValueError, match=rf"or\.csv: column 'Quantity' is not a number in 1 of .* row {row + 1} \('abc'\)"):
        adapt("online_retail", tmp_path / "or.csv")
    shutil.copytree(CJ, tmp_path / "cj")
    tx = pd.read_csv(CJ / "transactions_sample.csv.gz", dtype=str)
    tx.loc[0, "sales_value"], tx.loc[1, "quantity"] = "n/a", "12 units"
    tx.to_csv(tmp_path / "cj" / "transactions_sample.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"column 'sales_value' is not a number in 1 of .* row 1 \(empty\)"):
        adapt("complete_journey", tmp_path / "cj")
    tx.loc[0, "sales_value"] = "1.5"
    tx.to_csv(tmp_path / "cj" / "transactions_sample.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"column 'quantity' is not a number in 1 of .* row 2 \('12 units'\)"):
        adapt("complete_journey", tmp_path / "cj")
