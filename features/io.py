"""Reading CSV/Parquet inputs and writing outputs atomically (temp file, then rename)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from features.errors import InputError

__all__ = ["atomic_path", "read_table", "write_csv", "write_parquet"]

_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (chosen by extension) with every column as it is stored.

    CSV columns are read as strings so that validation, not the parser, decides what is a number or a date.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir() or p.stat().st_size == 0:
        raise InputError(f"{p}: empty file" if not p.is_dir() else f"{p}: is a directory, expected a file")
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        elif name.endswith(_CSV_SUFFIXES):
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""],
                             sep="\t" if name.endswith(".tsv") else ",")
        else:
            raise InputError(f"{p}: unknown file type (expected .csv or .parquet)")
    except InputError:
        raise
    except pd.errors.EmptyDataError:
        raise InputError(f"{p}: empty file (no header, no rows)") from None
    except Exception as exc:  # noqa: BLE001 - parser and Arrow errors come in many types
        kind = "Parquet" if name.endswith((".parquet", ".pq")) else "CSV"
        raise InputError(f"{p}: not a readable {kind} file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if df.empty:
        raise InputError(f"{p}: empty file (a header but no rows)")
    df.columns = [str(c).strip() for c in df.columns]
    return df


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary's name carries this host and process id; temporaries of the same target that a dead process of
    this host left behind (a killed batch: no `finally` runs) are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    owner = f".{target.name}.{os.uname().nodename}-"
    for old in target.parent.iterdir():
        pid = old.name.removeprefix(owner).split(".")[0]
        if old.name.startswith(owner) and old.name.endswith(".tmp") and pid.isdigit() and int(pid) > 0:
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                old.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's
                pass
    fd, tmp = tempfile.mkstemp(prefix=f"{owner}{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write(df: pd.DataFrame, path: str | Path, writer: Callable[[pd.DataFrame, Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(df, tmp)
    return Path(path)


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to Parquet atomically."""
    return _write(df, path, lambda d, p: d.to_parquet(p, index=False))


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to CSV atomically."""
    return _write(df, path, lambda d, p: d.to_csv(p, index=False))
