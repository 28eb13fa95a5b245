"""The Spark engine gives the pandas engine's output, row for row (floats within 1e-9), on a local Spark session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("the Spark engine needs Java 17 (no java on PATH, no JAVA_HOME)", allow_module_level=True)

from conftest import register_small_champion

from features.errors import InputError
from features.schema import parse_as_of

pytestmark = [pytest.mark.spark, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),  # pyspark 4.3 on pandas 3
              pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")]
AS_OF = "2025-12-31"
MASTER = "local[2]"
DATA = Path(__file__).parent / "data"


def assert_same(spark_file: Path, pandas_file: Path) -> None:
    got, ref = pd.read_parquet(spark_file), pd.read_parquet(pandas_file)
    assert list(got.columns) == list(ref.columns)
    assert len(got) == len(ref) > 0
    assert got["customer_id"].tolist() == ref["customer_id"].tolist()  # both sorted by customer_id
    for c in ref.columns:
        a, b = ref[c], got[c]
        assert a.dtype == b.dtype, c
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=0, atol=1e-9, equal_nan=True, err_msg=c)
        else:
            assert a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist(), c


@pytest.fixture(scope="module")
def spark():
    from features.spark_engine import spark_session

    return spark_session(MASTER)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A simulated world, the Online Retail sample, and a small champion in a temporary MLflow store."""
    from features.adapters import adapt
    from features.io import write_parquet
    from features.simulate import simulate_world, write_world

    d = tmp_path_factory.mktemp("spark")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
    mp.setenv("KAIROS_CONTACT_DB", f"sqlite:///{d}/contacts.db")
    mp.chdir(d)
    as_of = parse_as_of(AS_OF)
    w = simulate_world(n_customers=800, seed=5)
    world = write_world(w, d / "world")
    retail = {}
    for name, df in adapt("online_retail", DATA / "online_retail_ii_sample.csv").items():
        retail[name] = write_parquet(df, d / "retail" / f"{name}.parquet")
    _, version, _ = register_small_champion(w, as_of, "test-spark", n_estimators=30)
    world["aha_rules"] = d / "aha_rules.csv"  # the world's runs also carry Aha-rule counts and messages
    pd.DataFrame({"action": ["app_session", "purchase_categories"], "min_count": [3, 2], "within_days": [30, 3],
                  "lift": [1.7, 1.2]}).to_csv(world["aha_rules"], index=False)
    yield SimpleNamespace(dir=d, world=world, retail=retail, version=version)
    mp.undo()


def _inputs(paths: dict) -> list[str]:
    args = ["--transactions", str(paths["transactions"])]
    for k in ("events", "customers"):
        if k in paths:
            args += [f"--{k}", str(paths[k])]
    return args


@pytest.mark.parametrize("data", ["world", "retail"])
def test_features_build_spark_equals_pandas(spark, store, data):
    from features.__main__ import main

    paths, d = getattr(store, data), store.dir
    base = [*_inputs(paths), "--as-of", AS_OF, *(["--aha-rules", str(paths["aha_rules"])] if "aha_rules" in paths else [])]
    assert main(["build", *base, "--out", str(d / f"{data}_pandas.parquet")]) == 0
    assert main(["build", *base, "--out", str(d / f"{data}_spark.parquet"), "--engine", "spark",
                 "--spark-master", MASTER, "--partitions", "3"]) == 0
    assert_same(d / f"{data}_spark.parquet", d / f"{data}_pandas.parquet")


@pytest.mark.parametrize("data", ["world", "retail"])
def test_serving_batch_spark_equals_pandas(spark, store, data):
    from serving.batch import BatchOptions, run_batch
    from serving.spark_batch import run_batch_spark

    paths, d = getattr(store, data), store.dir
    opts = {"transactions": str(paths["transactions"]), "events": str(paths.get("events") or "") or None,
            "customers": str(paths.get("customers") or "") or None, "as_of": AS_OF, "log_mlflow": False,
            "record": False, "reasons": "all", "aha_rules": str(paths["aha_rules"]) if "aha_rules" in paths else None}
    a = run_batch(BatchOptions(out=str(d / f"{data}_scores_pandas.parquet"), **opts))
    b = run_batch_spark(BatchOptions(out=str(d / f"{data}_scores_spark.parquet"), **opts), MASTER, 3)
    assert_same(d / f"{data}_scores_spark.parquet", d / f"{data}_scores_pandas.parquet")
    assert (a["customers"], a["nudges"], a["decisions"]) == (b["customers"], b["nudges"], b["decisions"])
    if "aha_rules" in paths:
        assert pd.read_parquet(a["out"])["message"].eq("aha_app_session").any()


def test_a_spark_rerun_replaces_its_own_earlier_contacts_and_keeps_other_runs(spark, store, tmp_path, monkeypatch):
    from serving.batch import BatchOptions
    from serving.contact_log import ContactLog
    from serving.spark_batch import run_batch_spark

    monkeypatch.setenv("KAIROS_CONTACT_DB", f"sqlite:///{tmp_path}/contacts.db")
    paths = store.world
    opts = BatchOptions(out=str(tmp_path / "s.parquet"), transactions=str(paths["transactions"]),
                        events=str(paths["events"]), customers=str(paths["customers"]), as_of=AS_OF,
                        log_mlflow=False, reasons="none")
    first = run_batch_spark(opts, MASTER, 3)
    scores = pd.read_parquet(tmp_path / "s.parquet")
    held = scores.loc[scores["action"] == "hold", "customer_id"].iloc[0]
    # an earlier attempt of this run that nudged a customer now held, and another data set's run at the same time
    stray = pd.DataFrame({"customer_id": [held, "OTHER-DATA-SET"], "action": "nudge", "channel": "email",
                          "message": "m", "priority": 1.0, "model_version": "0"})
    ContactLog().record(stray, parse_as_of(AS_OF), "batch")
    again = run_batch_spark(opts, MASTER, 3)
    batch = ContactLog().history().query("source == 'batch'")
    assert again["nudges"] == first["nudges"] == (batch["customer_id"] != "OTHER-DATA-SET").sum()
    assert held not in set(batch["customer_id"]) and "OTHER-DATA-SET" in set(batch["customer_id"])


