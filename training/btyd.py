"""Buy-'Til-You-Die baselines (BG/NBD, Pareto/NBD, Gamma-Gamma) and the RFM summary they are fitted on.

Plain scipy re-implementations of the classic models, because the `lifetimes` library does not support pandas 3.
Every likelihood and prediction is vectorised over customers and computed in log space.

References
----------
.. [1] Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way: An Alternative to the Pareto/NBD Model",
   Marketing Science 24(2).
.. [2] Fader & Hardie (2005), "A Note on Deriving the Pareto/NBD Model and Related Expressions".
.. [3] Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value"; Fader, Hardie & Lee (2005),
   "RFM and CLV: Using Iso-Value Curves for Customer Base Analysis", JMR 42(4).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1, roots_genlaguerre

__all__ = ["BetaGeoFitter", "GammaGammaFitter", "ParetoNBDFitter", "rfm_summary"]

_LOG_BOUND = 20.0  # log-parameters live in [-20, 20]: keeps exp() finite during the search


def _check_rft(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and broadcast (frequency, recency, T) into float arrays."""
    x, tx, T_ = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (frequency, recency, T)))
    if np.isnan(x).any() or np.isnan(tx).any() or np.isnan(T_).any():
        raise ValueError("frequency, recency and T must not contain NaN.")
    if (x < 0).any() or (np.abs(x - np.round(x)) > 1e-9).any():
        raise ValueError("Some values in frequency vector are negative or not whole numbers.")
    if (tx < 0).any():
        raise ValueError("Some values in recency vector are negative.")
    if (tx > T_ + 1e-9).any():
        raise ValueError("Some values in recency vector are larger than T vector.")
    if ((x == 0) & (tx != 0)).any():
        raise ValueError("There exist non-zero recency values when frequency is zero.")
    return np.round(x), tx, T_


