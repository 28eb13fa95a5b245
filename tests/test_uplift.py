"""Uplift: metrics on hand-made cases, learners and the off-policy value on the demo world, the CLI on Hillstrom."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from features.pipeline import build_features
from features.schema import validate
from training.uplift import LEARNERS, TLearner, feature_spec, nudge_frame, stratified_split
from training.uplift_metrics import (
    holdout_size,
    normalized_auuc,
    normalized_qini,
    policy_value,
    qini_curve,
    uplift_at_k,
)


@pytest.fixture(scope="module")
def randomised() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10k randomised rows whose true effect tau is 0.3 for a third of them and 0 otherwise."""
    rng = np.random.default_rng(0)
    n = 10_000
    t = rng.random(n) < 0.5
    tau = np.where(rng.random(n) < 1 / 3, 0.3, 0.0)
    y = (rng.random(n) < 0.1 + tau * t).astype(float)
    return y, t, tau


def test_qini_curve_on_four_hand_computed_rows():
    # by uplift: (t=1, y=1), (t=0, y=0), (t=1, y=0), (t=0, y=1)
    # Q = Y_t - Y_c * N_t / N_c: 1 - 0, 1 - 0 * 1/1, 1 - 0 * 2/1, 1 - 1 * 2/2 -> 1, 1, 1, 0
    x, q = qini_curve([1, 0, 0, 1], [1, 0, 1, 0], [0.9, 0.7, 0.5, 0.1])
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(q, [0, 1, 1, 1, 0])


def test_perfect_ranking_has_normalised_qini_one_and_random_about_zero(randomised):
    y, t, tau = randomised
    assert normalized_qini(y, t, np.where(t, y, -y)) == pytest.approx(1.0)
    assert normalized_auuc(y, t, np.where(t, y, -y)) == pytest.approx(1.0)
    noise = np.random.default_rng(1).random(len(y))
    assert abs(normalized_qini(y, t, noise)) < 0.05
    assert normalized_qini(y, t, tau) > 0.1  # the true effect ranks well above random


def test_tied_predictions_give_the_same_qini_whatever_the_row_order(randomised):
    y, t, tau = randomised
    q = normalized_qini(y, t, tau)  # two tied blocks
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(len(y))
        assert normalized_qini(y[p], t[p], tau[p]) == pytest.approx(q, abs=1e-12)


def test_uplift_at_k_by_hand():
    # ten rows, best first; top 30% overall = rows 0-2: treated y 1, 1 and control y 0 -> 1.0 - 0.0
    y = [1, 1, 0, 1, 0, 0, 1, 0, 0, 1]
    t = [1, 1, 0, 0, 1, 0, 1, 0, 1, 0]
    u = np.linspace(1, 0, 10)
    at = uplift_at_k(y, t, u, 0.3)
    assert (at["uplift"], at["n_treated"], at["n_control"]) == (1.0, 2, 1)
    # by group: top 30% of the 5 treated (2 rows: y 1, 1) and of the 5 control (2 rows: y 0, 1) -> 1.0 - 0.5
    at = uplift_at_k(y, t, u, 0.3, "by_group")
    assert (at["uplift"], at["n_treated"], at["n_control"]) == (0.5, 2, 2)


def test_holdout_size_matches_the_two_proportion_formula():
    z = 1.959964 + 0.841621
    p = holdout_size(0.10, 0.02, n_treated=10**9)
    assert p["equal_arm"] == int(np.ceil((0.09 + 0.12 * 0.88) * (z / 0.02) ** 2))
    assert p["n_control"] == pytest.approx(0.09 * (z / 0.02) ** 2, rel=1e-3)  # huge campaign: control term only
    small = holdout_size(0.10, 0.02, n_treated=1_000)
    assert small["n_control"] is None and small["min_treated"] == p["equal_arm"]


