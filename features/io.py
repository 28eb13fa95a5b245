"""Reading CSV/Parquet inputs and writing outputs atomically (temp file, then rename)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.errors import InputError

__all__ = ["atomic_path", "check_output_path", "read_table", "staged_parquet", "write_csv", "write_parquet"]

_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
_SMALL_DICTIONARY = 64 * 1024  # bytes of a column chunk's dictionary page: few distinct values


def _small_dictionaries(path: Path, columns: Collection[str]) -> list[str]:
    """Those of `columns` whose Parquet dictionary pages are small in every row group (few distinct values).

    Arrow reads them straight from the dictionaries (no string per row is built or hashed); a column with big
    dictionaries (ids) is faster read as strings, since merging its row groups' dictionaries costs more."""
    meta = pq.read_metadata(path)
    if meta.num_row_groups == 0:
        return []
    names = [meta.schema.column(j).path for j in range(meta.num_columns)]
    chunks = [[meta.row_group(i).column(j) for i in range(meta.num_row_groups)] for j in range(meta.num_columns)]
    return [name for name, chunk in zip(names, chunks) if name in columns and all(
        c.has_dictionary_page and c.data_page_offset - c.dictionary_page_offset <= _SMALL_DICTIONARY for c in chunk)]


def read_table(path: str | Path, dictionary: Collection[str] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file (chosen by extension) with every column as it is stored.

    CSV columns are read as strings so that validation, not the parser, decides what is a number or a date.
    Parquet columns named in `dictionary` that have few distinct values come as categoricals.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir() or p.stat().st_size == 0:
        raise InputError(f"{p}: empty file" if not p.is_dir() else f"{p}: is a directory, expected a file")
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            table = pq.read_table(p, read_dictionary=_small_dictionaries(p, dictionary) or None)
            # a block per column (no copy into 2-D blocks), Arrow buffers released as they are converted
            df = table.to_pandas(split_blocks=True, self_destruct=True)
        elif name.endswith(_CSV_SUFFIXES):
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], index_col=False,
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


def check_output_path(path: str | Path) -> Path:
    """`path` as a Path if an output file can be written there (nothing is created); InputError for a directory
    or a parent that is a file. Commands call it before any work, `atomic_path` again when it writes."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a directory; the output must be a file path")
    if any(p.exists() and not p.is_dir() for p in target.parents):
        raise InputError(f"{target}: a parent of the output path is a file, not a directory")
    return target


def _umask() -> int:
    """The process's file creation mask (read by setting it, then put back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary's name carries this host and process id; temporaries of the same target that a dead process of
    this host left behind (a killed batch: no `finally` runs) are removed first.
    """
    target = check_output_path(path)
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would keep other readers of the output out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staged_parquet(df: pd.DataFrame, path: str | Path) -> Iterator[Path]:
    """Write `df` to Parquet in a temporary beside `path`, renamed onto `path` only if the block succeeds (the batch
    records its contacts in between); yields `path`."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
        yield Path(path)


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to Parquet atomically."""
    with staged_parquet(df, path) as target:
        return target


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)