def _compress(*cols: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Collapse identical rows into unique rows plus counts (weights), so likelihoods run once per pattern."""
    uniq, counts = np.unique(np.column_stack(cols), axis=0, return_counts=True)
    return [uniq[:, i] for i in range(uniq.shape[1])], counts.astype(float)


class _BaseFitter:
    """Shared state and maximum-likelihood machinery: fit() stores `params_` and the maximised mean log-likelihood.

    `penalizer_coef` adds penalizer_coef * sum(log(param)^2) to the negative mean log-likelihood: a ridge on the
    log-parameters that keeps near-degenerate fits (r, alpha -> inf; a -> 0) finite. Unlike `lifetimes`, which
    penalises sum(param^2), it does not depend much on the time unit (alpha is ~7x larger in days than in weeks).
    """

    _param_names: tuple[str, ...] = ()

    def __init__(self, penalizer_coef: float = 0.0) -> None:
        self.penalizer_coef = penalizer_coef

    def __repr__(self) -> str:
        if not hasattr(self, "params_"):
            return f"<{type(self).__name__}: not fitted>"
        return f"<{type(self).__name__}: " + ", ".join(f"{k}={v:.4f}" for k, v in self.params_.items()) + ">"

    def _params(self) -> tuple[float, ...]:
        if not hasattr(self, "params_"):
            raise ValueError("Model has not been fit yet.")
        return tuple(self.params_[k] for k in self._param_names)

    def _fit(self, loglik: Callable[[np.ndarray], np.ndarray], weights: np.ndarray, x0: np.ndarray) -> None:
        """Minimise the penalised negative mean log-likelihood over log-parameters (L-BFGS-B, Nelder-Mead fallback)."""
        wsum = weights.sum()

        def objective(log_params: np.ndarray) -> float:
            params = np.exp(log_params)
            with np.errstate(all="ignore"):
                value = -np.dot(weights, loglik(params)) / wsum + self.penalizer_coef * np.sum(log_params**2)
            return float(value) if np.isfinite(value) else 1e12

        bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(x0)
        options = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000}
        res = minimize(objective, np.clip(x0, -_LOG_BOUND, _LOG_BOUND), method="L-BFGS-B", bounds=bounds, options=options)
        # a restart from the optimum resets the quasi-Newton memory and polishes the finite-difference solution
        restart = minimize(objective, res.x, method="L-BFGS-B", bounds=bounds, options=options)
        res = restart if restart.fun <= res.fun else res
        if res.fun >= 1e12:  # derivative-free fallback when the gradient search got stuck on non-finite values
            nm = minimize(objective, np.clip(x0, -_LOG_BOUND, _LOG_BOUND), method="Nelder-Mead", bounds=bounds,
                          options={"maxfev": 2000, "xatol": 1e-8, "fatol": 1e-12})
            res = nm if nm.fun <= res.fun else res
        self.params_ = dict(zip(self._param_names, (float(v) for v in np.exp(res.x))))
        self.log_likelihood_ = -float(res.fun)  # mean per customer, penalty included
        self.converged_ = bool(res.success)


class BetaGeoFitter(_BaseFitter):
    """BG/NBD model [1]_: Poisson purchases at rate lambda ~ Gamma(r, alpha); after each repeat purchase the customer
    drops out with probability p ~ Beta(a, b)."""

    _param_names = ("r", "alpha", "a", "b")

    @staticmethod
    def _loglik(params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Individual log-likelihood, eq. (6) of [1]_, as log-sum-exp of its two terms."""
        r, alpha, a, b = params
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore", invalid="ignore"):
            a4 = np.where(x > 0, np.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + tx), -np.inf)
        return a1 + a2 + np.logaddexp(a3, a4)

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BetaGeoFitter:
        """Fit by maximum likelihood; `frequency` = repeat purchases, `recency` and `T` in the same time unit."""
        (x, tx, T_), w = _compress(*_check_rft(frequency, recency, T))
        scale = max(float(np.average(T_, weights=w)), 1e-3)
        self._fit(lambda p: self._loglik(p, x, tx, T_), w, np.log([1.0, scale, 1.0, 1.0]))
        return self

    def _log_dropout_odds(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        """log of delta(x>0) * a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x), the denominator term of eqs. (10)/(11)."""
        r, alpha, a, b = self._params()
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = np.log(a) - np.log(b + x - 1) + (r + x) * (np.log(alpha + T) - np.log(alpha + tx))
        return np.where(x > 0, odds, -np.inf)

    def prob_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(alive at T | x, t_x, T) = 1 / (1 + delta(x>0) a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)), from [1]_."""
        x, tx, T_ = _check_rft(frequency, recency, T)
        return expit(-self._log_dropout_odds(x, tx, T_))

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Expected number of purchases in (T, T+t] given (x, t_x, T), eq. (10) of [1]_.

        The factor ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z) is rewritten with Euler's transformation
        as (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), z = t/(alpha+T+t), which does not overflow for large x.
        """
        r, alpha, a, b = self._params()
        x, tx, T_ = _check_rft(frequency, recency, T)
        t = np.asarray(t, dtype=float)
        z = t / (alpha + T_ + t)
        c = a + b + x - 1
        with np.errstate(all="ignore"):
            hyp = np.exp((a - 1) * np.log1p(-z)) * hyp2f1(a + b - 1 - r, a - 1, c, z)
            numerator = c / (a - 1) * (1 - hyp)
        return numerator * expit(-self._log_dropout_odds(x, tx, T_))

    def prob_purchase(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(at least one purchase in (T, T+t] | x, t_x, T) = P(alive) [1 - ((alpha+T)/(alpha+T+t))^(r+x)]: an active
        customer can only drop out after a purchase, and lambda given alive is Gamma(r+x, alpha+T). Exact, where
        1 - exp(-E[purchases]) overstates it (the mixture over customers is not Poisson)."""
        r, alpha, _a, _b = self._params()
        x, tx, T_ = _check_rft(frequency, recency, T)
        t = np.asarray(t, dtype=float)
        none = np.exp((r + x) * (np.log(alpha + T_) - np.log(alpha + T_ + t)))
        return (1 - none) * expit(-self._log_dropout_odds(x, tx, T_))


def _log_pareto_a0(params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
    """log A0 of [2]_ (eq. 19 there): the integral term of the Pareto/NBD likelihood, for alpha >= beta and alpha < beta.

    A0 = F(t_x) - F(T) with F(y) = 2F1(r+s+x, k; r+s+x+1; |alpha-beta|/(m+y)) / (m+y)^(r+s+x), where m = max(alpha,
    beta) and k = s+1 if alpha >= beta else r+x. Euler's transformation gives 2F1(rsx, k; rsx+1; z) =
    (1-z)^(1-k) 2F1(1, rsx+1-k; rsx+1; z), whose series is bounded by 1/(1-z), so logs stay finite for any x.
    """
    r, alpha, s, beta = params
    rsx = r + s + x
    big, small = max(alpha, beta), min(alpha, beta)
    k = s + 1 if alpha >= beta else r + x

    def log_f(y: np.ndarray) -> np.ndarray:
        log1mz = np.log(small + y) - np.log(big + y)  # log(1 - z), exact
        z = (big - small) / (big + y)
        return (1 - k) * log1mz + np.log(hyp2f1(1.0, rsx + 1 - k, rsx + 1, z)) - rsx * np.log(big + y)

    f_tx, f_T = log_f(tx), log_f(T)
    diff = np.minimum(f_T - f_tx, 0.0)  # F is decreasing in y; clip rounding noise
    with np.errstate(divide="ignore"):
        return f_tx + np.log(-np.expm1(diff))  # -inf when t_x == T


class ParetoNBDFitter(_BaseFitter):
    """Pareto/NBD model [2]_: Poisson purchases at rate lambda ~ Gamma(r, alpha) while alive; exponential lifetime
    with rate mu ~ Gamma(s, beta)."""

    _param_names = ("r", "alpha", "s", "beta")

    @staticmethod
    def _loglik(params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Individual log-likelihood, eq. (22) of [2]_: log of Gamma(r+x) alpha^r beta^s / Gamma(r) times
        [1/((alpha+T)^(r+x) (beta+T)^s) + s/(r+s+x) A0]."""
        r, alpha, s, beta = params
        head = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
        alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
        dead = np.log(s) - np.log(r + s + x) + _log_pareto_a0(params, x, tx, T)
        return head + np.logaddexp(alive, dead)

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> ParetoNBDFitter:
        """Fit by maximum likelihood; `frequency` = repeat purchases, `recency` and `T` in the same time unit."""
        (x, tx, T_), w = _compress(*_check_rft(frequency, recency, T))
        scale = max(float(np.average(T_, weights=w)), 1e-3)
        self._fit(lambda p: self._loglik(p, x, tx, T_), w, np.log([1.0, scale, 1.0, scale]))
        return self

    def prob_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(alive at T | x, t_x, T) = 1 / (1 + s/(r+s+x) (alpha+T)^(r+x) (beta+T)^s A0), eq. (18) of [2]_."""
        params = np.array(self._params())
        r, alpha, s, beta = params
        x, tx, T_ = _check_rft(frequency, recency, T)
        with np.errstate(all="ignore"):
            log_odds = (np.log(s) - np.log(r + s + x) + (r + x) * np.log(alpha + T_) + s * np.log(beta + T_)
                        + _log_pareto_a0(params, x, tx, T_))
        return expit(-log_odds)

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Expected number of purchases in (T, T+t], eq. (24) of [2]_:
        (r+x)(beta+T) / ((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)] P(alive)."""
        r, alpha, s, beta = self._params()
        x, tx, T_ = _check_rft(frequency, recency, T)
        t = np.asarray(t, dtype=float)
        log_ratio = np.log(beta + T_) - np.log(beta + T_ + t)
        # [1 - ratio^(s-1)] / (s-1) -> -log(ratio) as s -> 1; expm1 keeps it accurate near s = 1
        term = -log_ratio if abs(s - 1) < 1e-10 else -np.expm1((s - 1) * log_ratio) / (s - 1)
        return (r + x) * (beta + T_) / (alpha + T_) * term * self.prob_alive(x, tx, T_)

    def prob_purchase(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike,
                      nodes: int = 24) -> np.ndarray:
        """P(at least one purchase in (T, T+t] | x, t_x, T) = P(alive) E[lambda/(lambda+mu) (1 - e^-(lambda+mu)t)]
        over lambda ~ Gamma(r+x, alpha+T) and mu ~ Gamma(s, beta+T), the posteriors given alive at T: the purchase
        must come before the exponential lifetime ends. By Gauss-Laguerre quadrature (`nodes` per rate), per
        distinct x; exact where 1 - exp(-E[purchases]) overstates it."""
        r, alpha, s, beta = self._params()
        x, tx, T_ = _check_rft(frequency, recency, T)
        t = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
        v, wv = roots_genlaguerre(nodes, s - 1)
        wv = wv / wv.sum()
        out = np.empty(x.shape)
        for xv in np.unique(x):
            rows = x == xv
            u, wu = roots_genlaguerre(nodes, r + xv - 1)
            lam = u[None, :, None] / (alpha + T_[rows])[:, None, None]
            mu = v[None, None, :] / (beta + T_[rows])[:, None, None]
            total = lam + mu
            g = lam / total * -np.expm1(-total * t[rows][:, None, None])
            out[rows] = np.einsum("cij,i,j->c", g, wu / wu.sum(), wv)
        return out * self.prob_alive(x, tx, T_)


class GammaGammaFitter(_BaseFitter):
    """Gamma-Gamma model of spend per transaction [3]_: z ~ Gamma(p, nu), nu ~ Gamma(q, v); fit on repeat buyers."""

    _param_names = ("p", "q", "v")

    @staticmethod
    def _loglik(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Log-density of the mean spend m over x transactions, eq. (3) of Fader & Hardie (2013)."""
        p, q, v = params
        px = p * x
        return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * np.log(m)
                + px * np.log(x) - (px + q) * np.log(v + x * m))

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaFitter:
        """Fit on customers with frequency > 0 and monetary_value > 0 (others are left out)."""
        x, m = np.broadcast_arrays(np.asarray(frequency, dtype=float), np.asarray(monetary_value, dtype=float))
        keep = (x > 0) & (m > 0) & np.isfinite(m)
        if not keep.any():
            raise ValueError("No customers with frequency > 0 and monetary_value > 0 to fit on.")
        (x, m), w = _compress(x[keep], m[keep])
        self._fit(lambda p: self._loglik(p, x, m), w, np.log([1.0, 1.0, max(float(np.average(m, weights=w)), 1e-3)]))
        return self

    def conditional_expected_average_profit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> np.ndarray:
        """E[Z | x, m] = (q-1)/(px+q-1) * pv/(q-1) + px/(px+q-1) * m, eq. (5) of [3]_; x = 0 gives pv/(q-1)."""
        p, q, v = self._params()
        x, m = np.broadcast_arrays(np.asarray(frequency, dtype=float), np.asarray(monetary_value, dtype=float))
        m = np.where(x > 0, m, 0.0)
        return (p * v + p * x * m) / (p * x + q - 1)


def rfm_summary(transactions: pd.DataFrame, as_of: str | pd.Timestamp, freq_days: float = 1.0) -> pd.DataFrame:
    """Per-customer frequency / recency / T / monetary_value as of a cutoff (the `lifetimes` convention).

    Rows with timestamp <= as_of are summed per customer and calendar day; only days with a positive net amount
    are purchases (so a day of returns, or of a purchase fully returned the same day, is not one). Customers
    without any purchase are dropped.

    Args:
        transactions: canonical frame with customer_id, timestamp, amount (negative = return).
        as_of: cutoff; rows after it are ignored. T is measured to this calendar day.
        freq_days: length of a period in days; purchase days are grouped into periods of this length counted
            from each customer's first purchase day, and recency and T are given in periods.

    Returns:
        DataFrame indexed by customer_id: frequency (distinct purchase periods minus 1), recency (first to last
        purchase, in periods), T (first purchase to as_of, in periods), monetary_value (mean net amount of the repeat
        purchase periods, 0 when frequency is 0).
    """
    if freq_days <= 0:
        raise ValueError("freq_days must be positive.")
    ts = pd.to_datetime(transactions["timestamp"])
    cutoff = pd.Timestamp(as_of)
    if ts.dt.tz is not None and cutoff.tz is None:
        cutoff = cutoff.tz_localize(ts.dt.tz)
    elif ts.dt.tz is None and cutoff.tz is not None:
        cutoff = cutoff.tz_convert(None)
    frame = pd.DataFrame({"customer_id": transactions["customer_id"].astype(str), "day": ts.dt.normalize(),
                          "amount": pd.to_numeric(transactions["amount"]).astype(float)})
    daily = frame[ts <= cutoff].groupby(["customer_id", "day"], sort=True)["amount"].sum()
    daily = daily[daily > 0].reset_index()
    if daily.empty:
        return pd.DataFrame({"frequency": pd.Series(dtype="int64"), **{c: pd.Series(dtype=float) for c in
                             ("recency", "T", "monetary_value")}}).rename_axis("customer_id")
    first_day = daily.groupby("customer_id", sort=True)["day"].min()
    # whole calendar days (rounding absorbs 23/25-hour days at DST changes)
    days_since_first = ((daily["day"] - daily["customer_id"].map(first_day)) / pd.Timedelta(days=1)).round()
    daily["period"] = np.floor(days_since_first / freq_days).astype("int64")
    periods = daily.groupby(["customer_id", "period"], sort=True)["amount"].sum().reset_index()
    g = periods.groupby("customer_id", sort=True)
    age_days = ((cutoff.normalize().tz_localize(None) - first_day.dt.tz_localize(None)) / pd.Timedelta(days=1)).round()
    out = pd.DataFrame({
        "frequency": (g.size() - 1).astype("int64"),
        "recency": g["period"].max().astype(float),
        "T": np.floor(age_days / freq_days).astype(float),
        "monetary_value": periods[periods["period"] > 0].groupby("customer_id")["amount"].mean(),
    })
    out["monetary_value"] = out["monetary_value"].fillna(0.0).astype(float)
    out.index.name = "customer_id"
    return out