def test_a_spark_batch_puts_its_outputs_in_place_once_the_nudges_are_recorded(spark, store, tmp_path, monkeypatch):
    import sqlite3

    import sqlalchemy as sa

    from serving.batch import BatchOptions
    from serving.contact_log import ContactLog
    from serving.spark_batch import run_batch_spark

    def locked(self, *args, **kw):
        raise sa.exc.OperationalError("INSERT INTO contacts", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setenv("KAIROS_CONTACT_DB", f"sqlite:///{tmp_path}/contacts.db")
    paths, d = store.world, tmp_path / "out"
    opts = BatchOptions(out=f"{d}/s/", features_out=str(d / "f.parquet"), transactions=str(paths["transactions"]),
                        events=str(paths["events"]), customers=str(paths["customers"]), as_of=AS_OF,
                        log_mlflow=False, reasons="none")
    with monkeypatch.context() as m, pytest.raises(
            InputError, match="contact database sqlite:///.*: cannot record .*database is locked"):
        m.setattr(ContactLog, "record", locked)
        run_batch_spark(opts, MASTER, 3)
    assert not any(d.iterdir())  # neither the scores directory nor the features file, nor their temporaries
    s = run_batch_spark(opts, MASTER, 3)
    nudges = (pd.read_parquet(d / "s")["action"] == "nudge").sum()
    assert sorted(p.name for p in d.iterdir()) == ["f.parquet", "s"]
    assert (d / "s").is_dir() and s["out"] == f"{d}/s/"  # `dir/`: a Parquet directory of parts, as the README says
    assert {p.name for p in (d / "s").iterdir()} <= {f"part-{i:05d}.parquet" for i in range(3)}
    assert s["recorded_contacts"] == len(ContactLog().history()) == nudges > 0


def test_a_spark_directory_output_replaces_only_a_previous_parquet_output(spark, store, tmp_path):
    from features.__main__ import main
    from serving.__main__ import main as serving_main

    paths = store.retail
    build = ["build", *_inputs(paths), "--as-of", AS_OF, "--engine", "spark", "--spark-master", MASTER]
    assert main([*build, "--out", f"{tmp_path}/f/", "--partitions", "3"]) == 0
    first = sorted(p.name for p in (tmp_path / "f").iterdir())
    for stale in ("part-09999.parquet", "_SUCCESS", ".part-09999.parquet.crc"):  # still a previous output
        (tmp_path / "f" / stale).touch()
    assert main([*build, "--out", f"{tmp_path}/f/", "--partitions", "3"]) == 0  # replaced, not merged
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == first
    data = tmp_path / "data"  # a directory holding other files: refused before any work, left as it was
    data.mkdir()
    shutil.copy(paths["transactions"], data / "transactions.parquet")
    with pytest.raises(InputError, match=f"{data}: an existing directory holding other files .*transactions.parquet"):
        main([*build, "--out", str(data)])
    with pytest.raises(InputError, match=f"{data}/: an existing directory holding other files"):
        serving_main(["batch", "--transactions", str(data / "transactions.parquet"), "--as-of", AS_OF,
                      "--out", f"{data}/", "--model-uri", "models:/does-not-exist/1", "--engine", "spark",
                      "--spark-master", MASTER])
    assert [p.name for p in data.iterdir()] == ["transactions.parquet"]


def test_bad_input_on_spark_is_one_line_and_writes_nothing(spark, tmp_path):
    from features.__main__ import main
    from serving.__main__ import main as serving_main

    bad = tmp_path / "t.csv"
    bad.write_text("customer_id,timestamp,amount\nA,2024-01-01,10\nB,2024-01-02,ten\n")
    with pytest.raises(InputError, match="t.csv: column 'amount' is not a number.*'ten'"):
        main(["build", "--transactions", str(bad), "--as-of", AS_OF, "--out", str(tmp_path / "f.parquet"),
              "--engine", "spark", "--spark-master", MASTER])
    with pytest.raises(InputError, match="missing required column"):
        (tmp_path / "m.csv").write_text("customer_id,amount\nA,10\n")
        main(["build", "--transactions", str(tmp_path / "m.csv"), "--as-of", AS_OF, "--out",
              str(tmp_path / "f.parquet"), "--engine", "spark", "--spark-master", MASTER])
    with pytest.raises(InputError, match="column 'amount' is not a number"):  # before the model is loaded
        serving_main(["batch", "--transactions", str(bad), "--as-of", AS_OF, "--out", str(tmp_path / "s.parquet"),
                      "--model-uri", "models:/does-not-exist/1", "--engine", "spark", "--spark-master", MASTER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "t.csv"]


def test_a_file_uri_output_is_a_spark_directory_not_a_local_file_path():
    from features.spark_engine import is_file_output

    assert is_file_output("scores.parquet") and not is_file_output("scores/")
    assert not is_file_output("file:///tmp/scores.parquet")  # was a file "file:/tmp/..." under the working directory
