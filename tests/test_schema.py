"""The input contract: one-line errors naming file, column and rows; deliberate clean-up of normal mess."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from features.io import read_table
from features.schema import load, parse_as_of, validate


def _tx(**cols) -> pd.DataFrame:
    base = {"customer_id": ["A", "A", "B"], "timestamp": ["2024-01-01", "2024-02-01", "2024-01-05"], "amount": ["10", "12", "7"]}
    base.update(cols)
    return pd.DataFrame(base)


def test_missing_column_names_the_column():
    with pytest.raises(InputError, match=r"tx.csv: missing required column\(s\) amount"):
        validate(_tx().drop(columns="amount"), "transactions", "tx.csv")


def test_non_numeric_amount_names_column_and_rows():
    with pytest.raises(InputError, match=r"column 'amount' is not a number \(finite, below 1e15 in size\) in 2 of 3 rows: row 2 \('ten'\), row 3 \('x'\)"):
        validate(_tx(amount=["1", "ten", "x"]), "transactions", "tx.csv")


def test_unparseable_timestamp_names_the_row():
    with pytest.raises(InputError, match=r"column 'timestamp' is not an ISO 8601 .* row 3 \('yesterday'\)"):
        validate(_tx(timestamp=["2024-01-01", "2024-01-02", "yesterday"]), "transactions", "tx.csv")


def test_missing_customer_id_is_an_error():
    with pytest.raises(InputError, match=r"column 'customer_id' is empty in 1 of 3 rows: row 2"):
        validate(_tx(customer_id=["A", None, "B"]), "transactions")


def test_mixed_time_zones_are_converted_to_utc():
    out = validate(_tx(timestamp=["2024-01-01T10:00:00+02:00", "2024-01-01 08:00:00", "2024-01-01T03:00:00-05:00"]), "transactions")
    assert (out["timestamp"] == pd.Timestamp("2024-01-01 08:00:00")).all()
    assert out["timestamp"].dt.tz is None


def test_exact_duplicates_are_dropped_and_counted(capsys):
    out = validate(_tx(customer_id=["A", "A", "A"], timestamp=["2024-01-01"] * 3, amount=["5", "5", "6"]), "transactions", "t.csv")
    assert len(out) == 2
    assert "dropped 1 exact duplicate rows" in capsys.readouterr().err


def test_returns_and_return_only_customers_are_valid():
    out = validate(_tx(amount=["10", "-12", "-7"]), "transactions")
    assert out["amount"].tolist() == [10.0, -12.0, -7.0]


def test_numeric_customer_ids_from_parquet_lose_the_float_suffix():
    out = validate(pd.DataFrame({"customer_id": [13085.0, 12.0], "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"]),
                                 "amount": [1.0, 2.0]}), "transactions")
    assert out["customer_id"].tolist() == ["13085", "12"]


def test_nudges_treated_must_be_boolean():
    nudges = pd.DataFrame({"customer_id": ["A", "B"], "timestamp": ["2024-01-01"] * 2, "campaign": ["c"] * 2,
                           "channel": ["email"] * 2, "treated": ["true", "maybe"]})
    with pytest.raises(InputError, match=r"'treated' is not a boolean .* row 2 \('maybe'\)"):
        validate(nudges, "nudges")
    assert validate(nudges.iloc[:1], "nudges")["treated"].tolist() == [True]


def test_customers_table_rejects_duplicate_ids():
    with pytest.raises(InputError, match="customer_id' is duplicated"):
        validate(pd.DataFrame({"customer_id": ["A", "A"], "segment": ["x", "y"]}), "customers")


@pytest.mark.parametrize("content,word", [(b"", "empty file"), (b"customer_id,timestamp,amount\n", "empty file")])
def test_empty_files(tmp_path, content, word):
    f = tmp_path / "t.csv"
    f.write_bytes(content)
    with pytest.raises(InputError, match=word):
        read_table(f)


def test_unreadable_parquet_and_missing_file(tmp_path):
    bad = tmp_path / "t.parquet"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_table(bad)
    with pytest.raises(InputError, match="file not found"):
        load("transactions", tmp_path / "nope.csv")


def test_parquet_and_csv_load_to_the_same_frame(tmp_path):
    df = _tx()
    df.to_csv(tmp_path / "t.csv", index=False)
    validate(df, "transactions").to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(load("transactions", tmp_path / "t.csv"), load("transactions", tmp_path / "t.parquet"))


def test_as_of_date_means_end_of_day_and_bad_dates_fail():
    assert parse_as_of("2024-03-01") == pd.Timestamp("2024-03-02") - pd.Timedelta(1, "ns")
    assert parse_as_of("2024-03-01T12:00:00+01:00") == pd.Timestamp("2024-03-01 11:00:00")
    for bad in ("2024-13-45", "tomorrow", "", "today", "now", "2024", "2024-06", "2024-02-30", "1600-01-01",
                "2262-04-11", "9999-12-31"):
        with pytest.raises(InputError, match="--as-of"):
            parse_as_of(bad)


def test_rows_equal_in_numbers_but_not_in_text_are_not_duplicates():
    out = validate(_tx(customer_id=["A", "B", "A"], timestamp=["2024-01-01"] * 3, amount=["5", "5", "5"],
                       order_id=["o1", "o2", "o1"]), "transactions")
    assert out[["customer_id", "order_id"]].values.tolist() == [["A", "o1"], ["B", "o2"]]


def test_dates_outside_the_nanosecond_range_are_bad_rows_not_a_crash(tmp_path):
    with pytest.raises(InputError, match=r"column 'timestamp' is not an ISO 8601 .* row 2 \('9999-12-31'\)"):
        validate(_tx(timestamp=["2024-01-01", "9999-12-31", "2024-01-02"]), "transactions", "tx.csv")
    far = pd.DataFrame({"customer_id": ["A", "B"], "amount": [1.0, 2.0],
                        "timestamp": pd.Series(pd.to_datetime(["2024-01-01", "2500-01-01"])).astype("datetime64[us]")})
    far.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet: column 'timestamp' .* 1 of 2 rows: row 2"):
        load("transactions", tmp_path / "t.parquet")


def test_a_numeric_id_is_one_customer_as_text_float_or_integer():
    out = validate(pd.DataFrame({"customer_id": ["123.0", " 123 ", "4.0128e+10", "1.5", "007"],
                                 "timestamp": ["2024-01-01"] * 5, "amount": ["1", "2", "3", "4", "5"]}), "transactions")
    assert out["customer_id"].tolist() == ["123", "123", "40128000000", "1.5", "007"]
    huge = validate(pd.DataFrame({"customer_id": [float("inf"), 1e20], "timestamp": ["2024-01-01"] * 2,
                                  "amount": ["1", "2"]}), "transactions")
    assert huge["customer_id"].tolist() == ["inf", "1e+20"]


def test_text_is_trimmed_and_blank_text_is_missing():
    out = validate(_tx(channel=[" app", "web ", "  "]), "transactions")
    assert out["channel"].tolist()[:2] == ["app", "web"] and pd.isna(out["channel"].iloc[2])


def test_a_frame_with_any_index_validates_by_position():
    df = _tx(amount=["10", "-1", "7"])
    out = validate(df[df["amount"] != "-1"], "transactions")
    assert out["customer_id"].tolist() == ["A", "B"] and out["amount"].tolist() == [10.0, 7.0]


def test_list_valued_text_column_is_an_error(tmp_path):
    df = pd.DataFrame({"customer_id": ["A"], "timestamp": ["2024-01-01"], "amount": [1.0], "category": [["x", "y"]]})
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet: column 'category' holds lists"):
        load("transactions", tmp_path / "t.parquet")


def test_csv_with_a_trailing_comma_on_every_line_keeps_its_columns(tmp_path):
    (tmp_path / "t.csv").write_text("customer_id,timestamp,amount\nA,2024-01-01,10,\nB,2024-01-02,7,\n")
    assert load("transactions", tmp_path / "t.csv")["amount"].tolist() == [10.0, 7.0]


def test_output_path_that_is_a_directory_is_an_error(tmp_path):
    from features.io import write_parquet

    with pytest.raises(InputError, match="is a directory"):
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="parent of the output path is a file"):
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "file" / "out.parquet")


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    """/proc takes no new folders (even for root, who passes every permission check): found by a probe, not by the
    write at the end of the command, which came after scoring and ended in a traceback."""
    from features.io import check_output_dir, check_output_path, write_parquet

    for check in (check_output_path, check_output_dir):
        with pytest.raises(InputError, match=r"/proc/kairos/x: cannot write in /proc \("):
            check("/proc/kairos/x")
    with pytest.raises(InputError, match="cannot write in /proc"):
        write_parquet(pd.DataFrame({"a": [1]}), "/proc/kairos/s.parquet")
    assert check_output_path(tmp_path / "new" / "s.parquet") and not any(tmp_path.iterdir())  # the probe is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file; the output must be a folder"):
        check_output_dir(tmp_path / "f")


@pytest.mark.parametrize("command", [
    "features build --transactions T --as-of 2025-01-01 --out /proc/kairos/f.parquet",
    "features aha --transactions T --events T --as-of 2025-01-01 --out /proc/kairos/aha",
    "features adapt --source hillstrom --input T --out /proc/kairos/hillstrom",
    "training evaluate --transactions T --as-of 2025-01-01 --out /proc/kairos/report",
    "training uplift --customers T --nudges T --transactions T --response-days 14 --out /proc/kairos/uplift",
    "serving batch --transactions T --as-of 2025-01-01 --out /proc/kairos/s.parquet",
])
def test_every_command_refuses_an_unwritable_output_before_reading_its_inputs(tmp_path, command):
    import importlib

    module, *argv = command.replace("T", str(tmp_path / "missing.csv")).split()
    with pytest.raises(InputError, match="cannot write in /proc"):  # not "missing.csv: file not found"
        importlib.import_module(f"{module}.__main__").main(argv)


@pytest.mark.parametrize("command, match", [
    ("features build --transactions IN --as-of 2025-01-01 --out IN", "--out .*: is the input file of --transactions"),
    ("serving batch --transactions T --customers IN --as-of 2025-01-01 --out IN", "is the input file of --customers"),
    ("serving batch --transactions T --events IN --as-of 2025-01-01 --out s.parquet --features-out IN",
     "--features-out .*: is the input file of --events"),
    ("features build --transactions T --as-of 2025-01-01 --out f.csv", "the output is Parquet; name it .parquet"),
    ("serving batch --transactions T --as-of 2025-01-01 --out s.csv", "the output is Parquet"),
    ("features aha --transactions T --events T --as-of 2025-01-01 --within-days 100000000 --out a",
     "--within-days 100000000: must be between 1 and 3650"),
    ("training uplift --customers T --nudges T --transactions T --response-days 14 --seed -1 --out u",
     "--seed -1: must be at least 0"),
    ("training train --transactions T --as-of 2025-01-01 --experiment  ", "experiment name is empty"),
    ("training tune --transactions T --as-of 2025-01-01 --timeout 0", "--timeout 0.0: must be a positive"),
    ("serving batch --transactions T --as-of 2025-01-01 --out s.parquet --budget nan", "--budget nan: must be a"),
])
def test_command_line_mistakes_are_refused_before_any_work(tmp_path, monkeypatch, command, match):
    """Found by a review of every command: an input overwritten by the output (exit 0, the CSV gone), Parquet
    under a .csv name, and options that failed with a traceback after minutes of work."""
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.parquet").write_text("the input")  # never read: refused before
    module, *argv = command.replace("IN", str(tmp_path / "in.parquet")).replace("T ", "missing.csv ").split(" ")
    argv = [a for a in argv if a] + ([""] if command.endswith("--experiment  ") else [])
    with pytest.raises(InputError, match=match):
        importlib.import_module(f"{module}.__main__").main(argv)
    assert (tmp_path / "in.parquet").read_text() == "the input"


def test_a_folder_store_or_an_uncreatable_store_folder_is_a_one_line_error(monkeypatch):
    from training.registry import configure

    for uri, match in (("/tmp/kairos-plain-store", "folder store"), ("file:mlruns", "folder store"),
                       ("sqlite:////proc/kairos/m.db", "cannot create the folder /proc/kairos")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(InputError, match=match):
            configure()


def test_signup_dates_must_parse_and_huge_amounts_are_refused():
    with pytest.raises(InputError, match=r"column 'signup_date' is not an ISO 8601 .* row 2 \('yesterday'\)"):
        validate(pd.DataFrame({"customer_id": ["a", "b"], "signup_date": ["2025-01-01", "yesterday"]}), "customers")
    with pytest.raises(InputError, match=r"'amount' is not a number .* row 2 \('1e308'\)"):  # sums overflowed
        validate(_tx(amount=["1", "1e308", "2"]), "transactions", "tx.csv")
    with pytest.raises(InputError, match=r"row 2 \(inf\)$"):  # as written, not np.float64(inf)
        validate(_tx(amount=[1.0, np.inf, 2.0]), "transactions", "tx.parquet")
    with pytest.raises(InputError, match=r"'amount' is not a number .* in 3 of 3 rows"):  # not 1.0 and 0.0
        validate(_tx(amount=[True, False, True]), "transactions", "tx.parquet")


def test_a_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    """pandas renamed the second 'amount' to 'amount.1' and the first one was used, silently."""
    (tmp_path / "t.csv").write_text("customer_id,timestamp,amount,amount\nA,2024-01-01,10,12\n")
    with pytest.raises(InputError, match="t.csv: column 'amount' appears twice in the header"):
        load("transactions", tmp_path / "t.csv")


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from features.io import atomic_path

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "kept" / "a" / "b" / "s.parquet") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("scoring failed")
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]


def test_a_replaced_output_keeps_the_mode_it_had(tmp_path):
    """An admin who made the scores group-readable only (0640) keeps that mode across nightly runs."""
    from features.io import write_parquet

    out = write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "s.parquet")
    out.chmod(0o640)
    write_parquet(pd.DataFrame({"a": [2]}), out)
    assert out.stat().st_mode & 0o777 == 0o640 and pd.read_parquet(out)["a"].tolist() == [2]


def test_outputs_get_the_usual_file_mode_not_the_temporary_files_0600(tmp_path):
    """Written through a private temporary (mkstemp makes it 0600): the renamed output must be readable as any
    file this process creates, or the users downstream of the batch cannot read its scores."""
    import os

    from features.io import write_parquet

    old = os.umask(0o022)
    try:
        out = write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "s.parquet")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_the_quick_id_test_never_passes_an_id_that_as_id_would_change():
    """The service skips `as_id` (a millisecond of pandas per request) for ids `is_clean_id` passes."""
    from features.schema import as_id, is_clean_id

    ids = ["C1", " C1 ", "C1 ", "123.0", "1e3", "E5", "12", "-5", "1.5", "abc.def", "", "  ", "4.0128e+10", "e", ".",
           "1.", "13085", "0.0", "-0", "\tX"]
    cleaned = as_id(pd.Series(ids, dtype=object))
    assert all(cleaned[i] == c for i, c in enumerate(ids) if is_clean_id(c))
    assert [c for c in ids if is_clean_id(c)] == ["C1", "E5", "12", "-5", "abc.def", "e", "13085", "-0"]
