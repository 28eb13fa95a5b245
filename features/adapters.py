"""Adapters that map public data sets onto the canonical input schema (DESIGN.md, "Input data").

Each adapter takes a path (a file, or a directory holding the data set) and returns some of the tables
"transactions", "events", "nudges", "customers" with exactly the canonical column names: ids and text as
`str`, `timestamp` as naive datetime64[ns], numbers as float64, `treated` as bool. Adapters do not de-duplicate:
exact duplicate lines are kept, because the canonical loader (`features.schema.validate`) drops them deliberately.
Input that does not look like the source raises `InputError` (a `ValueError`) naming the file and missing columns;
a file without data rows, an empty, unparseable or out-of-range date (years 1678-2261; offsets are converted to UTC)
and a missing, non-finite or huge number (1e15 or more) raise it naming the file, the column and a few rows.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from features.schema import MAX_ABS, as_id, as_utc_naive, offending_rows

__all__ = ["ADAPTERS", "DROPPED_STOCK_CODES", "HILLSTROM_CAMPAIGN_DATE", "adapt", "complete_journey", "hillstrom",
           "online_retail", "retail_category"]

_DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".xlsx")

# Online Retail: stock codes that are bookkeeping, not revenue from a customer's purchase.
DROPPED_STOCK_CODES = frozenset({"BANK CHARGES", "AMAZONFEE", "B", "ADJUST", "ADJUST2", "CRUK", "S", "TEST001", "TEST002"})
_SPECIAL_CATEGORIES = {"POST": "postage", "DOT": "postage", "C2": "postage", "C3": "postage",
                       "D": "discount", "M": "manual"}
# Keyword map for product categories: the first category (in this order) that has a word of the description wins.
_CATEGORY_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("christmas", "CHRISTMAS XMAS ADVENT SANTA REINDEER SNOWFLAKE NATIVITY NOEL"),
    ("bags", "BAG BAGS SHOPPER TOTE"),
    ("lighting", "LIGHT LIGHTS LANTERN CANDLE CANDLES TEALIGHT T-LIGHT NIGHTLIGHT LAMP TORCH"),
    ("kitchen", ("MUG MUGS CUP CUPS TEACUP TEA COFFEE PLATE PLATES BOWL BOWLS CAKE CAKESTAND BAKING JAR JARS NAPKINS "
                 "SPOON SPOONS CUTLERY TRAY APRON KITCHEN LUNCH BOTTLE BEAKER JUG TEAPOT CUPCAKE GLASS TUMBLER PANTRY "
                 "RECIPE JELLY EGG STRAWS TOAST BREAD BISCUIT OVEN BUTTER DISH PAN CONTAINER")),
    ("stationery", ("CARD CARDS PAPER WRAP PEN PENS PENCIL PENCILS NOTEBOOK NOTEBOOKS STICKER STICKERS RIBBON RIBBONS "
                    "TAPE ENVELOPE ENVELOPES CHALK JOURNAL DIARY ERASER ERASERS BOOK CALENDAR TISSUES TAG TAGS MEMO")),
    ("toys_games", ("TOY TOYS DOLL DOLLY GAME GAMES PUZZLE SPACEBOY PARTY BALLOON BALLOONS BUNTING KIDS CHILDS CHILDRENS "
                    "PLAYHOUSE SKIPPING CRAYONS COLOURING BUBBLES BINGO DOMINOES SKITTLES SPINNING GLIDERS CLAY PAINT")),
    ("storage", "BOX BOXES TIN TINS BASKET STORAGE HOLDER CRATE DRAWER CABINET CASE CASES CHEST"),
    ("textiles_bath", "CUSHION COVER BLANKET DOORMAT MAT TOWEL THROW QUILT PLASTERS WARMER BATH SPONGE SOAP"),
    ("accessories", ("NECKLACE BRACELET EARRINGS RING RINGS HAIR UMBRELLA PARASOL PURSE WALLET BROOCH CHARM BANGLE "
                     "SLIPPERS HANDBAG GLOVES SCARF CLIP FOB")),
    ("garden", "GARDEN GARDENERS PLANT PLANTER FLOWER FLOWERS POT POTS BIRD WATERING HERB SEED"),
    ("home_decor", ("HEART HEARTS HANGING DECORATION DECORATIONS FRAME SIGN CLOCK MIRROR VASE WREATH ORNAMENT HOOK HOOKS "
                    "DOORSTOP GARLAND PHOTO WALL CHALKBOARD BELL BELLS STAR BUTTERFLY BLOCK LETTERS HANGER RACK")),
)
_OR_COLUMNS = {  # canonical meaning -> (Online Retail II name, Online Retail name)
    "invoice": ("Invoice", "InvoiceNo"), "stock_code": ("StockCode", "StockCode"),
    "description": ("Description", "Description"), "quantity": ("Quantity", "Quantity"),
    "date": ("InvoiceDate", "InvoiceDate"), "price": ("Price", "UnitPrice"),
    "customer": ("Customer ID", "CustomerID"), "country": ("Country", "Country"),
}
_US_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m/%d/%y %H:%M")  # the original Online Retail spelling
_HILLSTROM_COLUMNS = ["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel",
                      "segment", "visit", "conversion", "spend"]
HILLSTROM_CAMPAIGN_DATE = pd.Timestamp("2008-03-01")
_HILLSTROM_ARMS = {"Mens E-Mail": "mens", "Womens E-Mail": "womens", "No E-Mail": "none"}


def _data_file(path: Path, what: str) -> Path:
    """Return `path`, or the single data file inside the directory `path`."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_dir():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(_DATA_SUFFIXES))
    if len(found) != 1:
        raise InputError(f"{path}: expected exactly one {what} data file (.csv/.parquet/.xlsx), found {len(found)}"
                         + (f": {', '.join(p.name for p in found)}" if found else ""))
    return found[0]


