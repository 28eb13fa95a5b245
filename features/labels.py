"""Labels after a cutoff, and the rolling-origin training frame whose label windows end by `--as-of`.

Labels look only at `(cutoff, cutoff + horizon]`: `y_purchase` is 1 when the customer places at least one
purchase order (positive net amount) in the window; `y_value` is the net revenue in the value window
(the gross margin when the transactions carry a complete `margin` column), floored at 0.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.errors import InputError
from features.pipeline import FeatureParams, build_features, order_table

__all__ = ["build_labels", "purchase_label", "rolling_cutoffs", "training_frame", "value_column", "value_label"]


def value_column(transactions: pd.DataFrame) -> str:
    """The column that measures value: `margin` where every line has one, else `amount`."""
    if "margin" in transactions.columns and transactions["margin"].notna().all():
        return "margin"
    return "amount"


def purchase_label(lines: pd.DataFrame, window: np.ndarray, n_windows: int) -> np.ndarray:
    """1 for each window holding a purchase: an order of its own `lines` (`window`: each line's window) with a
    positive net amount, so a line of the same order outside the window (a later return) cannot undo it."""
    orders, _ = order_table(lines, window)
    buy = orders["amount"].to_numpy() > 0
    return (np.bincount(orders["cust"].to_numpy()[buy], minlength=n_windows) > 0).astype(np.int8)


def value_label(values: np.ndarray, window: np.ndarray, n_windows: int) -> np.ndarray:
    """The net value of each window's lines (`values`: their `value_column`), floored at 0."""
    return np.clip(np.bincount(window, values, n_windows), 0, None)


def build_labels(transactions: pd.DataFrame, cutoff: pd.Timestamp, customer_ids: np.ndarray,
                 horizon_days: int, value_horizon_days: int) -> pd.DataFrame:
    """Labels of `customer_ids` for the windows after `cutoff` (columns customer_id, y_purchase, y_value)."""
    cutoff = pd.Timestamp(cutoff)
    end = cutoff + pd.Timedelta(days=max(horizon_days, value_horizon_days))
    t = transactions["timestamp"].to_numpy()
    win = transactions.loc[(t > cutoff.to_datetime64()) & (t <= end.to_datetime64())]
    ids = np.asarray(customer_ids, dtype=str)
    pos = pd.Index(ids).get_indexer(win["customer_id"])
    known = pos >= 0
    win, pos = win.loc[known], pos[known]
    ts = win["timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    in_h = ts <= (cutoff + pd.Timedelta(days=horizon_days)).value
    in_v = ts <= (cutoff + pd.Timedelta(days=value_horizon_days)).value
    values = win[value_column(transactions)].to_numpy(dtype=float)
    return pd.DataFrame({
        "customer_id": pd.array(ids, dtype="str"),
        "y_purchase": purchase_label(win.loc[in_h], pos[in_h], len(ids)),
        "y_value": value_label(values[in_v], pos[in_v], len(ids)),
    })


def rolling_cutoffs(transactions: pd.DataFrame, as_of: pd.Timestamp, label_days: int, n_cutoffs: int = 12,
                    step_days: int = 14, min_history_days: int = 30) -> list[pd.Timestamp]:
    """Cutoffs `c_k = as_of - label_days - k * step_days` (newest first) whose label windows end by `as_of`
    and that leave at least `min_history_days` of data before them."""
    start = transactions["timestamp"].min() + pd.Timedelta(days=min_history_days)
    cutoffs = [as_of - pd.Timedelta(days=label_days + k * step_days) for k in range(n_cutoffs)]
    return [c for c in cutoffs if c >= start]


def training_frame(transactions: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int, value_horizon_days: int,
                   events: pd.DataFrame | None = None, customers: pd.DataFrame | None = None,
                   n_cutoffs: int = 12, step_days: int = 14, params: FeatureParams | None = None,
                   progress: Callable = tqdm) -> pd.DataFrame:
    """Stack features and labels over rolling cutoffs; no label window crosses `as_of`.

    Raises InputError when not one cutoff fits in the data.
    """
    label_days = max(horizon_days, value_horizon_days)
    cutoffs = rolling_cutoffs(transactions, as_of, label_days, n_cutoffs, step_days)
    if not cutoffs:
        first = transactions["timestamp"].min().date()
        raise InputError(f"transactions: history from {first} to {as_of.date()} is too short for a {label_days}-day "
                         f"label window plus 30 days of history before it; use a shorter horizon or a later --as-of")
    frames = []
    for cutoff in progress(cutoffs, desc="features x cutoffs", unit="cutoff", leave=False):
        feats = build_features(transactions, cutoff, events, customers, params or FeatureParams())
        labels = build_labels(transactions, cutoff, feats["customer_id"].to_numpy(dtype=str),
                              horizon_days, value_horizon_days)
        frames.append(pd.concat([feats, labels.drop(columns="customer_id")], axis=1))
    return pd.concat(frames, ignore_index=True)
