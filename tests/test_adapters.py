"""Adapters for the public data sets, checked on the small samples in tests/data (see tests/data/SOURCE.md)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.__main__ import main
from features.adapters import ADAPTERS, adapt
from features.errors import InputError, run_cli
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
    with pytest.raises(ValueError, match=rf"or\.csv: column 'Quantity' is not a number .* in 1 of .* row {row + 1} \('abc'\)"):
        adapt("online_retail", tmp_path / "or.csv")
    shutil.copytree(CJ, tmp_path / "cj")
    tx = pd.read_csv(CJ / "transactions_sample.csv.gz", dtype=str)
    tx.loc[0, "sales_value"], tx.loc[1, "quantity"] = "n/a", "12 units"
    tx.to_csv(tmp_path / "cj" / "transactions_sample.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"column 'sales_value' is not a number .* in 1 of .* row 1 \(empty\)"):
        adapt("complete_journey", tmp_path / "cj")
    tx.loc[0, "sales_value"] = "1.5"
    tx.to_csv(tmp_path / "cj" / "transactions_sample.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"column 'quantity' is not a number .* in 1 of .* row 2 \('12 units'\)"):
        adapt("complete_journey", tmp_path / "cj")


def _retail_rows(tmp_path: Path, n: int = 6, **changes: object) -> Path:
    """The first `n` rows of the Online Retail II sample (all with a customer id) with columns replaced, as a CSV."""
    raw = pd.read_csv(OR_II, dtype=str).dropna(subset=["Customer ID"]).head(n).reset_index(drop=True)
    for col, values in changes.items():
        raw[col] = values
    raw.to_csv(tmp_path / "or.csv", index=False)
    return tmp_path / "or.csv"


def test_online_retail_dates_with_offsets_are_naive_utc(tmp_path):
    dates = ["2009-12-01 07:45:00Z", "2009-12-01 07:45:00+02:00", "2009-12-01T07:45:00-05:00",
             "2009-12-01 07:45:00", "12/1/2009 7:45", "2009-12-01"]
    tx = adapt("online_retail", _retail_rows(tmp_path, InvoiceDate=dates))["transactions"]
    assert tx["timestamp"].dtype == "datetime64[ns]"
    assert tx["timestamp"].tolist() == [pd.Timestamp(t) for t in ("2009-12-01 07:45", "2009-12-01 05:45",
                                        "2009-12-01 12:45", "2009-12-01 07:45", "2009-12-01 07:45", "2009-12-01")]
    aware = pd.read_csv(tmp_path / "or.csv", dtype=str).assign(
        InvoiceDate=pd.Series(pd.to_datetime(dates[:1] * 6, utc=True)).dt.tz_convert("Europe/Berlin"))
    aware.to_parquet(tmp_path / "or.parquet")
    assert (adapt("online_retail", tmp_path / "or.parquet")["transactions"]["timestamp"]
            == pd.Timestamp("2009-12-01 07:45")).all()


@pytest.mark.parametrize("value, problem", [
    ("9999-12-31", r"is not an ISO 8601 .* in the years 1678-2261 in 1 of 6 rows: row 3 \('9999-12-31'\)"),
    ("2009-13-45 25:00", r"is not an ISO 8601 .* in 1 of 6 rows: row 3 \('2009-13-45 25:00'\)"),
    ("", r"is empty in 1 of 6 rows: row 3 \(empty\)"),
])
def test_online_retail_bad_dates_name_the_file_column_and_rows(tmp_path, value, problem):
    dates = ["2009-12-01 07:45:00"] * 6
    dates[2] = value
    with pytest.raises(InputError, match=rf"or\.csv: column 'InvoiceDate' {problem}$"):
        adapt("online_retail", _retail_rows(tmp_path, InvoiceDate=dates))


def test_online_retail_without_any_customer_id_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"or\.csv: column 'Customer ID' is empty in all 6 rows"):
        adapt("online_retail", _retail_rows(tmp_path, **{"Customer ID": [None] * 6}))
    with pytest.raises(InputError, match=r"or\.csv: every row with a customer id has a bookkeeping StockCode"):
        adapt("online_retail", _retail_rows(tmp_path, StockCode=["BANK CHARGES"] * 6))


@pytest.mark.parametrize("changes, problem", [
    ({"Price": ["1.0", "inf", "1.0", "1.0", "1.0", "-inf"]},
     r"column 'Price' is not a number \(finite, below 1e15 in size\) in 2 of 6 rows: row 2 \(inf\), row 6 \(-inf\)"),
    ({"Quantity": ["1", "1", "1", "1", "1", "1e300"]}, r"column 'Quantity' is not a number .* row 6 \(1e\+300\)"),
    ({"Quantity": ["1e10"] * 6, "Price": ["1e10"] * 6}, r"column 'Price' times Quantity is 1e15 or more in size"),
])
def test_online_retail_infinite_or_huge_numbers_are_errors(tmp_path, changes, problem):
    with pytest.raises(InputError, match=rf"or\.csv: {problem}"):
        adapt("online_retail", _retail_rows(tmp_path, **changes))


@pytest.mark.parametrize("col, value, problem", [
    ("spend", "inf", r"is not a number \(finite, below 1e15 in size\) in 1 of 2,000 rows: row 5 \(inf\)"),
    ("history", "-inf", r"is not a number .* row 5 \(-inf\)"),
    ("conversion", "2", r"is not 0 or 1 in 1 of 2,000 rows: row 5 \(2.0\)"),
])
def test_hillstrom_bad_numbers_name_the_file_column_and_rows(tmp_path, col, value, problem):
    raw = pd.read_csv(HILLSTROM, dtype=str)
    raw.loc[4, col] = value
    raw.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(InputError, match=rf"h\.csv: column '{col}' {problem}$"):
        adapt("hillstrom", tmp_path / "h.csv")


@pytest.mark.parametrize("source, sample, name", [
    ("hillstrom", HILLSTROM, "h.csv"), ("online_retail", OR_II, "or.csv"),
    ("complete_journey", CJ / "transactions_sample.csv.gz", "transactions.csv"),
])
def test_header_only_input_is_an_error_and_writes_nothing(tmp_path, capsys, source, sample, name):
    (tmp_path / "in").mkdir()
    pd.read_csv(sample, dtype=str).head(0).to_csv(tmp_path / "in" / name, index=False)
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["adapt", "--source", source, "--input", str(tmp_path / "in" / name), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'in' / name}: no data rows"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _journey_with(tmp_path: Path, name: str, rows: dict[int, object] | None = None, col: str = "",
                  empty: bool = False) -> Path:
    """A copy of the Complete Journey sample whose file `name` (without .csv.gz) has `rows` of column `col` replaced
    (0-based row: value), or only its header if `empty`."""
    shutil.copytree(CJ, tmp_path / "cj")
    df = pd.read_csv(CJ / f"{name}.csv.gz", dtype=str)
    for row, value in (rows or {}).items():
        df.loc[row, col] = value
    (df.head(0) if empty else df).to_csv(tmp_path / "cj" / f"{name}.csv.gz", index=False)
    return tmp_path / "cj"


def test_complete_journey_dates_with_offsets_are_naive_utc(tmp_path):
    offsets = {0: "2017-06-17T13:42:45+02:00", 1: "2017-06-17 13:42:45Z"}
    tx = adapt("complete_journey", _journey_with(tmp_path, "transactions_sample", offsets, "transaction_timestamp"))
    tx = tx["transactions"]
    assert tx["timestamp"].head(2).tolist() == [pd.Timestamp("2017-06-17 11:42:45"), pd.Timestamp("2017-06-17 13:42:45")]


@pytest.mark.parametrize("name, col, value, problem", [
    ("transactions_sample", "transaction_timestamp", "9999-12-31", r"is not an ISO 8601 .* row 3 \('9999-12-31'\)"),
    ("campaign_descriptions", "start_date", "soon", r"is not an ISO 8601 .* row 3 \('soon'\)"),
    ("campaign_descriptions", "end_date", np.nan, r"is empty in 1 of .* row 3 \(empty\)"),
    ("coupon_redemptions", "redemption_date", "2017-02-30", r"is not an ISO 8601 .* row 3 \('2017-02-30'\)"),
    ("transactions_sample", "sales_value", "inf", r"is not a number .* row 3 \(inf\)"),
    ("transactions_sample", "quantity", "-1e20", r"is not a number .* row 3 \(-1e\+20\)"),
])
def test_complete_journey_bad_dates_and_numbers_name_the_file_column_and_rows(tmp_path, name, col, value, problem):
    with pytest.raises(InputError, match=rf"{name}\.csv\.gz: column '{col}' {problem}$"):
        adapt("complete_journey", _journey_with(tmp_path, name, {2: value}, col))


def test_complete_journey_empty_side_files_are_errors(tmp_path):
    path = _journey_with(tmp_path, "demographics", empty=True)
    with pytest.raises(InputError, match=r"demographics\.csv\.gz: no data rows$"):
        adapt("complete_journey", path)
    shutil.rmtree(path)
    n_campaigns = len(pd.read_csv(CJ / "campaigns.csv.gz"))
    path = _journey_with(tmp_path, "campaigns", dict.fromkeys(range(n_campaigns), "999"), "campaign_id")
    with pytest.raises(InputError, match=r"campaigns\.csv\.gz: no campaign_id is described in campaign_descriptions"):
        adapt("complete_journey", path)
