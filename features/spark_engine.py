"""The Spark engine of `features build` (and of `serving batch`): the very same `build_features`, per customer group.

How it runs:
1. Each input (any path or URI Spark reads: local, `s3a://`, `abfss://`, ...; CSV or Parquet by extension) is read
   by Spark, CSV as strings (as the pandas engine reads it, so validation decides what is a number or a date).
   Its first row is validated on the driver (missing columns and empty tables fail before any job).
2. The three tables are unioned into one frame (columns prefixed per table, plus a table tag) and grouped by a
   partition key `pmod(xxhash64(customer_id), P)`: every group holds all rows of its customers in all tables.
3. `groupBy(key).applyInPandas(fn)`: `fn` splits the group back into the tables, validates each with
   `features.schema.validate` (same cleaning, same one-line errors; row numbers count within the group) and calls
   `features.pipeline.build_features`, which gives the same rows for any subset of customers holding all of each
   customer's rows.
4. The output schema is declared explicitly: the features of `features.spec.FEATURE_DOCS` (doubles, text for
   `lifecycle_stage`/`first_order_channel`) and the `attr_*` columns, whose types are decided once over the whole
   customers table (a text column is numeric only if all its values are), as the pandas engine decides them.

`features build --engine spark` writes one Parquet file (all rows sorted by customer_id, written by one task to a
temporary directory, then renamed onto `--out`), like the pandas engine; `--out DIR/` (ending in a slash, or an
existing directory) writes a Spark Parquet directory instead (many files, for outputs too big for one task).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.aha import action_column
from features.errors import InputError
from features.pipeline import FeatureParams

__all__ = [
    "SparkInputs",
    "build_features_spark",
    "check_dir_output",
    "from_spark",
    "input_error_from",
    "is_file_output",
    "read_inputs",
    "run_build",
    "spark_input_errors",
    "spark_session",
    "staged_output",
    "to_spark",
    "write_output",
]

TABLES = ("transactions", "events", "customers")
PREFIX = {"transactions": "t__", "events": "e__", "customers": "c__"}
KEY, TAG = "_kairos_part", "_kairos_table"


def spark_session(master: str = "local[*]", app: str = "kairos", conf: dict[str, str] | None = None):
    """A Spark session (or the active one) with UTC session time, Arrow on, and workers on this Python.

    `conf` (and `KAIROS_SPARK_CONF`, "key=value;key=value") adds settings, e.g. spark.driver.memory for local runs;
    under spark-submit the cluster's own settings apply."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    quiet = "ignore:PySpark does not yet fully support pandas:FutureWarning"  # pandas 3: see pyproject's spark extra
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    import warnings

    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    warnings.filterwarnings("ignore", "toPandas attempted Arrow optimization", UserWarning)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError("--engine spark needs pyspark: pip install 'kairos[spark]'") from None
    builder = (SparkSession.builder.appName(app).master(master)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "8")
               .config("spark.sql.legacy.parquet.nanosAsLong", "true")  # pandas writes TIMESTAMP(NANOS)
               .config("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"]))
    extra = dict(kv.split("=", 1) for kv in os.environ.get("KAIROS_SPARK_CONF", "").split(";") if "=" in kv)
    for key, value in {**extra, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # a bad input row fails a task: Spark would log the task's traceback at ERROR before Kairos's one-line error
    spark.sparkContext.setLogLevel(os.environ.get("KAIROS_SPARK_LOG_LEVEL", "FATAL"))
    return spark


@contextmanager
def spark_input_errors() -> Iterator[None]:
    """Re-raise a Spark task's failure caused by bad input as the one-line InputError it was inside the task."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        err = input_error_from(exc)
        if err is not None:
            raise err from None
        raise


def input_error_from(exc: BaseException) -> InputError | None:
    """The InputError raised inside a Spark task (Spark wraps it in a PythonException), if that is what failed."""
    text = str(exc)
    m = re.search(r"features\.errors\.InputError: (.*)", text)
    return InputError(m.group(1).strip()) if m else None


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _read(spark, kind: str, uri: str):
    """Read one input with Spark; CSV columns as strings, like `features.io.read_table`."""
    from pyspark.errors import AnalysisException

    name = uri.lower().rstrip("/")
    if _is_local(uri):
        p = Path(uri.removeprefix("file://"))
        if not p.exists():
            raise InputError(f"{uri}: file not found")
        if p.is_file() and p.stat().st_size == 0:
            raise InputError(f"{uri}: empty file")
    try:
        if name.endswith((".parquet", ".pq")):
            df = spark.read.parquet(uri)
        elif name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            df = (spark.read.option("header", True).option("inferSchema", False).option("mode", "FAILFAST")
                  .option("sep", "\t" if name.endswith(".tsv") else ",").option("multiLine", True)
                  .option("escape", '"').csv(uri))
        else:
            raise InputError(f"{uri}: unknown file type (expected .csv or .parquet)")
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise InputError(f"{uri}: file not found") from None
        raise InputError(f"{uri}: not a readable input ({' '.join(str(exc).split())[:160]})") from None
    for c in df.columns:
        if c != c.strip():
            df = df.withColumnRenamed(c, c.strip())
    return df


def _nanos_columns(df, uri: str) -> list[str]:
    """Columns of a Parquet input stored as TIMESTAMP(NANOS) (pandas' default), which Spark reads as longs."""
    from pyspark.sql.types import LongType

    longs = [f.name for f in df.schema.fields if isinstance(f.dataType, LongType)]
    if not longs:
        return []
    if _is_local(uri) and Path(uri.removeprefix("file://")).is_file():
        import pyarrow.parquet as pq

        schema = pq.read_schema(uri.removeprefix("file://"))
        return [c for c in longs if c in schema.names and str(schema.field(c).type).startswith("timestamp[ns")]
    return [c for c in longs if c == "timestamp" or c.endswith(("_date", "_at", "_time"))]


def _restore_nanos(pdf: pd.DataFrame, nanos: list[str]) -> pd.DataFrame:
    for c in nanos:
        if c in pdf.columns:
            pdf[c] = pd.to_datetime(pd.to_numeric(pdf[c]), unit="ns")
    return pdf


def _id_column(df):
    """customer_id as the text `features.schema` makes of it (whole floats lose their '.0'), for the hash."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    c = F.col("customer_id")
    if isinstance(df.schema["customer_id"].dataType, (DoubleType, FloatType)):
        return F.when(c == F.floor(c), c.cast("long").cast("string")).otherwise(c.cast("string"))
    return F.trim(c.cast("string"))


@dataclass
class SparkInputs:
    """The raw inputs as Spark frames, with their sources (for error messages) and column lists."""

    frames: dict[str, object]
    sources: dict[str, str]
    columns: dict[str, list[str]] = field(default_factory=dict)
    nanos: dict[str, list[str]] = field(default_factory=dict)


def read_inputs(spark, transactions: str, events: str | None = None, customers: str | None = None) -> SparkInputs:
    """Read the inputs and validate their first rows on the driver (same errors as the pandas engine)."""
    from features.schema import validate

    frames, sources, columns, nanos = {}, {}, {}, {}
    for kind, uri in zip(TABLES, (transactions, events, customers)):
        if uri is None:
            continue
        df = _read(spark, kind, str(uri))
        nanos[kind] = _nanos_columns(df, str(uri))
        head = _restore_nanos(df.limit(1).toPandas(), nanos[kind])
        if head.empty:
            raise InputError(f"{uri}: empty file (a header but no rows)")
        validate(head, kind, str(uri))  # missing required columns, or a bad first row
        frames[kind], sources[kind], columns[kind] = df, str(uri), list(df.columns)
    return SparkInputs(frames, sources, columns, nanos)


def _attr_types(inputs: SparkInputs) -> dict[str, str]:
    """Output type of each `attr_*` column ("double" or "string"), decided over the whole customers table."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, DateType, NumericType, TimestampNTZType, TimestampType

    if "customers" not in inputs.frames:
        return {}
    df = inputs.frames["customers"]
    out, text_cols = {}, []
    for f in df.schema.fields:
        if f.name == "customer_id":
            continue
        if (isinstance(f.dataType, (TimestampType, TimestampNTZType, DateType)) or f.name.endswith("_date")
                or f.name in inputs.nanos.get("customers", [])):
            out[f"attr_{f.name}_days"] = "double"
        elif isinstance(f.dataType, (NumericType, BooleanType)):
            out[f"attr_{f.name}"] = "double"
        else:
            out[f"attr_{f.name}"] = "?"
            text_cols.append(f.name)
    if text_cols:  # numeric only if every non-empty value parses as a number (as pd.to_numeric would)
        row = df.select(*[F.sum(F.when(F.col(c).isNotNull() & F.expr(f"try_cast(`{c}` as double)").isNull(), 1)
                                .otherwise(0)).alias(c) for c in text_cols]).first()
        for c in text_cols:
            out[f"attr_{c}"] = "string" if (row[c] or 0) > 0 else "double"
    return out


def feature_schema(inputs: SparkInputs, params: FeatureParams = FeatureParams()):
    """The declared output schema of `build_features` on these inputs (and the attr column types)."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    from features.spec import FEATURE_DOCS

    text = {"lifecycle_stage", "first_order_channel"}
    fields = [StructField("customer_id", StringType()), StructField("as_of", LongType())]
    fields += [StructField(n, StringType() if n in text else DoubleType()) for n in FEATURE_DOCS]
    if "lifecycle_stage" not in FEATURE_DOCS:
        fields.append(StructField("lifecycle_stage", StringType()))
    fields += [StructField(action_column(a, d), DoubleType()) for a, d in params.aha_actions]
    attrs = _attr_types(inputs)
    fields += [StructField(n, StringType() if t == "string" else DoubleType()) for n, t in attrs.items()]
    return StructType(fields), attrs


def _union(inputs: SparkInputs, partitions: int):
    """One frame of all tables: prefixed columns, a table tag and the partition key of the customer."""
    from pyspark.sql import functions as F

    parts = []
    for kind, df in inputs.frames.items():
        key = F.pmod(F.xxhash64(_id_column(df)), F.lit(partitions)).cast("int")
        parts.append(df.select(key.alias(KEY), F.lit(kind).alias(TAG),
                               *[F.col(f"`{c}`").alias(PREFIX[kind] + c) for c in df.columns]))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p, allowMissingColumns=True)
    return out


def group_tables(pdf: pd.DataFrame, columns: dict[str, list[str]], sources: dict[str, str],
                 nanos: dict[str, list[str]]) -> dict:
    """Split one group of the union back into validated canonical tables (None where a table has no rows here)."""
    from features.schema import validate

    tables: dict[str, pd.DataFrame | None] = {k: None for k in TABLES}
    tag = pdf[TAG].to_numpy()
    for kind, cols in columns.items():
        rows = pdf.loc[tag == kind, [PREFIX[kind] + c for c in cols]]
        if len(rows):
            rows = rows.reset_index(drop=True)
            rows.columns = cols
            rows = _restore_nanos(rows, nanos.get(kind, []))
            tables[kind] = validate(rows, kind, sources[kind])
    return tables


def _fix_attrs(feats: pd.DataFrame, customers: pd.DataFrame | None, attrs: dict[str, str]) -> pd.DataFrame:
    """Give the attr columns their table-wide type (a group may hold only number-like values of a text column)."""
    for name, kind in attrs.items():
        if name not in feats.columns:
            feats[name] = None if kind == "string" else float("nan")
        elif kind == "string" and customers is not None and feats[name].dtype.kind == "f":
            col = name.removeprefix("attr_")
            table = customers.drop_duplicates("customer_id").set_index(customers["customer_id"].astype(str))[col]
            s = table.reindex(feats["customer_id"].astype(str).to_numpy())
            feats[name] = s.astype("str").where(s.notna(), None).to_numpy(dtype=object)
        elif kind == "double" and feats[name].dtype.kind != "f":  # e.g. 'NaN' text: Spark's cast and pandas differ
            feats[name] = pd.to_numeric(feats[name], errors="coerce").astype("float64")
    return feats


def features_udf(as_of: pd.Timestamp, inputs: SparkInputs, schema, attrs: dict[str, str],
                 params: FeatureParams = FeatureParams()):
    """The function applied to each customer group: split, validate, `build_features`."""
    columns, sources, nanos = dict(inputs.columns), dict(inputs.sources), dict(inputs.nanos)
    names = [f.name for f in schema.fields]

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:
        from features.pipeline import build_features

        t = group_tables(pdf, columns, sources, nanos)
        if t["transactions"] is None:  # customers with events or attributes only in this group
            t["transactions"] = pd.DataFrame({"customer_id": pd.Series([], dtype="str"),
                                              "timestamp": pd.Series([], dtype="datetime64[ns]"),
                                              "amount": pd.Series([], dtype="float64")})
        feats = build_features(t["transactions"], as_of, t["events"], t["customers"], params)
        feats = _fix_attrs(feats, t["customers"], attrs)
        return to_spark(feats[names])

    return fn


def build_features_spark(spark, inputs: SparkInputs, as_of: pd.Timestamp, partitions: int | None = None,
                         params: FeatureParams = FeatureParams()):
    """The features of all customers as a Spark frame (one group per partition key; rows unsorted)."""
    partitions = partitions or max(spark.sparkContext.defaultParallelism * 4, 8)
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))  # one shuffle partition per customer group
    schema, attrs = feature_schema(inputs, params)
    union = _union(inputs, partitions)
    return union.groupBy(KEY).applyInPandas(features_udf(as_of, inputs, schema, attrs, params), schema=schema)


def to_spark(df: pd.DataFrame) -> pd.DataFrame:
    """Spark timestamps are microseconds and as-of is the last nanosecond of a day: carry `as_of` as int64 ns."""
    df = df.copy()
    df["as_of"] = df["as_of"].astype("datetime64[ns]").astype("int64")
    return df


def from_spark(df: pd.DataFrame, sort_by: str | None = "customer_id") -> pd.DataFrame:
    """Undo `to_spark` (and sort by `sort_by`, as the pandas engine does)."""
    df["as_of"] = pd.to_datetime(df["as_of"].astype("int64"), unit="ns").astype("datetime64[ns]")
    if sort_by:
        df = df.sort_values(sort_by, kind="stable").reset_index(drop=True)
    for c in df.columns:
        if df[c].dtype == object and c not in ("as_of",):
            df[c] = df[c].astype("str").where(df[c].notna(), None) if df[c].map(type).eq(str).any() else df[c]
    return df


def _pyarrow_fs(uri: str):
    import pyarrow.fs as pafs

    if _is_local(uri):
        return pafs.LocalFileSystem(), uri.removeprefix("file://")
    return pafs.FileSystem.from_uri(re.sub(r"^s3a://", "s3://", uri))


@contextmanager
def _staged_parquet_dir(sdf, out: str, sort_by: str) -> Iterator[str]:
    """Write a Spark frame of `to_spark` rows as a Parquet directory, one file per partition written by pandas
    (same column types as the pandas engine's file), into a temporary directory moved onto `out` only if the block
    succeeds; yields `out`."""
    fs, path = _pyarrow_fs(out.rstrip("/"))
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}"
    fs.create_dir(tmp, recursive=True)
    uri_tmp = tmp if _is_local(out) else out.rstrip("/").replace(path.rstrip("/"), tmp)

    def write(batches):
        from pyspark import TaskContext

        frames = list(batches)
        if frames:
            df = from_spark(pd.concat(frames, ignore_index=True), sort_by)
            wfs, wpath = _pyarrow_fs(uri_tmp)
            with wfs.open_output_stream(f"{wpath}/part-{TaskContext.get().partitionId():05d}.parquet") as f:
                df.to_parquet(f, index=False)
            yield pd.DataFrame({"rows": [len(df)]})

    try:
        sdf.mapInPandas(write, "rows long").collect()
        yield out
        try:
            fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass
        fs.move(tmp, path)
    finally:
        try:
            fs.delete_dir(tmp)
        except (FileNotFoundError, OSError):
            pass


def is_file_output(out: str) -> bool:
    """Whether `write_output` writes `out` as one local file (not a Parquet directory: `dir/`, a directory, a URI,
    file:// ones included: a local file is a plain path)."""
    return not (out.endswith("/") or "://" in out or Path(out).is_dir())


_REPLACEABLE = re.compile(r"part-.*\.parquet|_SUCCESS|\..*\.crc")  # a previous Parquet output and Spark's markers


def check_dir_output(out: str) -> None:
    """InputError before any work if the Parquet directory output `out` exists and holds anything but a previous
    Parquet output (part-*.parquet, _SUCCESS, .crc files), which `write_output` replaces: never delete other files."""
    import pyarrow.fs as pafs

    if is_file_output(out):
        return
    fs, path = _pyarrow_fs(out.rstrip("/"))
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        raise InputError(f"{out}: is a file; a Parquet directory output needs a directory path")
    if kind == pafs.FileType.Directory:
        other = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                       if i.type != pafs.FileType.File or not _REPLACEABLE.fullmatch(i.base_name))
        if other:
            raise InputError(f"{out}: an existing directory holding other files than a previous Parquet output "
                             f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); use a new or empty directory")


@contextmanager
def staged_output(sdf, out: str, sort_by: str = "customer_id") -> Iterator[str]:
    """`write_output`, put in place only if the block succeeds (the batch records its contacts in between); yields
    the path written."""
    from features.io import staged_parquet

    if is_file_output(out):
        with staged_parquet(from_spark(sdf.toPandas(), sort_by), out) as path:
            yield str(path)
    else:
        with _staged_parquet_dir(sdf, out, sort_by) as path:
            yield path


def write_output(sdf, out: str, sort_by: str = "customer_id") -> str:
    """`--out x.parquet`: ONE file like the pandas engine's (rows collected to the driver, sorted, written atomically);
    `--out dir/`, an existing directory or a URI: a Parquet directory written by the executors."""
    with staged_output(sdf, out, sort_by) as path:
        return path


def run_build(transactions: str, as_of: pd.Timestamp, out: str, events: str | None = None,
              customers: str | None = None, master: str = "local[*]", partitions: int | None = None,
              params: FeatureParams = FeatureParams()) -> dict:
    """`features build --engine spark`: read, build per customer group, write; returns counts."""
    check_dir_output(out)
    spark = spark_session(master)
    inputs = read_inputs(spark, transactions, events, customers)
    feats = build_features_spark(spark, inputs, as_of, partitions, params)
    with spark_input_errors():
        path = write_output(feats, out)
        n = feats.count() if path.endswith("/") or not path.endswith(".parquet") else len(pd.read_parquet(path, columns=["customer_id"]))
    return {"out": path, "customers": n, "features": len(feats.columns) - 2}
