"""The canonical input schema (DESIGN.md) and its validation: clear one-line errors, deliberate clean-up.

Validated frames have exactly these dtypes: ids and text as pandas categoricals whose categories are the sorted
distinct strings (so code order is text order, and later steps group by codes instead of hashing strings),
`timestamp` as naive UTC datetime64 (offsets are converted to UTC, naive times are taken as UTC, so mixed time
zones are fine), numbers as float64, `treated` as bool. Exact duplicate rows are dropped (double-loaded lines are
the common cause) and counted.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import InputError
from features.io import read_table

__all__ = ["MAX_DAYS", "SCHEMAS", "Schema", "add_input_arguments", "arrow_text", "as_id", "as_utc_naive", "check_days",
           "is_clean_id", "load", "numeric_attributes", "offending_rows", "parse_as_of", "text_columns", "validate"]

ID, TIME, FLOAT, TEXT, BOOL = "id", "time", "float", "text", "bool"
MAX_ABS = 1e15  # amounts, margins, quantities: larger ones are errors (and their sums would overflow to inf)


@dataclass(frozen=True)
class Schema:
    """Required and optional columns of one input table, and whether other columns are kept."""

    name: str
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    keep_extra: bool = False
    unique_ids: bool = False


SCHEMAS: dict[str, Schema] = {
    "transactions": Schema(
        "transactions",
        {"customer_id": ID, "timestamp": TIME, "amount": FLOAT},
        {"order_id": TEXT, "product_id": TEXT, "category": TEXT, "quantity": FLOAT, "margin": FLOAT, "channel": TEXT},
    ),
    "events": Schema("events", {"customer_id": ID, "timestamp": TIME, "event": TEXT}, {"value": FLOAT}),
    "nudges": Schema(
        "nudges",
        {"customer_id": ID, "timestamp": TIME, "campaign": TEXT, "channel": TEXT, "treated": BOOL},
        {"cost": FLOAT},
        keep_extra=True,
    ),
    "customers": Schema("customers", {"customer_id": ID}, {"signup_date": TIME}, keep_extra=True, unique_ids=True),
}


def text_columns(kind: str) -> list[str]:
    """The id and text columns of table `kind` (read dictionary-encoded where that is cheap)."""
    schema = SCHEMAS[kind]
    return [c for c, k in {**schema.required, **schema.optional}.items() if k in (ID, TEXT)]


AS_OF_MIN, AS_OF_MAX = pd.Timestamp("1700-01-01"), pd.Timestamp("2199-12-31")  # room for horizons of decades
_AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?")
_TRUE = {"true", "t", "1", "yes", "y", "1.0"}
_FALSE = {"false", "f", "0", "no", "n", "0.0"}


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def _shown(value: object) -> str:
    """A value as a user wrote it: text quoted, numbers and times plain (not np.float64(inf) or Timestamp(...))."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def offending_rows(source: str, column: str, problem: str, raw: pd.Series, bad: np.ndarray) -> InputError:
    """Build the one-line error naming the file, the column and up to five offending rows (1-based)."""
    idx = np.flatnonzero(bad)
    shown = ", ".join(f"row {i + 1} ({'empty' if _is_missing(raw.iloc[i]) else _shown(raw.iloc[i])})" for i in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return InputError(f"{source}: column '{column}' {problem} in {len(idx):,} of {len(raw):,} rows: {shown}{more}")


_NUMBER = re.compile(r"-?[0-9.]+(?:[eE][+-]?[0-9]+)?")


def is_clean_id(text: str) -> bool:
    """True if `as_id` leaves the id `text` as it is for sure (no blanks around it, not blank, nothing that reads
    as a float): a quick test for a few ids, as a request's; False sends them through `as_id`."""
    return bool(text) and text == text.strip() and not (_NUMBER.fullmatch(text) and any(c in text for c in ".eE"))


def as_id(s: pd.Series) -> pd.Series:
    """Ids as stripped strings (None where missing or blank); whole numbers written as floats lose the '.0'
    (13085.0 and '13085.0' -> '13085', 4.0128e+10 -> '40128000000'), so that a numeric id is one customer
    whether a file stores it as a number, as text or as a float (CSV exports, Parquet float columns)."""
    out = _as_text(s)
    floaty = out.str.fullmatch(_NUMBER.pattern, na=False) & out.str.contains(r"[.eE]", na=False)
    if floaty.any():
        num = pd.to_numeric(out[floaty], errors="coerce")
        ok = num.notna() & (num == np.floor(num)) & (num.abs() < 2**63)
        out.loc[ok[ok].index] = num[ok].astype("int64").astype("str")
    return out


def _as_text(s: pd.Series) -> pd.Series:
    """Text stripped of surrounding blanks (' app' is 'app'); missing or blank is None."""
    out = s.astype("str").where(s.notna(), None).str.strip()
    return out.where(out.fillna("") != "", None)


def _distinct(s: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Codes (-1 where missing) and the distinct values they index; a categorical gives its codes without hashing."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy(np.int64), pd.Series(s.cat.categories)
    codes, uniques = pd.factorize(s)
    return codes.astype(np.int64), pd.Series(uniques)


def arrow_text(values: pd.Series | pd.Index) -> pa.LargeStringArray:
    """Text (missing: null) as one Arrow array (a pandas text column converts to a chunked array, without any chunk
    when empty)."""
    text = pa.array(pd.Series(values, copy=False))
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks else pa.array([], pa.large_string())
    return text.cast(pa.large_string())


def _categorical(codes: np.ndarray, text: pd.Series, index: pd.Index) -> pd.Series:
    """The categorical of the strings `text[codes]` (-1 and missing text: missing), categories sorted.

    `text` holds the distinct raw values made text, so only values that cleaning made equal (' B', 'B ') repeat:
    they are merged by sorting in Arrow (UTF-8 byte order is Python's code-point order), without a hash table."""
    arr = arrow_text(text)
    valid = len(arr) - arr.null_count
    order = pc.sort_indices(arr).to_numpy()[:valid]  # nulls last
    ordered = arr.take(order)
    new = np.ones(valid, bool)
    if valid > 1:
        new[1:] = pc.not_equal(ordered[1:], ordered[:-1]).to_numpy(zero_copy_only=False)
    to_sorted = np.full(len(arr) + 1, -1, np.int64)  # the last: code -1
    to_sorted[order] = np.cumsum(new) - 1
    dtype = pd.CategoricalDtype(pd.Index(pd.array(ordered.filter(new), dtype="str")))
    return pd.Series(pd.Categorical.from_codes(to_sorted[codes], dtype=dtype), index=index)


def as_utc_naive(s: pd.Series) -> pd.Series:
    """Dates or datetimes (ISO 8601 text or datetime64, any offsets) as naive UTC datetime64[ns]; NaT if unparseable
    or outside the nanosecond range (years 1678-2261: placeholders such as 9999-12-31)."""
    if pd.api.types.is_datetime64_any_dtype(s):
        out = s
    else:
        text = s.astype("str").str.strip().where(s.notna(), None)
        out = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    if out.dtype != "datetime64[ns]":
        out = out.where((out >= pd.Timestamp.min) & (out <= pd.Timestamp.max))
    return out.astype("datetime64[ns]")


def _as_float(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):  # true/false is no amount: every row is an error
        return pd.Series(np.nan, index=s.index)
    out = pd.to_numeric(s, errors="coerce").astype("float64")
    return out.where(np.abs(out) < MAX_ABS)  # also not NaN or infinite


def _as_bool(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s
    low = s.astype("str").str.strip().str.lower()
    return low.map(lambda v: True if v in _TRUE else False if v in _FALSE else None)


def _column(df: pd.DataFrame, col: str, kind: str, source: str, required: bool) -> pd.Series:
    raw = df[col]
    missing = raw.isna().to_numpy().copy()
    if kind in (ID, TEXT):  # converted once per distinct value, not per row
        try:
            codes, uniques = _distinct(raw)
        except TypeError:  # unhashable values: lists or structs in a Parquet column
            raise InputError(f"{source}: column '{col}' holds lists or records, expected text") from None
        text = as_id(uniques) if kind == ID else _as_text(uniques)
        if kind == ID:
            missing |= np.r_[text.fillna("").eq("").to_numpy(), True][codes]
        out = _categorical(codes, text, raw.index)
        bad = np.zeros(len(raw), bool)
    elif kind == TIME:
        out = as_utc_naive(raw)
        bad = out.isna().to_numpy() & ~missing
    elif kind == FLOAT:
        out = _as_float(raw)
        bad = out.isna().to_numpy() & ~missing
    else:
        out = _as_bool(raw)
        bad = out.isna().to_numpy() & ~missing
        out = out.fillna(False).astype(bool)
    if bad.any():
        what = {TIME: "is not an ISO 8601 date or datetime in the years 1678-2261",
                FLOAT: "is not a number (finite, below 1e15 in size)", BOOL: "is not a boolean (true/false)"}[kind]
        raise offending_rows(source, col, what, raw, bad)
    if required and missing.any():
        raise offending_rows(source, col, "is empty", raw, missing)
    return out


def _columns(df: pd.DataFrame, schema: Schema, source: str) -> dict[str, pd.Series]:
    """The schema's columns of `df` in canonical form, converted in parallel threads (Arrow, pandas' hashing and
    numpy release the GIL); a bad column raises its error, the first one in schema order if several are bad."""
    todo = [(c, k, True) for c, k in schema.required.items()]
    todo += [(c, k, False) for c, k in schema.optional.items() if c in df.columns]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        converted = list(pool.map(lambda task: _column(df, task[0], task[1], source, task[2]), todo))
    return {c: s for (c, _, _), s in zip(todo, converted)}


def _repeated(h: np.ndarray) -> np.ndarray:
    """Whether each value occurs more than once: the repeated values are found by sorting (numpy's sort is much
    faster than a hash table of millions of values), then looked up in a small hash table of just those."""
    s = np.sort(h)
    return pd.Series(h).isin(s[1:][s[1:] == s[:-1]]).to_numpy()


def _exact_duplicates(df: pd.DataFrame) -> np.ndarray:
    """Rows equal to an earlier row in every column.

    Rows whose 64-bit row hash repeats are the candidates (categoricals are hashed as codes, so no string is),
    and among them pandas compares the values exactly."""
    h = np.zeros(len(df), np.uint64)
    for col in df.columns:
        s = df[col].cat.codes if isinstance(df[col].dtype, pd.CategoricalDtype) else df[col]
        h = h * np.uint64(1_000_003) ^ pd.util.hash_pandas_object(s, index=False).to_numpy()
    candidate = _repeated(h)
    dup = np.zeros(len(df), bool)
    if candidate.any():
        dup[candidate] = df.loc[candidate].duplicated().to_numpy()
    return dup


def validate(df: pd.DataFrame, kind: str, source: str | None = None) -> pd.DataFrame:
    """Return `df` in the canonical form of table `kind`, or raise InputError naming column and rows."""
    schema = SCHEMAS[kind]
    source = source or kind
    if not df.index.equals(pd.RangeIndex(len(df))):  # rows are reported and aligned by position
        df = df.reset_index(drop=True)
    if df.empty:
        raise InputError(f"{source}: empty {kind} table (no rows)")
    absent = [c for c in schema.required if c not in df.columns]
    if absent:
        raise InputError(f"{source}: missing required column(s) {', '.join(absent)} "
                         f"(found: {', '.join(map(str, df.columns[:12]))})")
    out = _columns(df, schema, source)
    if schema.keep_extra:  # in the table's own column order (attributes become features in that order)
        out = {col: out[col] if col in out else df[col] for col in df.columns}
    result = pd.DataFrame(out, index=pd.RangeIndex(len(df)), copy=False)  # no copy into 2-D blocks
    if schema.unique_ids:
        dup = result["customer_id"].duplicated(keep=False).to_numpy()
        if dup.any():
            raise offending_rows(source, "customer_id", "is duplicated", df["customer_id"], dup)
        return result
    dup = _exact_duplicates(result)
    if dup.any():
        print(f"note: {source}: dropped {int(dup.sum()):,} exact duplicate rows", file=sys.stderr)
        result = result.loc[~dup].reset_index(drop=True)
    return result


def _as_numbers(s: pd.Series) -> pd.Series | None:
    """`s` as float64 if every non-missing value is a number (parsed once per distinct value), else None."""
    codes, uniques = pd.factorize(s)
    parsed = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype=float)
    if np.isnan(parsed).any():
        return None
    return pd.Series(np.append(parsed, np.nan)[codes], index=s.index)


def numeric_attributes(customers: pd.DataFrame) -> pd.DataFrame:
    """`customers` with each attribute column of text holding only numbers (a CSV's '12.5', '02139') as float64,
    decided on the whole table: the features then give every subset of customers the same column types. Dates
    (datetime columns and `*_date`) stay as they are."""
    out = customers.copy(deep=False)
    for col in customers.columns:
        s = customers[col]
        if (col == "customer_id" or str(col).endswith("_date") or pd.api.types.is_numeric_dtype(s)
                or pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s)):
            continue
        num = _as_numbers(s)
        if num is not None:
            out[col] = num
    return out


def load(kind: str, path: str | Path | None) -> pd.DataFrame | None:
    """Read and validate one input file (None passes through for optional inputs); the customers table's text
    columns of numbers become numbers (`numeric_attributes`)."""
    if path is None:
        return None
    df = validate(read_table(path, dictionary=text_columns(kind)), kind, str(path))
    return numeric_attributes(df) if kind == "customers" else df


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The canonical inputs of a command line (DESIGN.md): --transactions, --events, --customers, --as-of."""
    parser.add_argument("--transactions", required=True)
    parser.add_argument("--events")
    parser.add_argument("--customers")
    parser.add_argument("--as-of", required=True)


MAX_DAYS = 3650


def check_days(option: str, days: int) -> None:
    """InputError unless a horizon or window option is 1 day to 10 years."""
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"{option} {days}: must be between 1 and {MAX_DAYS} days")


def parse_as_of(text: str) -> pd.Timestamp:
    """Parse `--as-of`: a date (YYYY-MM-DD) means the end of that day (UTC); a datetime is taken as given (UTC
    unless it has an offset). Anything else ("today", "2024", "2024-06") is an error, not a guess."""
    text = str(text).strip()
    bad = InputError(f"--as-of {text!r} is not an ISO 8601 date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM[:SS])")
    if not _AS_OF.fullmatch(text):
        raise bad
    try:
        ts = pd.Timestamp(pd.to_datetime(text, format="ISO8601", utc=True))
    except (ValueError, TypeError, OverflowError):
        raise bad from None
    if pd.isna(ts):
        raise bad
    ts = ts.tz_convert("UTC").tz_localize(None)
    if not AS_OF_MIN <= ts <= AS_OF_MAX:
        raise InputError(f"--as-of {text!r} is outside the supported years {AS_OF_MIN.year}-{AS_OF_MAX.year}")
    if len(text) == 10:
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return ts
