"""Cut the small test samples in tests/data from the public data sets (see SOURCE.md); deterministic, re-runnable.

Usage: python tests/data/make_samples.py [--data /work/shared/data]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

__all__ = ["cut_complete_journey", "cut_hillstrom", "cut_online_retail", "main"]

HERE = Path(__file__).resolve().parent
OR_FILE = "online_retail_ii_2009_2010/online_retail_II_sheet_2009-2010.parquet"
HILLSTROM_FILE = "hillstrom/Kevin_Hillstrom_MineThatData_E-MailAnalytics_DataMiningChallenge_2008.03.20.csv"
CJ_DIR = "complete_journey_sample"
OLD_NAMES = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}
SPECIAL_CODES = ["POST", "D", "M", "BANK CHARGES", "ADJUST", "C2"]


def cut_online_retail(src: Path, out_dir: Path) -> pd.DataFrame:
    """All lines of ~150 small customers (smallest ids; with cancellations; with special stock codes) + 50 anonymous lines."""
    df = pd.read_parquet(src)
    known = df[df["Customer ID"].notna()]
    lines = known.groupby("Customer ID").size()
    small = lines[lines <= 30].index
    cancelled = known.loc[known["Invoice"].str.startswith("C"), "Customer ID"].unique()
    chosen = list(sorted(small)[:100])
    chosen += [c for c in sorted(set(cancelled) & set(small)) if c not in chosen][:40]
    for code in SPECIAL_CODES:  # the customer with the fewest lines among those with this code
        having = known.loc[known["StockCode"] == code, "Customer ID"].unique()
        pick = lines[having].sort_values(kind="stable").index[0]
        if pick not in chosen:
            chosen.append(pick)
    anonymous = df[df["Customer ID"].isna()]
    anonymous = pd.concat([anonymous.head(47), anonymous[anonymous["StockCode"] == "B"]])  # incl. the bad-debt rows
    sample = pd.concat([known[known["Customer ID"].isin(chosen)], anonymous]).sort_index()
    sample.to_csv(out_dir / "online_retail_ii_sample.csv", index=False)
    old = sample.rename(columns=OLD_NAMES)
    # The older data set is usually exported from Excel with US-style dates: 12/1/2010 8:26.
    when = pd.to_datetime(old["InvoiceDate"])
    old["InvoiceDate"] = (when.dt.month.astype(str) + "/" + when.dt.day.astype(str) + "/" + when.dt.year.astype(str)
                          + " " + when.dt.hour.astype(str) + ":" + when.dt.strftime("%M"))
    old.to_csv(out_dir / "online_retail_sample.csv", index=False)
    return sample


def cut_hillstrom(src: Path, out_dir: Path, rows: int = 2000) -> None:
    """The header and the first `rows` data lines, byte for byte (CRLF line endings kept)."""
    with open(src, "rb") as fin, open(out_dir / "hillstrom_sample.csv", "wb") as fout:
        fout.writelines(fin.readline() for _ in range(rows + 1))


def _write_gz(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})


def cut_complete_journey(src: Path, out_dir: Path) -> None:
    """~100 households (40 smallest ids with coupon redemptions, the rest smallest ids) and their rows in each table."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(src / f"{name}.csv.gz", dtype=str, keep_default_na=False)

    tx, red = read("transactions_sample"), read("coupon_redemptions")
    households = sorted(set(tx["household_id"]), key=int)
    redeemers = [h for h in households if h in set(red["household_id"])][:40]
    chosen = set(redeemers) | set([h for h in households if h not in redeemers][:60])
    tx = tx[tx["household_id"].isin(chosen)]
    _write_gz(tx, out_dir / "transactions_sample.csv.gz")
    products = read("products")
    _write_gz(products[products["product_id"].isin(set(tx["product_id"]))], out_dir / "products.csv.gz")
    campaigns = read("campaigns")
    _write_gz(campaigns[campaigns["household_id"].isin(chosen)], out_dir / "campaigns.csv.gz")
    shutil.copyfile(src / "campaign_descriptions.csv.gz", out_dir / "campaign_descriptions.csv.gz")
    _write_gz(red[red["household_id"].isin(chosen)], out_dir / "coupon_redemptions.csv.gz")
    demo = read("demographics")
    _write_gz(demo[demo["household_id"].isin(chosen)], out_dir / "demographics.csv.gz")


def main(argv: list[str] | None = None) -> None:
    """Write every sample into the folder of this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"), help="folder of the public data sets")
    args = parser.parse_args(argv)
    cut_online_retail(args.data / OR_FILE, HERE)
    cut_hillstrom(args.data / HILLSTROM_FILE, HERE)
    cut_complete_journey(args.data / CJ_DIR, HERE / "complete_journey_sample")
    written = ["online_retail_ii_sample.csv", "online_retail_sample.csv", "hillstrom_sample.csv"]
    written += [str(p.relative_to(HERE)) for p in sorted((HERE / "complete_journey_sample").iterdir())]
    for name in written:
        print(f"{name}: {(HERE / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
