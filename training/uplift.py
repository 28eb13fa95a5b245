"""Uplift models from randomised nudges: who buys because of the nudge, not who buys anyway.

The nudges table (`treated` false = held out at random) is joined to the features as of each nudge (built by
`features.pipeline.build_features` strictly before the nudge's day) and to the outcome in the response window
`(nudge, nudge + response_days]`: a purchase (an order of the window's lines with a positive net amount) and its
value, as the labels define them. Meta-learners on LightGBM estimate the effect
tau(x) = P(buy | x, nudged) - P(buy | x, held out):
- T-learner: one model per arm, tau = mu1 - mu0;
- X-learner (Kunzel et al. 2019): imputed effects of each arm regressed on x, mixed by the propensity;
- class transformation (Jaskowski and Jaroszewicz 2012): one classifier of z = 1{treated and bought, or held out
  and did not}, with rows weighted so both arms weigh the same, tau = 2 P(z) - 1 (binary outcomes; for values
  the transformed outcome y (t - e) / (e (1 - e)) is regressed instead).
`select_learner` fits each on a stratified (treated x outcome) split and keeps the best held-out Qini.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.errors import InputError
from features.labels import purchase_label, value_column
from features.pipeline import build_features, customer_codes
from training.models import FeatureSpec
from training.uplift_metrics import normalized_auuc, normalized_qini

__all__ = [
    "LEARNERS",
    "UPLIFT_PARAMS",
    "ClassTransformation",
    "TLearner",
    "UpliftModel",
    "XLearner",
    "check_nudges",
    "feature_spec",
    "nudge_frame",
    "select_learner",
    "stratified_split",
    "value_per_purchase",
]

# Small, strongly regularised trees: the effect is a small difference of two noisy rates.
UPLIFT_PARAMS: dict = {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 200,
                       "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 5.0}
ID_COLUMNS = ("customer_id", "as_of", "nudge_time", "treated", "cost", "campaign", "channel", "y_purchase", "y_value")


def _binary(y: np.ndarray) -> bool:
    return bool(np.isin(np.unique(y), (0.0, 1.0)).all())


class _Base:
    """Shared LightGBM construction; `fit(X, treated, y)` returns self, `predict(X)` the uplift."""

    def __init__(self, params: dict | None = None, seed: int = 0, n_jobs: int = 1):
        self.params = {**UPLIFT_PARAMS, **(params or {})}
        self.seed = seed
        self.n_jobs = n_jobs

    def _model(self, classifier: bool) -> lgb.LGBMModel:
        est = lgb.LGBMClassifier if classifier else lgb.LGBMRegressor
        return est(**self.params, random_state=self.seed, n_jobs=self.n_jobs, verbose=-1)

    def _outcome(self, X: pd.DataFrame, y: np.ndarray, weight: np.ndarray | None = None):
        """An outcome model of y on X (a classifier for 0/1 outcomes); a constant when y does not vary."""
        if len(np.unique(y)) < 2:
            return float(y.mean()) if len(y) else 0.0
        return self._model(self.binary_).fit(X, y if not self.binary_ else y.astype(int), sample_weight=weight)

    @staticmethod
    def _predict(model, X: pd.DataFrame) -> np.ndarray:
        if isinstance(model, float):
            return np.full(len(X), model)
        return model.predict_proba(X)[:, 1] if isinstance(model, lgb.LGBMClassifier) else model.predict(X)

    def _check(self, X, treated, y) -> tuple[np.ndarray, np.ndarray]:
        t, y = np.asarray(treated).astype(bool), np.asarray(y, dtype=float)
        if t.all() or not t.any():
            raise InputError("nudges: need both treated and held-out rows to learn uplift")
        self.binary_ = _binary(y)
        self.propensity_ = float(t.mean())
        return t, y


class TLearner(_Base):
    """Two-model approach: separate outcome models for nudged and held-out customers, uplift = mu1 - mu0."""

    name = "t_learner"

    def fit(self, X: pd.DataFrame, treated, y) -> TLearner:
        t, y = self._check(X, treated, y)
        self.m1_ = self._outcome(X[t], y[t])
        self.m0_ = self._outcome(X[~t], y[~t])
        return self

    def outcomes(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(mu0, mu1): the predicted outcome if held out and if nudged."""
        return self._predict(self.m0_, X), self._predict(self.m1_, X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        mu0, mu1 = self.outcomes(X)
        return mu1 - mu0


class XLearner(TLearner):
    """X-learner: D1 = y - mu0(x) on the nudged, D0 = mu1(x) - y on the held out; tau = e tau0 + (1 - e) tau1."""

    name = "x_learner"

    def fit(self, X: pd.DataFrame, treated, y) -> XLearner:
        super().fit(X, treated, y)
        t, y = np.asarray(treated).astype(bool), np.asarray(y, dtype=float)
        mu0, mu1 = self.outcomes(X)
        self.tau1_ = self._model(False).fit(X[t], y[t] - mu0[t])
        self.tau0_ = self._model(False).fit(X[~t], mu1[~t] - y[~t])
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        e = self.propensity_  # randomised: the propensity is the treated share
        return e * self.tau0_.predict(X) + (1 - e) * self.tau1_.predict(X)


class ClassTransformation(_Base):
    """Class transformation on one LightGBM classifier (binary outcomes), transformed outcome otherwise."""

    name = "class_transformation"

    def fit(self, X: pd.DataFrame, treated, y) -> ClassTransformation:
        t, y = self._check(X, treated, y)
        e = self.propensity_
        if self.binary_:
            z = ((y == 1) & t) | ((y == 0) & ~t)
            w = np.where(t, 0.5 / e, 0.5 / (1 - e))  # both arms weigh the same, so P(z) = (1 + tau) / 2
            self.model_ = self._model(True).fit(X, z.astype(int), sample_weight=w)
        else:
            self.model_ = self._model(False).fit(X, y * (t - e) / (e * (1 - e)))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.binary_:
            return 2 * self.model_.predict_proba(X)[:, 1] - 1
        return self.model_.predict(X)


LEARNERS = {cls.name: cls for cls in (TLearner, XLearner, ClassTransformation)}


@dataclass
class UpliftModel:
    """The chosen learner with its feature spec: predicts uplift from rows of `build_features`."""

    learner: _Base
    spec: FeatureSpec
    response_days: int
    outcome: str = "y_purchase"
    value_per_purchase: float | None = None
    """What one purchase within the response window is worth (`value_per_purchase` of the training nudges): the
    policy prices a nudge at uplift x this value, as the uplift evaluation's policies do."""

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Predicted increase of P(purchase within the response window) if nudged now."""
        return self.learner.predict(self.spec.matrix(features))


def value_per_purchase(y: np.ndarray, y_value: np.ndarray) -> float:
    """The mean outcome value of the nudges that led to a purchase (y > 0 for a 0/1 outcome, else y_value > 0):
    what one induced purchase is worth, in the units of y_value (margin where margins are complete)."""
    buyers = (y > 0) if set(np.unique(y)) <= {0.0, 1.0} else (y_value > 0)
    return float(y_value[buyers].mean()) if buyers.any() else 0.0


def check_nudges(nudges: pd.DataFrame) -> None:
    """InputError unless the nudges have both treated rows and a random hold-out."""
    t = nudges["treated"].to_numpy(dtype=bool)
    if not (~t).any():
        raise InputError("nudges: no held-out (treated=false) rows; uplift needs a random hold-out")
    if not t.any():
        raise InputError("nudges: no treated (treated=true) rows; uplift needs nudged customers")


def _rows_up_to(r_cust: np.ndarray, r_ts: np.ndarray, q_cust: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """For each query (customer, time): the number of rows (sorted by customer, time) up to and including it,
    i.e. a searchsorted(side="right") on the pair, done by one lexsort of rows and queries together."""
    n = len(r_cust)
    kind = np.r_[np.zeros(n, np.int8), np.ones(len(q_cust), np.int8)]  # rows first on equal (customer, time)
    order = np.lexsort((kind, np.r_[r_ts, q_ts], np.r_[r_cust, q_cust]))
    is_q = kind[order] == 1
    before = np.cumsum(~is_q)[is_q]
    out = np.empty(len(q_cust), np.int64)
    out[order[is_q] - n] = before
    return out


def _window_lines(tx_cust: np.ndarray, tx_ts: np.ndarray, nd_cust: np.ndarray, start: np.ndarray,
                  end: np.ndarray, max_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(line, nudge) pairs: every transaction line in each nudge's window (start, end] of its customer, located by
    binary search in the lines sorted by customer and time (a line in two windows appears twice); in chunks of
    whole nudges of about `max_pairs` pairs, so that memory stays bounded with many overlapping windows."""
    order = np.lexsort((tx_ts, tx_cust))
    lo = _rows_up_to(tx_cust[order], tx_ts[order], nd_cust, start)
    count = _rows_up_to(tx_cust[order], tx_ts[order], nd_cust, end) - lo
    chunk = np.cumsum(count) // max(max_pairs, 1)  # non-decreasing: each chunk is a run of nudges
    for nudges in np.split(np.arange(len(count)), np.flatnonzero(np.diff(chunk)) + 1):
        k = count[nudges]
        first = np.cumsum(k) - k  # each nudge's first pair
        yield order[np.repeat(lo[nudges] - first, k) + np.arange(int(k.sum()))], np.repeat(nudges, k)


def _outcomes(transactions: pd.DataFrame, nudges: pd.DataFrame, response_days: int,
              max_pairs: int = 2_000_000) -> pd.DataFrame:
    """y_purchase (a purchase order) and y_value (net value, floored at 0) in (nudge, nudge + response_days].

    The labels' definitions (`features.labels.purchase_label` and `value_label` on the lines of each window only,
    value by `value_column`), with one window per nudge, taken `max_pairs` (line, nudge) pairs at a time.
    """
    _ids, (tx_code, nd_code) = customer_codes(transactions["customer_id"], nudges["customer_id"])
    start = nudges["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    end = start + np.int64(response_days) * 86_400 * 10**9
    tx_ts = transactions["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    orders = transactions[[c for c in ("timestamp", "amount", "order_id") if c in transactions.columns]]
    values = transactions[value_column(transactions)].to_numpy(dtype=float)
    bought, value = np.zeros(len(nudges), np.int8), np.zeros(len(nudges))
    for line, nudge in _window_lines(tx_code, tx_ts, nd_code, start, end, max_pairs):
        bought = np.maximum(bought, purchase_label(orders.iloc[line], nudge, len(nudges)))
        value += np.bincount(nudge, values[line], len(nudges))
    return pd.DataFrame({"y_purchase": bought, "y_value": np.clip(value, 0, None)},  # floored as `value_label`
                        index=nudges.index)


def nudge_frame(nudges: pd.DataFrame, transactions: pd.DataFrame, response_days: int,
                events: pd.DataFrame | None = None, customers: pd.DataFrame | None = None,
                progress: bool = True) -> pd.DataFrame:
    """One row per nudge: the features as of just before the nudge's day, treated, cost, y_purchase, y_value.

    Features are built once per distinct nudge date (campaigns make few), as of the day's start minus 1 ns, so
    nothing from the nudge's own day (possibly its response) leaks in.
    """
    check_nudges(nudges)
    nudges = nudges.reset_index(drop=True)
    day = nudges["timestamp"].dt.normalize()
    frames = []
    days = sorted(day.unique())
    for i, d in enumerate(days):
        as_of = pd.Timestamp(d) - pd.Timedelta(1, "ns")
        if progress:
            print(f"features as of {as_of.date()} ({i + 1}/{len(days)})", file=sys.stderr)
        rows = nudges.loc[(day == d).to_numpy()]
        # build_features is per customer, so the nudged customers' own rows give the same features, much faster
        who = rows["customer_id"].unique()
        tx, ev, cu = (None if df is None else df.loc[df["customer_id"].isin(who).to_numpy()]
                      for df in (transactions, events, customers))
        feats = build_features(tx, as_of, ev, cu)
        feats = feats.set_index(feats["customer_id"].astype(str)).drop(columns=["customer_id", "as_of"])
        part = feats.reindex(rows["customer_id"].astype(str).to_numpy())
        part.index = rows.index
        frames.append(part)
    feats = pd.concat(frames).loc[nudges.index]
    out = pd.concat([nudges[["customer_id", "campaign", "channel", "treated"]],
                     nudges["timestamp"].rename("nudge_time"),
                     nudges["cost"] if "cost" in nudges else pd.Series(np.nan, index=nudges.index, name="cost"),
                     _outcomes(transactions, nudges, response_days), feats], axis=1)
    return out


def feature_spec(frame: pd.DataFrame) -> FeatureSpec:
    """The uplift model's input columns: the features only (no ids, nudge fields or outcomes)."""
    return FeatureSpec.from_frame(frame.drop(columns=[c for c in ID_COLUMNS if c in frame.columns]))


def stratified_split(treated, y, test_size: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks stratified by treated x (outcome > 0)."""
    t, y = np.asarray(treated).astype(bool), np.asarray(y, dtype=float)
    strata = t.astype(int) * 2 + (y > 0)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(t), bool)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        rng.shuffle(idx)
        test[idx[: round(test_size * len(idx))]] = True
    return ~test, test


def select_learner(X: pd.DataFrame, treated, y, names: tuple[str, ...] = tuple(LEARNERS), params: dict | None = None,
                   seed: int = 0, valid_size: float = 0.3) -> tuple[str, dict[str, dict[str, float]]]:
    """Fit each learner on a stratified split of the rows; return the best by held-out normalised Qini
    (AUUC breaks ties) and every learner's validation scores."""
    t, y = np.asarray(treated).astype(bool), np.asarray(y, dtype=float)
    train, valid = stratified_split(t, y, valid_size, seed)
    scores = {}
    for name in names:
        pred = LEARNERS[name](params, seed).fit(X[train], t[train], y[train]).predict(X[valid])
        scores[name] = {"qini": normalized_qini(y[valid], t[valid], pred),
                        "auuc": normalized_auuc(y[valid], t[valid], pred)}
    best = max(scores, key=lambda n: (np.nan_to_num(scores[n]["qini"], nan=-9), np.nan_to_num(scores[n]["auuc"], nan=-9)))
    return best, scores
