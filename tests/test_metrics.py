"""Metric functions: perfect/random references, a hand-computed case, ties, calibration and degenerate inputs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from training.metrics import (
    classification_metrics,
    decile_mape,
    decile_table,
    expected_calibration_error,
    lift_curve,
    normalized_gini,
    reliability_curve,
    value_metrics,
)


@pytest.fixture(scope="module")
def rng_values() -> np.ndarray:
    return np.random.default_rng(0).gamma(0.5, 100.0, 10_000)


def test_normalized_gini_is_one_for_perfect_predictions(rng_values):
    assert normalized_gini(rng_values, rng_values) == pytest.approx(1.0)
    assert normalized_gini(rng_values, 3 * rng_values + 7) == pytest.approx(1.0)  # only the order matters


def test_normalized_gini_is_about_zero_for_random_predictions(rng_values):
    noise = np.random.default_rng(1).random(rng_values.size)
    assert abs(normalized_gini(rng_values, noise)) < 0.05


def test_normalized_gini_on_four_hand_computed_rows():
    # y_true = [0, 1, 3, 6] (total 10), y_pred = [0.1, 0.4, 0.3, 0.9]
    # by prediction: 6, 1, 3, 0 -> cumulative shares 0.6, 0.7, 1.0, 1.0 -> mean 0.825
    #   -> Gini 2 * 0.825 - 1 - 1/4 = 0.4 (twice the trapezoid area between the gain curve and the diagonal)
    # perfect order: 6, 3, 1, 0 -> cumulative shares 0.6, 0.9, 1.0, 1.0 -> mean 0.875 -> Gini 0.5
    # normalised: 0.4 / 0.5 = 0.8
    assert normalized_gini([0, 1, 3, 6], [0.1, 0.4, 0.3, 0.9]) == pytest.approx(0.8)


def test_normalized_gini_of_a_binary_outcome_is_2_auc_minus_1_and_a_reversed_order_is_minus_1():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y, p = (rng.random(10) < 0.4).astype(float), rng.random(10)
    assert normalized_gini(y, p) == pytest.approx(2 * roc_auc_score(y, p) - 1)
    assert normalized_gini([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_tied_scores_give_the_same_gini_and_decile_table_whatever_the_row_order():
    rng = np.random.default_rng(0)
    y = rng.poisson(2.0, 2_000).astype(float)
    pred = np.where(rng.random(2_000) < 0.5, 0.0, rng.integers(1, 5, 2_000).astype(float))  # half tied at 0
    frame = pd.DataFrame({"y": y, "pred": pred})
    gini = normalized_gini(frame["y"], frame["pred"])
    table = decile_table(frame["y"], frame["pred"])
    for seed in range(5):
        shuffled = frame.sample(frac=1.0, random_state=seed)
        assert normalized_gini(shuffled["y"], shuffled["pred"]) == gini
        assert_frame_equal(decile_table(shuffled["y"], shuffled["pred"]), table)
    # ties never help: tied rows are ordered worst first, so breaking ties in the model's favour scores higher
    assert gini < normalized_gini(y, pred + 1e-9 * y)


def test_decile_table_sums_match_totals_and_decile_one_holds_the_top_predictions(rng_values):
    pred = rng_values * np.random.default_rng(2).lognormal(0, 0.5, rng_values.size)
    table = decile_table(rng_values, pred)
    assert list(table.columns) == ["decile", "n", "mean_pred", "mean_true", "sum_pred", "sum_true", "cum_share_true"]
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["n"].sum() == rng_values.size and (table["n"] == 1_000).all()
    assert table["sum_true"].sum() == pytest.approx(rng_values.sum())
    assert table["sum_pred"].sum() == pytest.approx(pred.sum())
    assert table["cum_share_true"].iloc[-1] == pytest.approx(1.0)
    assert table["mean_pred"].is_monotonic_decreasing
    assert decile_mape(rng_values, rng_values) == 0.0


def test_ece_is_about_zero_for_calibrated_probabilities_and_large_otherwise():
    rng = np.random.default_rng(0)
    p = rng.random(10_000)
    y = (rng.random(10_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    assert classification_metrics(y, p)["ece"] < 0.02
    assert expected_calibration_error(y, p**3) > 0.15  # systematically too low
    curve = reliability_curve(y, p)
    assert len(curve) == 10 and np.allclose(curve["mean_predicted"], curve["fraction_positive"], atol=0.05)


def test_classification_metrics_on_a_simple_case():
    y = np.array([0, 0, 1, 1] * 50)
    p = np.array([0.1, 0.4, 0.35, 0.8] * 50)
    m = classification_metrics(y, p)
    assert set(m) == {"auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "base_rate"}
    assert m["auc"] == pytest.approx(0.75)
    assert m["base_rate"] == 0.5
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["top_decile_lift"] == pytest.approx(2.0)  # the top 10% (all p = 0.8) are all buyers


def test_value_metrics_keys_and_perfect_values(rng_values):
    m = value_metrics(rng_values, rng_values)
    assert set(m) == {"gini", "spearman", "mae", "decile_mape", "pred_actual_ratio", "value_top_decile_lift"}
    assert m["gini"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["mae"] == 0.0 and m["decile_mape"] == 0.0 and m["pred_actual_ratio"] == pytest.approx(1.0)
    assert m["value_top_decile_lift"] > 3


def test_degenerate_inputs_give_nan_instead_of_raising():
    zeros = np.zeros(100)
    score = np.linspace(0, 1, 100)
    cm = classification_metrics(zeros, score)
    assert math.isnan(cm["auc"]) and math.isnan(cm["pr_auc"]) and math.isnan(cm["top_decile_lift"])
    assert cm["base_rate"] == 0.0 and cm["brier"] >= 0 and math.isfinite(cm["log_loss"])
    vm = value_metrics(zeros, score)
    assert all(math.isnan(vm[k]) for k in ("gini", "spearman", "decile_mape", "pred_actual_ratio", "value_top_decile_lift"))
    assert vm["mae"] == pytest.approx(0.5)
    assert lift_curve(zeros, score)["share_positives"].isna().all()
    assert decile_table(zeros, score)["cum_share_true"].isna().all()
    # constant predictions: defined, and (ties never help) no better than random
    y = np.random.default_rng(0).poisson(1.0, 1_000).astype(float)
    const = np.full(1_000, 0.3)
    assert normalized_gini(y, const) < 0
    assert math.isnan(value_metrics(y, const)["spearman"])
    assert classification_metrics((y > 0).astype(int), const)["auc"] == pytest.approx(0.5)
    assert len(reliability_curve((y > 0).astype(int), const)) == 1


def test_lift_curve_runs_from_origin_to_one_best_scores_first():
    curve = lift_curve([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    assert curve["share_population"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve["share_positives"].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_top_decile_lift_counts_ties_at_the_boundary_at_their_mean():
    from training.metrics import classification_metrics

    # 20 rows: the top 10% is 2 rows; 4 rows tie at the top score, 2 of them buyers: the top holds 1 buyer expected
    y = np.array([1, 0, 1, 0] + [0] * 12 + [1] * 4)
    p = np.array([0.9] * 4 + [0.1] * 16)
    assert classification_metrics(y, p)["top_decile_lift"] == pytest.approx((1 / 2) / (6 / 20))  # was 0: worst first
