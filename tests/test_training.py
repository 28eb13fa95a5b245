"""Training: the models, the registry flow against a temporary MLflow store, promotion, tuning, bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from features.labels import training_frame
from features.pipeline import build_features
from features.schema import parse_as_of
from training.models import DEFAULT_PARAMS, KairosModel, time_split

pytestmark = pytest.mark.slow
AS_OF = parse_as_of("2025-12-31")
FAST = {"n_estimators": 60, "num_leaves": 7, "min_child_samples": 50}


@pytest.fixture(scope="module")
def world():
    from features.simulate import simulate_world

    return simulate_world(n_customers=2500, seed=11)


@pytest.fixture(scope="module")
def fitted(world):
    frame = training_frame(world.transactions, AS_OF, 90, 180, world.events, world.customers, n_cutoffs=4,
                           progress=lambda x, **k: x)
    return KairosModel(FAST, horizon_days=90).fit(frame), frame


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_predictions_are_probabilities_one_row_per_input(world, fitted):
    model, _ = fitted
    feats = build_features(world.transactions, AS_OF, world.events, world.customers)
    scores = model.predict(feats)
    assert len(scores) == len(feats) and scores.index.equals(feats.index)
    assert scores["p_purchase"].gt(0).all() and scores["p_purchase"].lt(1).all() and (scores["expected_value"] >= 0).all()
    one = feats["n_orders"] == 1
    assert scores.loc[one, "p_second_purchase"].notna().all() and scores.loc[~one, "p_second_purchase"].isna().all()
    assert model.value_form_ in ("hurdle", "tweedie")


def test_row_order_and_customer_id_do_not_change_a_score(world, fitted):
    model, _ = fitted
    feats = build_features(world.transactions, AS_OF, world.events, world.customers).head(300)
    base = model.predict(feats)
    shuffled = feats.sample(frac=1, random_state=1).assign(customer_id=lambda d: "X" + d["customer_id"])
    pd.testing.assert_frame_equal(base, model.predict(shuffled).loc[base.index])


def test_a_more_recent_purchase_does_not_lower_the_purchase_probability(world, fitted):
    model, _ = fitted
    feats = build_features(world.transactions, AS_OF, world.events, world.customers)
    repeat = feats.loc[feats["n_orders"] >= 2].head(200)
    recent = repeat.assign(recency_days=repeat["recency_days"] / 4, recency_over_gap=repeat["recency_over_gap"] / 4)
    lifted = model.predict(recent)["p_purchase"].mean() - model.predict(repeat)["p_purchase"].mean()
    assert lifted > 0


def test_time_split_validates_on_newest_cutoff_customers_never_trained_on(fitted):
    _, frame = fitted
    train, valid = time_split(frame)
    cut = frame["as_of"]
    assert valid.any() and (cut[valid] == cut.max()).all() and (cut[train] < cut.max()).all()
    assert not set(frame.loc[train, "customer_id"]) & set(frame.loc[valid, "customer_id"])
    one = frame.loc[cut == cut.max()]
    tr, va = time_split(one)
    assert va.any() and tr.any() and not set(one.loc[tr, "customer_id"]) & set(one.loc[va, "customer_id"])


def test_second_purchase_model_is_the_one_with_the_better_validation_auc(fitted):
    model, _ = fitted
    auc = model.second_auc_
    shared = model.second_.estimator.estimator is model.purchase_.estimator.estimator
    assert shared == (auc["shared"] > auc["own"])


def test_compiled_scores_are_bitwise_those_of_lightgbm_and_the_calibrated_estimators(world, fitted, tmp_path,
                                                                                     monkeypatch):
    import pickle

    from training.compiled import cache_dir
    from training.models import P_FLOOR

    model, _ = fitted
    feats = build_features(world.transactions, AS_OF, world.events, world.customers).head(500)
    X, one = model.matrix(feats), feats["n_orders"].to_numpy() == 1
    monkeypatch.setenv("KAIROS_CACHE_DIR", str(tmp_path))
    plain = model.predict(feats)
    np.testing.assert_array_equal(plain["p_purchase"],
                                  np.clip(model.purchase_.predict_proba(X)[:, 1], P_FLOOR, 1 - P_FLOOR))
    second = (model.second_ or model.purchase_).predict_proba(X[one])[:, 1]
    np.testing.assert_array_equal(plain.loc[one, "p_second_purchase"], np.clip(second, P_FLOOR, 1 - P_FLOOR))
    np.testing.assert_array_equal(plain["expected_value"], np.clip(model._value_predict(model.value_, X), 0, None))
    compiled = pickle.loads(pickle.dumps(model)).compile()
    pd.testing.assert_frame_equal(compiled.predict(feats), plain, check_exact=True)
    assert "_forests_" not in pickle.loads(pickle.dumps(compiled)).__dict__  # machine code is not pickled
    cached = sorted(p.name for p in cache_dir().iterdir())
    distinct = {(f.booster.model_to_string(), f.raw_score) for f in compiled._forests().values()}  # shared: one
    assert len(cached) == len(distinct) and all(n.endswith(".o") for n in cached)  # no temporaries
    again = pickle.loads(pickle.dumps(model)).compile()  # from the cache
    pd.testing.assert_frame_equal(again.predict(feats), plain, check_exact=True)
    assert sorted(p.name for p in cache_dir().iterdir()) == cached


def test_backtest_beats_chance_and_reports_the_baselines(world):
    from training.backtest import run_backtest

    bt = run_backtest(world.transactions, AS_OF, 90, 180, world.events, world.customers, FAST, n_cutoffs=4,
                      progress=lambda x, **k: x)
    for name in ("kairos", "bgnbd", "paretonbd", "rfm"):
        assert bt.metrics[f"{name}.auc"] > 0.6, name
        assert f"new.{name}.auc" in bt.metrics
    assert bt.cutoff + pd.Timedelta(days=180) == AS_OF
    assert 0.5 < bt.metrics["kairos.pred_actual_ratio"] < 2


def test_train_registers_challenger_and_first_champion_then_promotion_gates(world, store, capsys):
    from training.promote import promote
    from training.pyfunc import load_kairos_model
    from training.registry import alias_version
    from training.train import Inputs, train

    inputs = Inputs(world.transactions, world.events, world.customers)
    first = train(inputs, AS_OF, 90, 180, experiment="t", params=FAST)
    assert {"run_id", "model_uri", "registered_version", "metrics"} <= set(first)
    assert json.loads(json.dumps(first, default=str))["metrics"]["kairos.auc"] > 0.6
    assert alias_version("champion") == first["registered_version"] == alias_version("challenger")
    second = train(inputs, AS_OF, 90, 180, experiment="t", params={**FAST, "n_estimators": 2, "learning_rate": 0.001})
    assert alias_version("challenger") == second["registered_version"] and alias_version("champion") == "1"
    gated = promote(version=second["registered_version"])      # a near-constant model is worse: the gate holds
    assert not gated["promoted"] and alias_version("champion") == "1"
    assert gated["comparison"]["champion.auc"] > gated["comparison"]["candidate.auc"]
    # each version is judged by its backtest model (out of sample), not by its final model (trained on those labels)
    assert gated["comparison"]["candidate.auc"] == pytest.approx(second["metrics"]["kairos.auc"], abs=1e-12)
    assert gated["comparison"]["champion.auc"] == pytest.approx(first["metrics"]["kairos.auc"], abs=1e-12)  # same data
    assert promote(version=second["registered_version"], force=True)["promoted"]
    assert alias_version("champion") == second["registered_version"]
    import mlflow

    feats = build_features(world.transactions, AS_OF, world.events, world.customers).head(7)
    out = mlflow.pyfunc.load_model(first["model_uri"]).predict(feats)
    assert len(out) == 7 and {"p_purchase", "p_second_purchase", "expected_value", "reasons"} <= set(out.columns)
    assert isinstance(load_kairos_model("models:/kairos@champion"), KairosModel)
    run = mlflow.get_run(first["run_id"])
    assert {"data_hash", "data_rows", "data_customers", "git_commit"} <= set(run.data.tags)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "backtest")}
    assert {"backtest/backtest_report.html", "backtest/reliability.png", "backtest/shap_summary.png"} <= artifacts


def test_promotion_refuses_versions_of_different_horizons_and_bad_run_ids(store):
    import mlflow

    from training.promote import promote
    from training.registry import MODEL_NAME, client, configure, set_alias

    configure()
    mlflow.set_experiment("t")
    c = client()
    c.create_registered_model(MODEL_NAME)
    for horizon, value_horizon in ((90, 365), (30, 60)):  # versions whose runs logged different horizons
        with mlflow.start_run() as run:
            mlflow.log_params({"horizon_days": horizon, "value_horizon_days": value_horizon})
        c.create_model_version(MODEL_NAME, f"{store}/none", run_id=run.info.run_id)
    for cutoff in ("2025-03-01", "2025-01-01"):  # the same horizons, the champion backtested later
        with mlflow.start_run() as run:
            mlflow.log_params({"horizon_days": 90, "value_horizon_days": 365, "backtest_cutoff": cutoff})
        c.create_model_version(MODEL_NAME, f"{store}/none", run_id=run.info.run_id)
    set_alias("champion", "3")
    with pytest.raises(InputError, match=r"champion 3 was backtested as of 2025-03-01, after candidate 4's"):
        promote(version="4")
    with pytest.raises(InputError, match=r"version 1 has no backtest/backtest_set.parquet"):
        promote(version="1")  # its backtest is not later than 3's, but no backtest model was logged
    set_alias("champion", "1")
    with pytest.raises(InputError, match=r"predict different horizons \(horizon_days 30 vs 90, value_horizon_days"):
        promote(version="2")
    assert promote(version="2", force=True)["promoted"]
    with pytest.raises(InputError, match="not an MLflow run id"):
        promote(run_id="x' or name='kairos")


def test_tune_stores_best_params_that_the_next_train_uses(world, store):
    import mlflow

    from training.train import Inputs, best_tuned_params
    from training.tune import tune

    result = tune(Inputs(world.transactions, world.events, world.customers), AS_OF, 90, 180, experiment="t", trials=2)
    assert best_tuned_params("t", 90, 180) == (result["best_params"], result["run_id"])
    assert best_tuned_params("t", 30, 180) is None  # tuned for other horizons: the next train uses the defaults
    # the first trial is the untuned defaults, so tuning never ends worse than them on validation
    first = mlflow.search_runs(experiment_names=["t"], filter_string="attributes.run_name = 'trial-0'", output_format="list")
    assert first[0].data.params["num_leaves"] == str(DEFAULT_PARAMS["num_leaves"])
    assert result["best_valid_log_loss"] <= first[0].data.metrics["valid.log_loss"]


def test_too_few_customers_is_a_clear_error(store):
    from training.train import Inputs, train

    tx = pd.DataFrame({"customer_id": ["A", "A", "B"], "amount": [10.0, 12.0, 7.0],
                       "timestamp": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-01-05"])})
    with pytest.raises(InputError, match="only 2 customers"):
        train(Inputs(tx), parse_as_of("2024-03-01"))


def test_no_positives_is_a_clear_error():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"customer_id": [f"C{i}" for i in range(400)], "n_orders": rng.integers(1, 4, 400).astype(float),
                          "tenure_days": 100.0, "recency_days": 10.0, "as_of": pd.Timestamp("2024-01-01"),
                          "y_purchase": 0, "y_value": 0.0})
    with pytest.raises(InputError, match="no positives"):
        KairosModel(FAST).fit(frame)


def test_small_data_gets_trees_and_a_constant_model_is_reported(capsys):
    rng = np.random.default_rng(0)
    n = 600  # 150 customers x 4 cutoffs: fewer rows per leaf than the default min_child_samples of 200 allows
    frame = pd.DataFrame({"customer_id": [f"C{i % 150}" for i in range(n)], "n_orders": 1.0 + (np.arange(n) % 3),
                          "tenure_days": 100.0, "recency_days": rng.uniform(1, 90, n),
                          "as_of": pd.Timestamp("2024-01-01") + pd.to_timedelta(14 * (np.arange(n) // 150), "D")})
    frame["y_purchase"] = (rng.random(n) < 0.8 - frame["recency_days"] / 120).astype(int)
    frame["y_value"] = frame["y_purchase"] * 10.0
    model = KairosModel({**FAST, "min_child_samples": 200}).fit(frame)
    assert model.booster().feature_importance().any()  # leaves of at least a tenth of the training rows
    assert "next-purchase model found no split" not in capsys.readouterr().err
    KairosModel({**FAST, "min_child_samples": 200}).fit(frame.assign(recency_days=10.0, n_orders=1.0))
    assert "the next-purchase model found no split in" in capsys.readouterr().err


def test_tune_without_positives_is_a_clear_error(store):
    from training.train import Inputs
    from training.tune import tune

    # 60 customers who each bought once, in January: no purchase in any label window
    tx = pd.DataFrame({"customer_id": [f"C{i}" for i in range(60)], "amount": 10.0,
                       "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(60) % 20, "D")})
    with pytest.raises(InputError, match="no positives for the next-purchase label"):
        tune(Inputs(tx), parse_as_of("2024-09-30"), 30, 30, experiment="t", trials=1)


@pytest.mark.parametrize("option", ["--horizon-days", "--value-horizon-days"])
def test_horizons_beyond_ten_years_are_a_clear_error(option):
    from training.__main__ import main

    with pytest.raises(InputError, match=f"{option} 100000: must be between 1 and 3650 days"):
        main(["train", "--transactions", "unused.csv", "--as-of", "2024-01-01", option, "100000"])


def test_compiling_removes_the_folders_of_killed_compiles_only(tmp_path, monkeypatch):
    import os
    import time

    import lightgbm as lgb

    from training.compiled import STALE_SECONDS, cache_dir, compile_booster

    monkeypatch.setenv("KAIROS_CACHE_DIR", str(tmp_path))
    stale, live = cache_dir() / ".compile-killed", cache_dir() / ".compile-running"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "model.txt").write_text("half")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale, (old, old))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4}, lgb.Dataset(X, X[:, 0] > 0), 5)
    forest = compile_booster(booster)
    np.testing.assert_array_equal(forest.predict(X), booster.predict(X))
    assert not stale.exists() and live.exists()