def _read(path: Path, dtype: dict[str, type] | None = None) -> pd.DataFrame:
    """Read a CSV (UTF-8, falling back to Latin-1), Parquet or XLSX (all sheets, needs openpyxl) file."""
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        elif name.endswith(".xlsx"):
            df = pd.concat(pd.read_excel(path, sheet_name=None, dtype=dtype).values(), ignore_index=True)
        else:
            try:
                df = pd.read_csv(path, dtype=dtype)
            except UnicodeDecodeError:
                df = pd.read_csv(path, dtype=dtype, encoding="latin-1")
    except (OSError, ValueError, ImportError) as exc:
        raise InputError(f"{path}: not a readable data file ({type(exc).__name__}: {str(exc)[:120]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _require(df: pd.DataFrame, columns: list[str], path: Path, source: str) -> None:
    """InputError unless `df` has `columns` and at least one row."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: does not look like {source}: missing column(s) {', '.join(missing)} "
                         f"(found: {', '.join(map(str, df.columns[:12]))})")
    if df.empty:
        raise InputError(f"{path}: no data rows")


def _offending(raw: pd.Series, bad: np.ndarray, path: Path, column: str, problem: str) -> InputError:
    """`offending_rows` for a column `raw` indexed by file row (it may be a filtered slice): rows numbered as in the
    file."""
    rows = raw.index.to_numpy()
    full = pd.Series(raw.to_numpy(), index=rows).reindex(range(int(rows.max()) + 1))
    return offending_rows(str(path), column, problem, full, np.isin(np.arange(len(full)), rows[bad]))


def _numeric_columns(df: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    """`df` with `columns` as float64; a missing, non-numeric, infinite or huge (1e15 or more, as in the canonical
    schema) value is an error naming the file, column and rows."""
    out = df.copy()
    for col in columns:
        num = pd.to_numeric(df[col], errors="coerce").astype("float64")
        bad = ~(num.abs() < MAX_ABS).to_numpy() | pd.api.types.is_bool_dtype(df[col])  # also NaN and inf
        if bad.any():
            raise _offending(df[col], bad, path, col, "is not a number (finite, below 1e15 in size)")
        out[col] = num
    return out


def _parse_dates(text: pd.Series) -> pd.Series:
    """Date texts as naive UTC datetime64[ns]: ISO 8601 (offsets converted to UTC, naive taken as UTC) or US-style
    `_US_FORMATS`; NaT if unparseable or outside the nanosecond range (years 1678-2261)."""
    parsed = as_utc_naive(text)
    for fmt in _US_FORMATS:
        todo = parsed.isna() & text.notna()
        if not todo.any():
            break
        parsed[todo] = as_utc_naive(pd.to_datetime(text[todo], format=fmt, errors="coerce"))
    return parsed


def _timestamps(s: pd.Series, path: Path, column: str) -> pd.Series:
    """`s` (text parsed once per distinct value by `_parse_dates`, or datetimes) as naive UTC datetime64[ns]; an
    empty, unparseable or out-of-range date is an error naming the file, column and rows."""
    if pd.api.types.is_datetime64_any_dtype(s):
        out, missing = as_utc_naive(s), s.isna().to_numpy()
    else:
        codes, uniques = pd.factorize(s)
        text = pd.Series(uniques, dtype="str").str.strip()
        parsed = _parse_dates(text.where(text != "", None)).to_numpy()
        out = pd.Series(np.append(parsed, np.datetime64("NaT", "ns"))[codes], index=s.index)
        missing = np.append(text.eq("").to_numpy(), True)[codes]  # blank or missing (code -1)
    if missing.any():
        raise _offending(s, missing, path, column, "is empty")
    bad = out.isna().to_numpy()
    if bad.any():
        raise _offending(s, bad, path, column, "is not an ISO 8601 or M/D/YYYY H:MM date in the years 1678-2261")
    return out


def retail_category(stock_codes: pd.Series, descriptions: pd.Series) -> pd.Series:
    """Coarse Online Retail product category: special stock codes first, then a keyword map over the description.

    POST/DOT/C2/C3 -> "postage", D -> "discount", M -> "manual", gift_* -> "gift_voucher"; otherwise the first
    category of `_CATEGORY_KEYWORDS` (in its order) that has a word of the upper-cased description, else "other".
    """
    lookup: dict[str, str] = {}
    for cat, words in _CATEGORY_KEYWORDS:
        for w in words.split():
            lookup.setdefault(w, cat)
    rank = {cat: i for i, (cat, _) in enumerate(_CATEGORY_KEYWORDS)}

    def by_words(text: object) -> str:
        if not isinstance(text, str):
            return "other"
        hits = [lookup[w] for w in re.findall(r"[A-Z][A-Z'\-]*", text.upper()) if w in lookup]
        return min(hits, key=rank.__getitem__) if hits else "other"

    codes, uniques = pd.factorize(descriptions, use_na_sentinel=False)
    out = pd.Series(np.array([by_words(d) for d in uniques], dtype=object)[codes], index=descriptions.index)
    upper = stock_codes.str.upper()
    special = upper.map(_SPECIAL_CATEGORIES)
    out = out.where(special.isna(), special)
    out[upper.str.startswith("GIFT_", na=False)] = "gift_voucher"
    return out.astype("str")


def online_retail(path: Path) -> dict[str, pd.DataFrame]:
    """UCI "Online Retail" or "Online Retail II" (either spelling of the columns; CSV, Parquet or XLSX).

    Returns "transactions" (order_id = invoice, product_id = StockCode, category from `retail_category`,
    quantity, amount = Quantity * Price, channel "web") and "customers" (customer_id, country = the customer's most
    frequent Country, ties broken alphabetically; signup_date = the first invoice, so that a customer is not
    known before it). Decisions:
    - rows without a customer id are dropped: they cannot be attributed to anyone;
    - cancellations (invoices starting with "C") keep their negative quantity, so their amount is negative (a return);
    - bookkeeping codes in `DROPPED_STOCK_CODES` (bank charges, Amazon fees, bad-debt "B", adjustments, samples, test
      products) are dropped; postage (POST, DOT, C2) is revenue and kept; "D" discounts and "M" manual lines are kept
      with their (usually negative) amounts; zero-price lines are kept with amount 0;
    - exact duplicate lines are kept (the canonical loader de-duplicates).
    """
    path = Path(path)
    file = _data_file(path, "Online Retail")
    df = _read(file, dtype={"Invoice": str, "InvoiceNo": str, "StockCode": str, "Customer ID": str, "CustomerID": str})
    missing = [sum(names[i] not in df.columns for names in _OR_COLUMNS.values()) for i in (0, 1)]
    spelling = 0 if missing[0] <= missing[1] else 1  # the spelling that fits best names the missing columns
    _require(df, [names[spelling] for names in _OR_COLUMNS.values()], file,
             "Online Retail II" if spelling == 0 else "Online Retail")
    col = {key: names[spelling] for key, names in _OR_COLUMNS.items()}
    customer = as_id(df[col["customer"]])
    stock = df[col["stock_code"]].astype("str").str.strip()
    if customer.isna().all():
        raise InputError(f"{file}: column '{col['customer']}' is empty in all {len(df):,} rows: no purchase can be "
                         "attributed to a customer")
    keep = customer.notna() & ~stock.str.upper().isin(DROPPED_STOCK_CODES)
    if not keep.any():
        raise InputError(f"{file}: every row with a customer id has a bookkeeping StockCode "
                         f"({', '.join(sorted(DROPPED_STOCK_CODES))}): no purchases")
    df, customer, stock = df[keep], customer[keep], stock[keep]
    df = _numeric_columns(df, [col["quantity"], col["price"]], file)
    quantity, price = df[col["quantity"]], df[col["price"]]
    amount = quantity * price
    if (huge := ~(amount.abs() < MAX_ABS).to_numpy()).any():
        raise _offending(df[col["price"]], huge, file, col["price"], f"times {col['quantity']} is 1e15 or more in size")
    transactions = pd.DataFrame({
        "customer_id": customer.astype("str"),
        "timestamp": _timestamps(df[col["date"]], file, col["date"]),
        "amount": amount,
        "order_id": as_id(df[col["invoice"]]).astype("str"),
        "product_id": stock.astype("str"),
        "category": retail_category(stock, df[col["description"]]),
        "quantity": quantity,
        "channel": pd.Series("web", index=df.index, dtype="str"),
    }).reset_index(drop=True)
    counts = (pd.DataFrame({"customer_id": customer.to_numpy(), "country": df[col["country"]].astype("str").to_numpy()})
              .value_counts().rename("n").reset_index()
              .sort_values(["customer_id", "n", "country"], ascending=[True, False, True]))
    customers = counts.drop_duplicates("customer_id")[["customer_id", "country"]].reset_index(drop=True)
    first_seen = transactions.groupby("customer_id")["timestamp"].min()
    customers["signup_date"] = customers["customer_id"].map(first_seen).to_numpy()
    return {"transactions": transactions, "customers": customers}


def hillstrom(path: Path) -> dict[str, pd.DataFrame]:
    """Kevin Hillstrom's MineThatData e-mail experiment (64,000 customers, randomised 1/3 each to two e-mails and none).

    customer_id is "H" + the 1-based row number, zero-padded to 5 digits. Returns
    - "customers": recency, history_segment, history, mens, womens, zip_code, newbie and purchase_channel (the
      file's `channel`, renamed so it cannot clash with the nudge channel), all static attributes;
    - "nudges": one row per customer, all in ONE randomised campaign "hillstrom_email" on channel "email" with
      treated = (segment != "No E-Mail") and `arm` = "mens" / "womens" / "none"; timestamp is a SYNTHETIC campaign date
      (`HILLSTROM_CAMPAIGN_DATE`, 2008-03-01: the data has no dates); cost is unknown (NaN); the outcome columns
      visit, conversion, spend are kept as extra columns;
    - "transactions": a RECONSTRUCTION, one purchase per converting customer at campaign date + 7 days with
      amount = spend, so that the uplift trainer can derive the outcome from purchases within the response window
      (the original outcome window is two weeks: use a response window of 7 to 14 days).
    """
    path = Path(path)
    file = _data_file(path, "Hillstrom")
    df = _read(file)
    _require(df, _HILLSTROM_COLUMNS, file, "Hillstrom MineThatData")
    width = max(5, len(str(len(df))))
    ids = pd.Series([f"H{i:0{width}d}" for i in range(1, len(df) + 1)], dtype="str")
    df = _numeric_columns(df.reset_index(drop=True), ["recency", "history", "visit", "conversion", "spend"], file)
    for c in ("visit", "conversion"):
        if (bad := ~df[c].isin([0.0, 1.0]).to_numpy()).any():
            raise _offending(df[c], bad, file, c, "is not 0 or 1")
    arm = df["segment"].astype("str").str.strip().map(_HILLSTROM_ARMS)
    if arm.isna().any():
        raise InputError(f"{file}: column 'segment' has unknown values {sorted(set(df['segment'][arm.isna()]))[:3]}")
    customers = df[["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie"]].copy()
    customers.insert(0, "customer_id", ids)
    customers["purchase_channel"] = df["channel"].astype("str")
    for c in ("history_segment", "zip_code"):
        customers[c] = customers[c].astype("str")
    customers["history"] = customers["history"].astype("float64")
    n = len(df)
    nudges = pd.DataFrame({
        "customer_id": ids,
        "timestamp": pd.Series(np.full(n, HILLSTROM_CAMPAIGN_DATE.to_datetime64()), dtype="datetime64[ns]"),
        "campaign": pd.Series("hillstrom_email", index=df.index, dtype="str"),
        "channel": pd.Series("email", index=df.index, dtype="str"),
        "treated": (arm != "none").astype(bool),
        "cost": np.full(n, np.nan),
        "arm": arm.astype("str"),
        "visit": df["visit"].astype("int64"),
        "conversion": df["conversion"].astype("int64"),
        "spend": df["spend"].astype("float64"),
    })
    bought = df["conversion"].astype(int) == 1
    transactions = pd.DataFrame({
        "customer_id": ids[bought],
        "timestamp": nudges["timestamp"][bought] + pd.Timedelta(days=7),
        "amount": df["spend"][bought].astype("float64"),
        "order_id": (ids[bought] + "-1").astype("str"),
    }).reset_index(drop=True)
    return {"transactions": transactions, "nudges": nudges, "customers": customers}


def _cj_file(directory: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (directory / f"{name}.csv.gz", directory / f"{name}.csv"):
            if candidate.exists():
                return candidate
    return None


def complete_journey(path: Path) -> dict[str, pd.DataFrame]:
    """dunnhumby "The Complete Journey" (as CSVs from the R package completejourney) in a directory.

    Returns "transactions" (customer_id = household_id, timestamp = transaction_timestamp, order_id = basket_id,
    product_id, quantity, amount = sales_value, category = the product's department, "UNKNOWN" when it has none,
    channel "store"; no margin in this data). When the files are present, also "nudges" (one row per household and
    campaign: timestamp = campaign start_date, campaign = "campaign_<id>", channel = campaign_type, end_date kept;
    treated is always True because this data has no random hold-out, so it cannot train uplift; cost unknown = NaN),
    "events" (coupon redemptions: event "coupon_redemption", one row per household and redemption date with
    value = the number of coupons redeemed that day, since several coupons share a date and the loader would
    otherwise drop them as duplicates) and "customers" (demographics, all columns as text attributes).
    A path to a file inside the directory is taken as its directory.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    tx_file = _cj_file(directory, "transactions_sample", "transactions")
    if tx_file is None:
        raise InputError(f"{path}: does not look like The Complete Journey: no transactions_sample.csv.gz "
                         f"or transactions.csv.gz in {directory}")
    tx = _read(tx_file, dtype={"household_id": str, "basket_id": str, "product_id": str})
    _require(tx, ["household_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp"],
             tx_file, "The Complete Journey transactions")
    tx = _numeric_columns(tx, ["sales_value", "quantity"], tx_file)
    product_id = as_id(tx["product_id"])
    category = pd.Series("UNKNOWN", index=tx.index, dtype="str")
    if (products_file := _cj_file(directory, "products")) is not None:
        products = _read(products_file, dtype={"product_id": str, "department": str})
        _require(products, ["product_id", "department"], products_file, "The Complete Journey products")
        department = products.assign(product_id=as_id(products["product_id"])).drop_duplicates("product_id")
        department = department.set_index("product_id")["department"]
        category = product_id.map(department).fillna("UNKNOWN").astype("str")
    out = {"transactions": pd.DataFrame({
        "customer_id": as_id(tx["household_id"]).astype("str"),
        "timestamp": _timestamps(tx["transaction_timestamp"], tx_file, "transaction_timestamp"),
        "amount": tx["sales_value"],
        "order_id": as_id(tx["basket_id"]).astype("str"),
        "product_id": product_id.astype("str"),
        "category": category,
        "quantity": tx["quantity"],
        "channel": pd.Series("store", index=tx.index, dtype="str"),
    })}
    campaigns_file, descriptions_file = _cj_file(directory, "campaigns"), _cj_file(directory, "campaign_descriptions")
    if campaigns_file is not None and descriptions_file is not None:
        campaigns = _read(campaigns_file, dtype={"campaign_id": str, "household_id": str})
        _require(campaigns, ["campaign_id", "household_id"], campaigns_file, "The Complete Journey campaigns")
        desc = _read(descriptions_file, dtype={"campaign_id": str})
        _require(desc, ["campaign_id", "campaign_type", "start_date", "end_date"], descriptions_file,
                 "The Complete Journey campaign descriptions")
        desc = desc.assign(**{c: _timestamps(desc[c], descriptions_file, c) for c in ("start_date", "end_date")})
        merged = campaigns.drop_duplicates(["household_id", "campaign_id"]).merge(desc, on="campaign_id", how="inner")
        if merged.empty:
            raise InputError(f"{campaigns_file}: no campaign_id is described in {descriptions_file.name}")
        out["nudges"] = pd.DataFrame({
            "customer_id": as_id(merged["household_id"]).astype("str"),
            "timestamp": merged["start_date"],
            "campaign": ("campaign_" + merged["campaign_id"].str.strip()).astype("str"),
            "channel": merged["campaign_type"].astype("str"),
            "treated": np.ones(len(merged), dtype=bool),
            "cost": np.full(len(merged), np.nan),
            "end_date": merged["end_date"],
        })
    if (redemptions_file := _cj_file(directory, "coupon_redemptions")) is not None:
        red = _read(redemptions_file, dtype={"household_id": str})
        _require(red, ["household_id", "redemption_date"], redemptions_file, "The Complete Journey coupon redemptions")
        per_day = pd.DataFrame({
            "customer_id": as_id(red["household_id"]).astype("str"),
            "timestamp": _timestamps(red["redemption_date"], redemptions_file, "redemption_date"),
        }).value_counts(sort=False).rename("value").reset_index()
        per_day.insert(2, "event", pd.Series("coupon_redemption", index=per_day.index, dtype="str"))
        out["events"] = per_day.sort_values(["timestamp", "customer_id"], ignore_index=True).astype({"value": "float64"})
    if (demographics_file := _cj_file(directory, "demographics")) is not None:
        demo = _read(demographics_file, dtype=str)
        _require(demo, ["household_id"], demographics_file, "The Complete Journey demographics")
        demo.insert(0, "customer_id", as_id(demo.pop("household_id")).astype("str"))
        out["customers"] = demo.reset_index(drop=True)
    return out


ADAPTERS: dict[str, Callable[[Path], dict[str, pd.DataFrame]]] = {
    "online_retail": online_retail,
    "hillstrom": hillstrom,
    "complete_journey": complete_journey,
}


def adapt(source: str, path: Path) -> dict[str, pd.DataFrame]:
    """Map the public data set `source` (a key of `ADAPTERS`) at `path` onto the canonical tables."""
    if source not in ADAPTERS:
        raise InputError(f"unknown source {source!r} (known: {', '.join(sorted(ADAPTERS))})")
    return ADAPTERS[source](Path(path))