def test_off_policy_interval_covers_the_true_value_on_synthetic_randomised_data(randomised):
    y, t, tau = randomised
    policy = tau > 0
    est = policy_value(y, t, policy, 0.5, cost=0.05, n_boot=300)
    truth = np.mean(policy * (tau - 0.05))
    assert est["ipw_lo"] <= truth <= est["ipw_hi"]
    assert policy_value(y, t, np.zeros(len(y)), 0.5)["dr"] == 0.0


@pytest.fixture(scope="module")
def world_frame():
    from features.simulate import simulate_world

    w = simulate_world(n_customers=20_000, seed=1, start="2024-07-01", end="2025-12-31")  # about 25k nudges
    frame = nudge_frame(w.nudges, w.transactions, 14, w.events, w.customers, progress=False)
    truth = w.truth.set_index("customer_id").loc[frame["customer_id"]]
    return frame, truth["true_uplift"].to_numpy(), truth["segment"].to_numpy()


@pytest.fixture(scope="module")
def world_fit(world_frame):
    frame, _tu, _seg = world_frame
    spec = feature_spec(frame)
    X, t, y = spec.matrix(frame), frame["treated"].to_numpy(bool), frame["y_purchase"].to_numpy(float)
    train, test = stratified_split(t, y, 0.3, 0)
    model = TLearner(seed=0).fit(X[train], t[train], y[train])
    return model.predict(X[test]), test, model, X


def test_learned_uplift_ranks_the_segments_by_their_true_effect(world_frame, world_fit):
    _frame, _tu, seg = world_frame
    pred, test, *_ = world_fit
    by_segment = pd.Series(pred).groupby(seg[test]).mean()
    assert by_segment["deal_seeker"] > by_segment["casual"] > by_segment["loyalist"]


def test_off_policy_estimate_covers_the_true_policy_value_in_the_simulator(world_frame, world_fit):
    frame, tu, _seg = world_frame
    pred, test, model, X = world_fit
    t, y = frame["treated"].to_numpy(bool)[test], frame["y_purchase"].to_numpy(float)[test]
    mu0, mu1 = model.outcomes(X[test])
    e = float(frame["treated"].mean())
    for policy in (pred > np.quantile(pred, 0.7), np.ones(len(pred), bool)):
        est = policy_value(y, t, policy, e, 0.0, mu0, mu1, n_boot=300)
        truth = float(np.mean(policy * tu[test]))  # extra purchases the nudges cause, per customer
        assert est["dr_lo"] <= truth <= est["dr_hi"], (est, truth)
        assert est["ipw_lo"] <= truth <= est["ipw_hi"], (est, truth)


def test_every_learner_fits_and_predicts_one_uplift_per_row(world_frame):
    frame, *_ = world_frame
    small = frame.iloc[:3000]
    spec = feature_spec(small)
    X = spec.matrix(small)
    for cls in LEARNERS.values():
        pred = cls({"n_estimators": 20}).fit(X, small["treated"], small["y_purchase"]).predict(X)
        assert pred.shape == (len(small),) and np.isfinite(pred).all()


def test_build_features_gives_a_row_to_every_customer_without_transactions():
    customers = validate(pd.DataFrame({"customer_id": ["a", "b", "c"], "region": ["x", "y", "x"]}), "customers")
    tx = validate(pd.DataFrame({"customer_id": ["a"], "timestamp": ["2025-02-01"], "amount": [5.0]}), "transactions")
    feats = build_features(tx, pd.Timestamp("2025-01-01"), None, customers)  # the purchase comes later
    assert feats["customer_id"].tolist() == ["a", "b", "c"]
    assert (feats["n_orders"] == 0).all() and feats["attr_region"].tolist() == ["x", "y", "x"]


