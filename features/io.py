"""Reading CSV/Parquet inputs and writing outputs atomically (temp file, then rename)."""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from features.errors import InputError

__all__ = ["atomic_path", "check_not_an_input", "check_output_dir", "check_output_path", "check_parquet_name",
           "read_table", "staged_parquet", "write_csv", "write_parquet"]

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
            sep = "\t" if name.endswith(".tsv") else ","
            header = pd.read_csv(p, dtype=str, header=None, nrows=1, sep=sep).iloc[0].dropna().str.strip()
            if header.duplicated().any():
                raise InputError(f"{p}: column '{header[header.duplicated()].iloc[0]}' appears twice in the header")
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], index_col=False, sep=sep)
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
    """`path` as a Path if an output file can be written there (nothing is left behind); InputError for a
    directory, a parent that is a file, or a folder where no file can be created. Commands call it before any
    work, `atomic_path` again when it writes."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a directory; the output must be a file path")
    _check_writable(target, target.parents, "the output path")
    return target


def check_output_dir(path: str | Path) -> Path:
    """`path` as a Path if an output folder can be made or written there (nothing is left behind); InputError for
    a file or a folder where nothing can be created. For commands whose output is a folder of files."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: is a file; the output must be a folder")
    _check_writable(target, [target, *target.parents], "the output folder")
    return target


def check_parquet_name(option: str, out: str | Path) -> None:
    """InputError if the Parquet output `out` is named as another format (`scores.csv` would hold Parquet bytes
    that nothing reads as CSV)."""
    name = str(out).rstrip("/").lower()
    if name.endswith((*_CSV_SUFFIXES, ".json", ".xlsx", ".xls", ".gz")):
        raise InputError(f"{option} {out}: the output is Parquet; name it .parquet")


def check_not_an_input(option: str, out: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """InputError if the output `out` (of command-line option `option`) is one of the `inputs` (option -> path):
    the run would replace the input file with its output."""
    target = Path(out).resolve()
    for name, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise InputError(f"{option} {out}: is the input file of {name}; writing there would replace it, "
                             f"choose another path")


def _check_writable(target: Path, folders: Sequence[Path], what: str) -> None:
    """InputError unless `target` can be made in `folders` (its folder, then the parents): one of them a file, or
    the nearest existing one where a probe folder cannot be made (no permission, a read-only or virtual file
    system)."""
    if any(p.exists() and not p.is_dir() for p in folders):
        raise InputError(f"{target}: a parent of {what} is a file, not a directory")
    anchor = next(p for p in folders if p.exists())  # '.' or '/' at the latest
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kairos-probe-", dir=anchor))
    except OSError as exc:
        raise InputError(f"{target}: cannot write in {anchor} ({exc.strerror or exc})") from None


def _umask() -> int:
    """The process's file creation mask: from /proc (Linux), else by setting it and putting it back."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _mode_of(target: Path) -> int:
    """The mode an output at `target` gets: that of the file it replaces, else 0666 minus the umask (mkstemp's
    0600 would keep other readers of the output out)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. Folders made for it
    are removed again if the block fails (when empty).

    The temporary's name carries this host and process id; temporaries of the same target that a dead process of
    this host left behind (a killed batch: no `finally` runs) are removed first.
    """
    target = check_output_path(path)
    made = [p for p in target.parents if not p.exists()]  # innermost first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{target}: cannot create the folder {target.parent} ({exc.strerror or exc})") from None
    done = False
    try:
        _remove_dead_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=f"{_owner(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, _mode_of(target))
            os.replace(tmp, target)
            done = True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        if not done:
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # not empty (another writer), or gone
                    break


def _owner(target: Path) -> str:
    """The prefix of this host's temporaries of `target`."""
    return f".{target.name}.{os.uname().nodename}-"


def _remove_dead_temporaries(target: Path) -> None:
    """Remove temporaries of `target` that a dead process of this host left behind."""
    owner = _owner(target)
    for old in target.parent.iterdir():
        pid = old.name.removeprefix(owner).split(".")[0]
        if old.name.startswith(owner) and old.name.endswith(".tmp") and pid.isdigit() and int(pid) > 0:
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                old.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's
                pass


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
