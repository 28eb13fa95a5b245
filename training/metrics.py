"""Backtest metrics for the purchase classifiers and the value regressors: pure functions of (y_true, y_pred).

Ties in the score never help a model: wherever rows are ordered by score, tied rows are ordered by y_true ascending
(worst case first), so shuffling the rows never changes a result. Undefined metrics (one class only, all-zero
y_true, constant predictions) come back as nan instead of raising.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, mean_absolute_error, roc_auc_score

__all__ = [
    "classification_metrics",
    "decile_mape",
    "decile_table",
    "expected_calibration_error",
    "lift_curve",
    "normalized_gini",
    "reliability_curve",
    "value_metrics",
]

_EPS = 1e-15


def _arrays(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D float arrays of equal length."""
    t, p = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} != {p.size}).")
    return t, p


def _order(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Row order by y_pred descending, then y_true ascending (so ties never help)."""
    return np.lexsort((y_true, -y_pred))


def _top_decile_lift(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean y_true in the top 10% by y_pred divided by the overall mean. Rows tied with the last row of the top
    10% fill its remaining places at their mean (the expectation over random tie-breaking, as AUC counts ties), so
    a coarse score (RFM quintiles) is neither helped nor hurt by how ties fall."""
    if y_true.size == 0 or y_true.mean() == 0:
        return float("nan")
    k = max(1, int(np.ceil(0.1 * y_true.size)))
    order = np.argsort(-y_pred, kind="stable")
    p, y = y_pred[order], y_true[order]
    above, tied = p > p[k - 1], p == p[k - 1]
    top_sum = y[above].sum() + (k - above.sum()) * y[tied].mean()
    return float(top_sum / k / y_true.mean())


def expected_calibration_error(y_true: Sequence[float], p: Sequence[float], n_bins: int = 10) -> float:
    """Weighted mean |observed rate - mean probability| over equal-frequency bins of p (tied p share a bin)."""
    y, q = _arrays(y_true, p)
    if y.size == 0:
        return float("nan")
    edges = np.quantile(q, np.linspace(0, 1, n_bins + 1)[1:-1])
    bins = np.searchsorted(edges, q, side="left")
    n = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=q, minlength=n_bins))
    return float(gap.sum() / n.sum())


def classification_metrics(y_true: Sequence[float], p: Sequence[float]) -> dict[str, float]:
    """AUC, PR-AUC, Brier, log loss, ECE (10 equal-frequency bins), top-decile lift and base rate of a probability."""
    y, q = _arrays(y_true, p)
    both = y.size > 0 and 0 < y.sum() < y.size
    return {
        "auc": float(roc_auc_score(y, q)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, q)) if both else float("nan"),
        "brier": float(brier_score_loss(y, q, pos_label=1)) if y.size else float("nan"),
        "log_loss": float(log_loss(y, np.clip(q, _EPS, 1 - _EPS), labels=[0, 1])) if y.size else float("nan"),
        "ece": expected_calibration_error(y, q),
        "top_decile_lift": _top_decile_lift(y, q),
        "base_rate": float(y.mean()) if y.size else float("nan"),
    }


def normalized_gini(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Gini of the cumulative-gain curve ordered by y_pred, divided by that of the perfect ordering by y_true."""
    y, p = _arrays(y_true, y_pred)
    total = y.sum()
    if y.size == 0 or total == 0:
        return float("nan")

    def gini(ordered: np.ndarray) -> float:  # area between the gain curve (trapezoids) and the diagonal, x2
        return 2.0 * float(np.mean(np.cumsum(ordered) / total)) - 1.0 - 1.0 / y.size

    perfect = gini(np.sort(y)[::-1])
    # .iloc-free numpy avoids GLV's `raw / raw[0]`, a KeyError on pandas 3
    return gini(y[_order(y, p)]) / perfect if perfect != 0 else float("nan")


def decile_table(y_true: Sequence[float], y_pred: Sequence[float]) -> pd.DataFrame:
    """Per-decile counts, means and sums of y_pred and y_true; decile 1 holds the highest predictions."""
    y, p = _arrays(y_true, y_pred)
    order = _order(y, p)
    df = pd.DataFrame({"y_pred": p[order], "y_true": y[order]})
    rank = pd.Series(np.arange(len(df)), dtype=float).rank(method="first")  # unique ranks after the tie-breaking sort
    df["decile"] = np.ceil(rank * 10 / max(len(df), 1)).astype(int).to_numpy()
    out = df.groupby("decile", sort=True).agg(n=("y_true", "size"), mean_pred=("y_pred", "mean"),
                                              mean_true=("y_true", "mean"), sum_pred=("y_pred", "sum"),
                                              sum_true=("y_true", "sum")).reset_index()
    total = out["sum_true"].sum()
    out["cum_share_true"] = out["sum_true"].cumsum() / total if total != 0 else np.nan
    return out


def decile_mape(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean absolute percentage error of the per-decile sums (deciles whose true sum is 0 are skipped)."""
    table = decile_table(y_true, y_pred)
    table = table[table["sum_true"] != 0]
    if table.empty:
        return float("nan")
    return float(np.mean(np.abs(table["sum_pred"] - table["sum_true"]) / np.abs(table["sum_true"])))


def value_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Gini, Spearman, MAE, decile MAPE, sum(pred)/sum(true) and top-decile lift of a value prediction."""
    y, p = _arrays(y_true, y_pred)
    varied = y.size > 1 and np.ptp(y) > 0 and np.ptp(p) > 0
    return {
        "gini": normalized_gini(y, p),
        "spearman": float(spearmanr(y, p).statistic) if varied else float("nan"),
        "mae": float(mean_absolute_error(y, p)) if y.size else float("nan"),
        "decile_mape": decile_mape(y, p),
        "pred_actual_ratio": float(p.sum() / y.sum()) if y.sum() != 0 else float("nan"),
        "value_top_decile_lift": _top_decile_lift(y, p),
    }


def reliability_curve(y_true: Sequence[float], p: Sequence[float], n_bins: int = 10) -> pd.DataFrame:
    """Observed positive rate against mean predicted probability per quantile bin (sklearn calibration_curve)."""
    y, q = _arrays(y_true, p)
    if y.size == 0:
        return pd.DataFrame({"mean_predicted": pd.Series(dtype=float), "fraction_positive": pd.Series(dtype=float)})
    frac_pos, mean_pred = calibration_curve(y, q, n_bins=n_bins, strategy="quantile", pos_label=1)
    return pd.DataFrame({"mean_predicted": mean_pred, "fraction_positive": frac_pos})


def lift_curve(y_true: Sequence[float], score: Sequence[float]) -> pd.DataFrame:
    """Cumulative share of positives (or of value) against share of population targeted, best scores first."""
    y, s = _arrays(y_true, score)
    total = y.sum()
    cum = np.concatenate([[0.0], np.cumsum(y[_order(y, s)])])
    return pd.DataFrame({
        "share_population": np.arange(y.size + 1) / max(y.size, 1),
        "share_positives": cum / total if total != 0 else np.full(y.size + 1, np.nan),
    })