@pytest.fixture
def hillstrom_files(tmp_path, monkeypatch):
    from features.adapters import adapt

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    tables = adapt("hillstrom", _sample())
    paths = {}
    for name, df in tables.items():
        paths[name] = tmp_path / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    new = tables["customers"].head(5).assign(customer_id=[f"NEW{i}" for i in range(5)])  # never seen in training
    paths["score"] = tmp_path / "score.csv"
    pd.concat([tables["customers"].head(20), new]).to_csv(paths["score"], index=False)
    return paths


def _sample():
    from pathlib import Path

    return Path(__file__).parent / "data" / "hillstrom_sample.csv"


def _args(p, out, **extra) -> list[str]:
    args = {"--customers": p["customers"], "--nudges": p["nudges"], "--transactions": p["transactions"],
            "--response-days": 14, "--out": out, **extra}
    return [str(v) for kv in args.items() for v in kv]


def test_uplift_cli_end_to_end_on_the_hillstrom_sample(hillstrom_files, tmp_path, capsys):
    from training.__main__ import main

    out = tmp_path / "out"
    assert main(["uplift", *_args(hillstrom_files, out, **{"--score-customers": hillstrom_files["score"]})]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["chosen"] in LEARNERS and result["run_id"]
    page = (out / "uplift_report.html").read_text()
    for part in ("Learners on the test hold-out", "Uplift by decile", "Policy value", "hold-out size",
                 "Treatment / control split",
                 "data:image/png;base64,"):
        assert part in page
    scores = pd.read_csv(out / "uplift_scores.csv")
    assert scores.columns.tolist() == ["customer_id", "uplift"] and len(scores) == 25
    assert scores["customer_id"].str.startswith("NEW").sum() == 5 and scores["uplift"].notna().all()
    import mlflow

    run = mlflow.get_run(result["run_id"])
    assert run.data.params["response_days"] == "14" and "chosen.qini" in run.data.metrics


def test_uplift_cli_rejects_nudges_without_a_hold_out(hillstrom_files, tmp_path, capsys):
    from features.errors import run_cli
    from training.__main__ import main

    nudges = pd.read_csv(hillstrom_files["nudges"]).assign(treated=True)
    nudges.to_csv(hillstrom_files["nudges"], index=False)
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["uplift", *_args(hillstrom_files, tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: nudges: no held-out (treated=false) rows; uplift needs a random hold-out"
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--response-days"):
        main(["uplift", *_args(hillstrom_files, tmp_path / "out", **{"--response-days": 0})])


def test_policy_uses_learned_uplift_when_the_scores_carry_it_and_the_prior_otherwise():
    from serving.policy import LEARNED_NOTE, PRIOR_NOTE, Message, PolicyConfig, decide

    config = PolicyConfig({"email": 0.1}, {"second_purchase_nudge": Message("second_purchase_nudge", "second",
                                                                            ("new",), {"email": 0.04})},
                          new_customer_delay_days=10.0, min_expected_value=5.0)
    rows = pd.DataFrame({"customer_id": ["a", "b", "c"], "as_of": pd.Timestamp("2025-06-30"), "n_orders": 1,
                         "lifecycle_stage": "new", "expected_value": 50.0, "tenure_days": 20.0, "recency_days": 20.0,
                         "uplift": [0.2, 0.001, np.nan], "value_per_purchase": 20.0})
    out = decide(rows, config)
    # a learned uplift (more P(purchase) in the response window) is worth uplift x value per purchase (20), not
    # x the customer's expected value (50, the next 365 days' revenue); a prior is a relative effect on the latter
    assert out["priority"].tolist() == pytest.approx([0.2 * 20 - 0.1, 0.001 * 20 - 0.1, 0.04 * 50 - 0.1])
    assert out["action"].tolist() == ["nudge", "hold", "nudge"]  # b: 0.02 < cost 0.1
    assert LEARNED_NOTE in out.loc[0, "reasons"] and "x value per purchase 20.00" in out.loc[0, "reasons"]
    assert PRIOR_NOTE in out.loc[2, "reasons"] and "x expected value 50.00" in out.loc[2, "reasons"]
    assert LEARNED_NOTE not in decide(rows.drop(columns="uplift"), config).loc[0, "reasons"]


def test_kairos_model_adds_the_uplift_column_when_an_uplift_model_is_attached(world_frame, world_fit):
    from training.models import KairosModel
    from training.uplift import UpliftModel

    frame, *_ = world_frame
    _, _, learner, _ = world_fit
    model = KairosModel()
    model.uplift_ = UpliftModel(learner, feature_spec(frame), 14, value_per_purchase=42.0)
    # only the uplift part is exercised: predict's other models are replaced by constants
    model.array = lambda f: f
    model._scores = lambda X, one: (np.full(len(X), 0.5), np.full(len(X), np.nan), np.ones(len(X)))
    rows = frame.head(7).assign(n_orders=2.0)
    scores = model.predict(rows)
    assert scores.columns.tolist() == ["p_purchase", "p_second_purchase", "expected_value", "uplift",
                                       "value_per_purchase"]
    np.testing.assert_allclose(scores["uplift"], model.uplift_.predict(rows))
    assert (scores["value_per_purchase"] == 42.0).all()


def test_the_fitted_uplift_model_knows_what_one_purchase_is_worth(world_frame):
    from training.uplift import value_per_purchase
    from training.uplift_run import fit_uplift

    frame, *_ = world_frame
    model = fit_uplift(frame.head(4000), 14, "t_learner")
    bought = frame.head(4000)["y_purchase"] > 0
    assert model.value_per_purchase == pytest.approx(frame.head(4000).loc[bought, "y_value"].mean())
    assert value_per_purchase(np.array([0, 1, 1.0]), np.array([0, 10, 30.0])) == 20.0


def test_train_keeps_the_prior_without_randomised_nudges_whose_window_has_ended():
    from training.uplift_run import uplift_for_training

    nudges = validate(pd.DataFrame({"customer_id": ["a", "b"], "timestamp": ["2025-01-01", "2025-12-30"],
                                    "campaign": "c", "channel": "email", "treated": [True, False]}), "nudges")
    tx = validate(pd.DataFrame({"customer_id": ["a"], "timestamp": ["2024-12-01"], "amount": [5.0]}), "transactions")
    assert uplift_for_training(None, tx, pd.Timestamp("2025-12-31"), None, None) is None
    # b's window ends after as-of, so only treated rows are usable: no hold-out, no model
    assert uplift_for_training(nudges, tx, pd.Timestamp("2025-12-31"), None, None) is None


def test_nudge_outcome_window_is_after_the_nudge_up_to_the_response_days():
    nudges = validate(pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"], "timestamp": ["2025-03-01T10:00:00"] * 4, "campaign": "c",
        "channel": "email", "treated": [True, True, False, False]}), "nudges")
    tx = validate(pd.DataFrame({
        "customer_id": ["a", "a", "b", "c", "d", "d"],
        "timestamp": ["2025-03-01T10:00:00",  # a: at the nudge's time: not a response
                      "2025-03-15T10:00:00",  # a: exactly at the end of a 14-day window: a response
                      "2025-03-15T10:00:01",  # b: one second too late
                      "2025-03-02",           # c: a return, not a purchase
                      "2025-03-01T09:00:00",  # d: earlier the same day: neither response nor feature
                      "2025-03-05"],          # d: a purchase
        "amount": [10.0, 20.0, 5.0, -3.0, 7.0, 4.0]}), "transactions")
    frame = nudge_frame(nudges, tx, 14, progress=False)
    assert frame["y_purchase"].tolist() == [1, 0, 0, 1]
    assert frame["y_value"].tolist() == [20.0, 0.0, 0.0, 4.0]
    # features as of the nudge's day start minus 1 ns: nobody was known yet (no customers table), so no features
    assert frame["n_orders"].isna().all()


def test_nudge_outcomes_count_only_the_lines_of_the_response_window_as_the_labels_do():
    from features.labels import build_labels

    nudges = validate(pd.DataFrame({"customer_id": ["a", "b"], "timestamp": "2025-03-01", "campaign": "c",
                                    "channel": "email", "treated": [True, False]}), "nudges")
    tx = validate(pd.DataFrame({
        "customer_id": ["a", "a", "b", "b", "b"], "order_id": ["a1", "a1", "b1", "b1", "b2"],
        "timestamp": ["2025-03-05",   # a: bought in the window ...
                      "2025-04-20",   # a: ... and returned after it: the purchase stands
                      "2025-02-20",   # b: bought before the nudge ...
                      "2025-03-03",   # b: ... and returned in the window: it lowers the value
                      "2025-03-04"],  # b: a purchase
        "amount": [50.0, -60.0, 40.0, -15.0, 25.0], "margin": [20.0, -24.0, 16.0, -6.0, 10.0]}), "transactions")
    no_margin = tx.assign(margin=tx["margin"].mask(tx["timestamp"] > "2025-03-15"))  # one missing, after the window
    for data, value in ((tx, [20.0, 4.0]), (no_margin, [50.0, 10.0])):  # margin only where every line has one
        frame = nudge_frame(nudges, data, 14, progress=False)
        labels = build_labels(data, pd.Timestamp("2025-03-01"), np.array(["a", "b"]), 14, 14)
        assert frame["y_purchase"].tolist() == labels["y_purchase"].tolist() == [1, 1]
        assert frame["y_value"].tolist() == labels["y_value"].tolist() == value


def test_nudge_outcomes_are_the_same_taken_a_few_window_lines_at_a_time():
    """Overlapping windows of many nudges are taken in chunks of (line, nudge) pairs to bound memory (64,000 nudges
    of 365 days over heavy baskets needed GBs at once): any chunk size gives the same outcomes."""
    from features.simulate import simulate_world
    from training.uplift import _outcomes

    w = simulate_world(n_customers=1_000, seed=3, start="2024-07-01", end="2025-12-31")
    whole = _outcomes(w.transactions, w.nudges, 90)
    assert 0 < whole["y_purchase"].sum() < len(whole)
    for max_pairs in (1, 997):
        pd.testing.assert_frame_equal(_outcomes(w.transactions, w.nudges, 90, max_pairs=max_pairs), whole)


def test_nudges_whose_response_window_runs_past_the_data_are_left_out(capsys):
    from training.uplift_run import observed_nudges

    day = pd.Timestamp("2025-01-01")
    nudges = pd.DataFrame({"customer_id": ["a", "b", "c"], "treated": [True, False, True],
                           "timestamp": [day, day + pd.Timedelta(days=10), day + pd.Timedelta(days=20)]})
    tx = pd.DataFrame({"customer_id": ["a"], "amount": [1.0], "timestamp": [day + pd.Timedelta(days=25)]})
    assert observed_nudges(nudges, tx, 14)["customer_id"].tolist() == ["a", "b"]  # c's window ends on day 34
    assert "left out 1 of 3 nudges" in capsys.readouterr().err
    # one campaign whose purchases were recorded up to a date (Hillstrom): every window runs past it, all are kept
    assert len(observed_nudges(nudges, tx, 30)) == 3
    assert "every nudge's 30-day response window ends after the last transaction" in capsys.readouterr().err


def test_the_hold_out_advice_is_for_an_average_campaign_not_a_day_of_nudges():
    from training.uplift_eval import campaign_size

    days = pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"] * 4 + ["2025-02-01"] * 4)
    frame = pd.DataFrame({"campaign": ["jan"] * 12 + ["feb"] * 4, "nudge_time": days,
                          "treated": [True] * 10 + [False] * 2 + [True] * 3 + [False]})
    assert campaign_size(frame) == 7  # 13 treated in 2 campaigns (4 sending days)
