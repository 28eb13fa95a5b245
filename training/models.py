"""The Kairos models: calibrated LightGBM classifiers for the next and the second purchase, and a value model.

`KairosModel.fit(frame)` takes the rolling-origin frame of `features.labels.training_frame`. Each model is
trained on the older cutoffs with early stopping on the newest cutoff (out of time, on customers it was not
trained on), and calibrated there: Platt scaling of the frozen classifier for probabilities (monotone, so it
keeps the ranking; isotonic steps on a few hundred rows cost 0.005 AUC on Online Retail), a total-matching
factor for value. The value model is either a hurdle (P(buy) x E[value | buy], gamma regression) or a direct
Tweedie regression; `value_form="auto"` keeps the one with the better out-of-time normalized Gini.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from features.errors import InputError
from features.spec import FEATURE_DOCS
from training.btyd import BetaGeoFitter
from training.compiled import compile_booster, lgb_array
from training.compiled import predict as predict_compiled
from training.metrics import normalized_gini

__all__ = ["DEFAULT_PARAMS", "MIN_CUSTOMERS", "FeatureSpec", "Forest", "KairosModel", "check_both_classes", "time_split"]

LABELS = ("y_purchase", "y_value")
MIN_CUSTOMERS = 50
P_FLOOR = 1e-3  # no customer is certain either way
# Strongly regularised by default: rolling cutoffs of short histories differ from the scoring cutoff (shorter
# tenure, other season), and small trees on half the features generalise across that shift best on Online Retail.
DEFAULT_PARAMS: dict = {
    "n_estimators": 800, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 200,
    "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.5, "reg_lambda": 1.0, "max_bin": 127,
}


@dataclass
class FeatureSpec:
    """The model's input columns and the categories of its categorical columns, fixed at training time."""

    columns: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> FeatureSpec:
        """Every column but ids and labels; text columns become categoricals with the categories seen."""
        cols = [c for c in frame.columns if c not in ("customer_id", "as_of", *LABELS)]
        cats = {c: sorted(frame[c].dropna().astype(str).unique().tolist())
                for c in cols if not pd.api.types.is_numeric_dtype(frame[c])}
        return cls(cols, cats)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model matrix of `features`: missing columns become NaN, unseen categories NaN."""
        return pd.DataFrame(self._columns(features), index=features.index)

    def array(self, features: pd.DataFrame) -> np.ndarray:
        """The float64 array LightGBM predicts the model matrix from (`lgb_array`), without building the matrix."""
        return lgb_array(list(self._columns(features).values()))

    def _columns(self, features: pd.DataFrame) -> dict[str, pd.Series | pd.Categorical]:
        """Each model column of `features`: float64, or a categorical with the categories seen in training."""
        out = {}
        for c in self.columns:
            s = features[c] if c in features.columns else pd.Series(np.nan, index=features.index)
            if c in self.categories:
                out[c] = pd.Categorical(s.astype("object").where(s.notna(), None), categories=self.categories[c])
            else:
                out[c] = pd.to_numeric(s, errors="coerce").astype("float64")
        return out


BTYD_DOCS = {
    "btyd_expected_purchases": "BG/NBD expected purchases in the horizon",
    "btyd_p_alive": "BG/NBD probability that the customer is still active",
}


def fit_bgnbd(features: pd.DataFrame, max_customers: int = 20_000) -> dict[str, float]:
    """BG/NBD parameters fitted on the buyers of one cutoff's features (whole days as the time unit), on a
    hash-drawn sample of at most `max_customers` (four population parameters need no more)."""
    buyers = features.loc[features["n_orders"] > 0]
    if len(buyers) > max_customers:
        h = pd.util.hash_pandas_object(buyers["customer_id"], index=False).to_numpy()
        buyers = buyers.iloc[np.argsort(h, kind="stable")[:max_customers]]
    x, tx, tenure = _frequency_recency_T(buyers)
    return BetaGeoFitter(penalizer_coef=0.001).fit(x, np.round(tx), np.round(tenure)).params_


def _frequency_recency_T(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BTYD's (repeat purchases, time of the last purchase, age) in days from the features; zero for non-buyers."""
    n = features["n_orders"].to_numpy(dtype=float)
    tenure = np.nan_to_num(features["tenure_days"].to_numpy(dtype=float))
    x = np.maximum(n - 1, 0)
    tx = np.where(x > 0, np.clip(tenure - np.nan_to_num(features["recency_days"].to_numpy(dtype=float)), 0, tenure), 0.0)
    return x, tx, tenure


def btyd_features(features: pd.DataFrame, params: dict[str, float], horizon_days: int) -> pd.DataFrame:
    """BG/NBD expected purchases and P(alive) of each row, from population parameters fitted separately.

    Population statistics are model parameters, not features, so `build_features` stays per-customer."""
    fitter = BetaGeoFitter()
    fitter.params_ = params
    x, tx, tenure = _frequency_recency_T(features)
    buyer = features["n_orders"].to_numpy(dtype=float) > 0
    return pd.DataFrame({
        "btyd_expected_purchases": np.where(buyer, fitter.expected_purchases(horizon_days, x, tx, tenure), np.nan),
        "btyd_p_alive": np.where(buyer, fitter.prob_alive(x, tx, tenure), np.nan),
    }, index=features.index)


def time_split(frame: pd.DataFrame, n_folds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Validate on the newest cutoff, for one hash fold of customers (1/`n_folds`); train on the older cutoffs of
    the other customers. With one cutoff, the fold is held out of it.

    Customers recur across rolling cutoffs with overlapping label windows: validating on customers the trees were
    trained on rewards memorising them, so early stopping ran to the last round (Online Retail: 800 rounds, backtest
    AUC 0.734; customer-disjoint: about 50 rounds, AUC 0.751).
    """
    fold = pd.util.hash_pandas_object(frame["customer_id"], index=False).to_numpy() % n_folds == 0
    cut = frame["as_of"].to_numpy()
    if len(np.unique(cut)) == 1:
        return ~fold, fold
    newest = cut == cut.max()
    return ~newest & ~fold, newest & fold


def check_both_classes(y: np.ndarray, what: str) -> None:
    """Raise InputError unless the labels `y` hold both classes (a classifier needs positives and negatives)."""
    if len(np.unique(y)) < 2:
        raise InputError(f"transactions: no {'positives' if y.sum() == 0 else 'negatives'} for the {what} "
                         f"label in the training windows; more history or more customers are needed")


def _value(reg: np.ndarray, buy: np.ndarray | None, scale: float) -> np.ndarray:
    """Expected value: the regressor's value, times P(buy) for a hurdle model, times the total-matching scale."""
    return (reg if buy is None else buy * reg) * scale


@dataclass(frozen=True)
class Forest:
    """One fitted LightGBM estimator: its booster, the (Platt) calibrator of a calibrated classifier, and once
    compiled its machine code, which gives bitwise the booster's numbers several times faster."""

    booster: lgb.Booster
    raw_score: bool = False
    calibrator: object | None = None  # a fitted sklearn calibrator (its `predict` maps scores)
    compiled: object | None = None

    @classmethod
    def of(cls, estimator: CalibratedClassifierCV | lgb.LGBMModel) -> Forest:
        """The forest of a LightGBM estimator, or of the frozen classifier of a CalibratedClassifierCV with its one
        calibrator (a frozen estimator is calibrated once, not per fold). Like sklearn, the calibrator maps the
        classifier's decision_function (the raw margin) where it has one, else its probability."""
        if isinstance(estimator, CalibratedClassifierCV):
            (pair,) = estimator.calibrated_classifiers_
            (calibrator,) = pair.calibrators
            return cls(pair.estimator.estimator.booster_, hasattr(pair.estimator, "decision_function"), calibrator)
        return cls(estimator.booster_)

    def compile(self) -> Forest:
        """This forest with its booster compiled (`training.compiled`, cached on disk)."""
        return replace(self, compiled=compile_booster(self.booster, self.raw_score))

    def predict(self, data: np.ndarray) -> np.ndarray:
        """The estimator's prediction (a calibrated classifier's P(1): CalibratedClassifierCV.predict_proba[:, 1])
        of the rows of `data` (`lgb_array`)."""
        if self.compiled is None:
            out = self.booster.predict(data, raw_score=self.raw_score)
        else:
            out = predict_compiled(self.compiled, data)
        return out if self.calibrator is None else self.calibrator.predict(out)


class KairosModel:
    """Three LightGBM models behind one predict: p_purchase, p_second_purchase and expected_value."""

    def __init__(self, params: dict | None = None, value_form: str = "auto", horizon_days: int = 90,
                 seed: int = 0, n_jobs: int = 2):
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.horizon_days = horizon_days
        self.value_form = value_form
        self.seed = seed
        self.n_jobs = n_jobs

    def _lgb(self, kind: str, **extra) -> lgb.LGBMModel:
        est = lgb.LGBMClassifier if kind == "clf" else lgb.LGBMRegressor
        return est(**self.params, **extra, random_state=self.seed, n_jobs=self.n_jobs, verbose=-1)

    def _fit_one(self, est: lgb.LGBMModel, X: pd.DataFrame, y: np.ndarray, train: np.ndarray,
                 valid: np.ndarray, what: str) -> lgb.LGBMModel:
        """Fit with early stopping on `valid`. Leaves need at most a tenth of the training rows (at least 20), so
        that small data still gets trees; a model without a single split (constant scores) is reported."""
        n = int(train.sum())
        est.set_params(min_child_samples=min(est.get_params()["min_child_samples"], max(20, n // 10)))
        est.fit(X[train], y[train], eval_X=(X[valid],), eval_y=(y[valid],),
                callbacks=[lgb.early_stopping(50, verbose=False)])
        if not est.booster_.feature_importance().any():
            print(f"warning: the {what} model found no split in {n:,} training rows: its scores are constant",
                  file=sys.stderr)
        return est

    def _classifier(self, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, valid: np.ndarray,
                    what: str) -> CalibratedClassifierCV:
        check_both_classes(y[train], what)
        check_both_classes(y[valid], what)
        clf = self._fit_one(self._lgb("clf"), X, y, train, valid, what)
        return CalibratedClassifierCV(FrozenEstimator(clf), method="sigmoid").fit(X[valid], y[valid])

    def _second(self, X: pd.DataFrame, y: np.ndarray, one: np.ndarray, train: np.ndarray,
                valid: np.ndarray) -> tuple[CalibratedClassifierCV | None, dict[str, float]]:
        """The second-purchase model and the validation AUCs it was chosen by: a classifier of one-order customers
        ("own"), or the next-purchase classifier recalibrated on them ("shared") when its AUC on them is better (it
        learns from every customer, and one-order customers are few: on Online Retail a few hundred per cutoff).
        None when there are too few one-order customers; p_second_purchase then falls back to p_purchase."""
        try:
            own = self._classifier(X[one], y[one], train[one], valid[one], "second-purchase")
        except InputError:
            return None, {}
        Xv, yv = X[valid & one], y[valid & one]
        booster = FrozenEstimator(self.purchase_.estimator.estimator)
        shared = CalibratedClassifierCV(booster, method="sigmoid").fit(Xv, yv)
        auc = {name: float(roc_auc_score(yv, m.predict_proba(Xv)[:, 1]))
               for name, m in (("own", own), ("shared", shared))}
        return (shared if auc["shared"] > auc["own"] else own), auc

    def _value(self, form: str, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, valid: np.ndarray) -> dict:
        if form == "tweedie":
            reg = self._fit_one(self._lgb("reg", objective="tweedie", tweedie_variance_power=1.3), X, y, train, valid,
                                "value (Tweedie)")
            parts = {"reg": reg}
        else:
            buy = y > 0
            clf = self._classifier(X, buy.astype(int), train, valid, "value-window purchase")
            reg = self._fit_one(self._lgb("reg", objective="gamma"), X, y, train & buy, valid & buy, "value (gamma)")
            parts = {"clf": clf, "reg": reg}
        pred = self._value_predict(parts, X[valid])
        parts["scale"] = float(y[valid].sum() / pred.sum()) if pred.sum() > 0 else 1.0
        parts["valid_gini"] = normalized_gini(y[valid], pred)
        return parts

    @staticmethod
    def _value_predict(parts: dict, X: pd.DataFrame) -> np.ndarray:
        """Expected value by the fitted estimators, while fitting (`predict` gets the same numbers from `Forest`s)."""
        buy = parts["clf"].predict_proba(X)[:, 1] if "clf" in parts else None
        return _value(parts["reg"].predict(X), buy, parts.get("scale", 1.0))

    def fit(self, frame: pd.DataFrame) -> KairosModel:
        """Fit the three models on a rolling-origin frame (features plus y_purchase and y_value)."""
        self.__dict__.pop("_forests_", None)  # forests compiled from an earlier fit
        buyers = frame.loc[frame["n_orders"] > 0].reset_index(drop=True)
        n_customers = buyers["customer_id"].nunique()
        if n_customers < MIN_CUSTOMERS:
            raise InputError(f"transactions: only {n_customers} customers with purchases before the training "
                             f"cutoffs; Kairos needs at least {MIN_CUSTOMERS} customers")
        self.bgnbd_ = {c: fit_bgnbd(group) for c, group in frame.groupby("as_of")}
        frame = pd.concat([frame, pd.concat([btyd_features(g, self.bgnbd_[c], self.horizon_days)
                                             for c, g in frame.groupby("as_of")])], axis=1)
        self.bgnbd_latest_ = self.bgnbd_[max(self.bgnbd_)]
        self.spec_ = FeatureSpec.from_frame(frame)
        X, (train, valid) = self.spec_.matrix(frame), time_split(frame)
        y = frame["y_purchase"].to_numpy()
        self.purchase_ = self._classifier(X, y, train, valid, "next-purchase")
        self.second_, self.second_auc_ = self._second(X, y, frame["n_orders"].to_numpy() == 1, train, valid)
        yv = frame["y_value"].to_numpy(dtype=float)
        forms = ["hurdle", "tweedie"] if self.value_form == "auto" else [self.value_form]
        fitted = {f: self._value(f, X, yv, train, valid) for f in forms}
        self.value_form_ = max(fitted, key=lambda f: np.nan_to_num(fitted[f]["valid_gini"], nan=-1))
        self.value_ = fitted[self.value_form_]
        self.value_forms_gini_ = {f: fitted[f]["valid_gini"] for f in forms}
        self.n_train_rows_ = len(frame)
        return self

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Scores of each row: p_purchase, p_second_purchase (one-order customers only), expected_value."""
        one = features["n_orders"].to_numpy() == 1
        p, second, value = self._scores(self.array(features), one)
        scores = pd.DataFrame({"p_purchase": p, "p_second_purchase": second, "expected_value": value},
                              index=features.index)
        if getattr(self, "uplift_", None) is not None:  # learned from randomised nudges (training.uplift)
            scores["uplift"] = self.uplift_.predict(features)
            if self.uplift_.value_per_purchase is not None:  # the policy prices uplift x value per purchase
                scores["value_per_purchase"] = self.uplift_.value_per_purchase
        return scores

    def _scores(self, data: np.ndarray, one: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """p_purchase, p_second_purchase (NaN but on the `one` rows) and expected_value of the rows of `data`
        (`array`)."""
        forests = self._forests()
        p = np.clip(forests["purchase"].predict(data), P_FLOOR, 1 - P_FLOOR)
        second = np.full(len(data), np.nan)
        if one.any():
            second[one] = np.clip(forests.get("second", forests["purchase"]).predict(data[one]), P_FLOOR, 1 - P_FLOOR)
        buy = forests["value_clf"].predict(data) if "value_clf" in forests else None
        value = _value(forests["value_reg"].predict(data), buy, self.value_.get("scale", 1.0))
        return p, second, np.clip(value, 0, None)

    def _forests(self) -> dict[str, Forest]:
        """The fitted estimators by role, compiled after `compile`."""
        compiled = getattr(self, "_forests_", None)
        if compiled is not None:
            return compiled
        parts = {"purchase": self.purchase_, "second": self.second_, "value_clf": self.value_.get("clf"),
                 "value_reg": self.value_["reg"]}
        return {role: Forest.of(est) for role, est in parts.items() if est is not None}

    def compile(self) -> KairosModel:
        """Compile the boosters to machine code (lleaves; cached on disk per model and CPU): `predict` then gives
        bitwise the same scores several times faster. For serving and the batch: the first compile of a model takes
        seconds to minutes, so training and backtests keep LightGBM's own predict."""
        forests = self._forests()
        with ThreadPoolExecutor(len(forests)) as pool:  # LLVM compiles outside the GIL
            self._forests_ = dict(zip(forests, pool.map(Forest.compile, forests.values())))
        return self

    def __getstate__(self) -> dict:
        """Pickled without the compiled forests (machine code for this host's CPU): compile again after loading."""
        return {k: v for k, v in self.__dict__.items() if k != "_forests_"}

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model matrix of feature rows: BG/NBD columns from the newest parameters, then the spec."""
        return self.spec_.matrix(self._with_btyd(features))

    def array(self, features: pd.DataFrame) -> np.ndarray:
        """The model matrix of feature rows as the float64 array the boosters predict from (`FeatureSpec.array`)."""
        return self.spec_.array(self._with_btyd(features))

    def _with_btyd(self, features: pd.DataFrame) -> pd.DataFrame:
        """`features` with the BG/NBD columns of the newest parameters."""
        if not hasattr(self, "spec_"):
            raise ValueError("Model has not been fit yet.")
        return pd.concat([features, btyd_features(features, self.bgnbd_latest_, self.horizon_days)], axis=1)

    def booster(self) -> lgb.Booster:
        """The (uncalibrated) booster of the next-purchase model, for importances and contributions."""
        return self.purchase_.estimator.estimator.booster_

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Per-row SHAP contributions (log-odds) of each feature to the next-purchase model."""
        X = self.matrix(features)
        return pd.DataFrame(self.booster().predict(X, pred_contrib=True)[:, :-1], columns=X.columns, index=X.index)

    def reasons(self, features: pd.DataFrame, k: int = 3) -> list[str]:
        """The top `k` drivers of each row's next-purchase score, in words."""
        X = self.matrix(features)
        contrib = self.booster().predict(X, pred_contrib=True)[:, :-1]
        top = np.argsort(-np.abs(contrib), axis=1)[:, :k]
        cols = X.columns
        return ["; ".join(_describe(cols[j], X.iat[i, j], contrib[i, j]) for j in top[i]) for i in range(len(X))]


def _describe(col: str, value: object, contribution: float) -> str:
    doc = {**FEATURE_DOCS, **BTYD_DOCS}.get(col, col.removeprefix("attr_").replace("_", " "))
    direction = "raises" if contribution > 0 else "lowers"
    shown = "unknown" if value is None or (isinstance(value, float) and np.isnan(value)) else (
        f"{value:.3g}" if isinstance(value, (int, float, np.floating, np.integer)) else str(value))
    return f"{doc} = {shown} {direction} the purchase probability"
