"""BTYD baselines: published CDNOW estimates, parameter recovery, independent numeric references, rfm_summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from scipy.special import roots_genlaguerre, roots_jacobi

from training.btyd import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter, rfm_summary

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    return pd.read_csv(DATA / "cdnow_summary.csv")


@pytest.fixture(scope="module")
def cdnow_monetary() -> pd.DataFrame:
    df = pd.read_csv(DATA / "cdnow_summary_with_monetary.csv")
    return df.rename(columns={"x": "frequency", "t_x": "recency", "zbar": "monetary_value"})


# --- (a) published parameter values on the CDNOW sample -------------------------------------------------------------

def test_bgnbd_fit_matches_fader_hardie_lee_2005_on_cdnow(cdnow):
    bg = BetaGeoFitter().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    expected = [0.243, 4.414, 0.793, 2.426]  # Fader, Hardie & Lee (2005), section 5
    npt.assert_array_almost_equal([bg.params_[k] for k in ("r", "alpha", "a", "b")], expected, decimal=2)
    assert bg.log_likelihood_ * len(cdnow) == pytest.approx(-9582.4, abs=0.1)  # LL reported in the paper


def test_pareto_nbd_fit_matches_fader_hardie_note_on_cdnow(cdnow):
    pn = ParetoNBDFitter().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    expected = [0.553, 10.578, 0.606, 11.669]  # Fader & Hardie (2005) note; LL -9595.0
    npt.assert_array_almost_equal([pn.params_[k] for k in ("r", "alpha", "s", "beta")], expected, decimal=2)
    assert pn.log_likelihood_ * len(cdnow) == pytest.approx(-9595.0, abs=0.1)


def test_gamma_gamma_fit_matches_fader_hardie_2013_on_cdnow_repeat_buyers(cdnow_monetary):
    gg = GammaGammaFitter().fit(cdnow_monetary["frequency"], cdnow_monetary["monetary_value"])  # x = 0 rows dropped
    npt.assert_array_almost_equal([gg.params_[k] for k in ("p", "q", "v")], [6.25, 3.74, 15.44], decimal=2)
    p, q, v = gg.params_["p"], gg.params_["q"], gg.params_["v"]
    # frequency 0 -> population mean p v / (q - 1); otherwise a weighted mean of it and the customer's own mean
    got = gg.conditional_expected_average_profit([0, 2], [0.0, 22.35])
    assert got[0] == pytest.approx(p * v / (q - 1))
    w = p * 2 / (p * 2 + q - 1)
    assert got[1] == pytest.approx((1 - w) * p * v / (q - 1) + w * 22.35)


# --- (b) parameter recovery on a simulated BG/NBD world -------------------------------------------------------------

def simulate_bgnbd(rng: np.random.Generator, n: int, r: float, alpha: float, a: float, b: float, T: np.ndarray):
    """Draw (frequency, recency) from the BG/NBD generative story, vectorised."""
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    dies_after = rng.geometric(p)  # the repeat purchase after which the customer drops out
    n_poisson = rng.poisson(lam * T)  # purchases in (0, T] had the customer lived forever
    x = np.minimum(n_poisson, dies_after)
    # the x-th of n_poisson uniform arrival times on (0, T] is T * Beta(x, n_poisson - x + 1)
    recency = np.where(x > 0, T * rng.beta(np.maximum(x, 1), n_poisson - x + 1), 0.0)
    return x, recency


def test_bgnbd_recovers_known_parameters_from_simulated_customers():
    rng = np.random.default_rng(0)
    truth = {"r": 0.8, "alpha": 4.0, "a": 0.8, "b": 2.5}
    T = rng.uniform(26, 78, 5_000)  # weeks, staggered acquisition
    x, recency = simulate_bgnbd(rng, 5_000, *truth.values(), T)
    bg = BetaGeoFitter().fit(x, recency, T)
    for name, tol in {"r": 0.1, "alpha": 0.1, "a": 0.25, "b": 0.25}.items():  # a, b are less well identified
        assert bg.params_[name] == pytest.approx(truth[name], rel=tol), name


# --- (c) predictions against an independent numeric reference -------------------------------------------------------

def _gamma_nodes(shape: float, rate: float, n: int = 120):
    """Gauss-Laguerre nodes/weights for integrals against lam^(shape-1) exp(-rate lam) on (0, inf)."""
    u, w = roots_genlaguerre(n, shape - 1)
    return u / rate, w / rate**shape


def _beta_nodes(a: float, b: float, n: int = 120):
    """Gauss-Jacobi nodes/weights for integrals against p^(a-1) (1-p)^(b-1) on (0, 1)."""
    u, w = roots_jacobi(n, b - 1, a - 1)
    return (1 + u) / 2, w / 2 ** (a + b - 1)


def bgnbd_reference(params: dict, t: float, x: int, tx: float, T: float) -> tuple[float, float, float]:
    """E[Y(t) | x, t_x, T], P(alive) and P(a purchase in (T, T+t]) by integrating the individual-level model over
    the posterior of (lam, p).

    Given lam, p and alive at T, purchases in (T, T+t] have mean (1 - exp(-lam p t)) / p; the individual likelihood is
    (1-p)^x lam^x e^(-lam T) [alive] + delta(x>0) p (1-p)^(x-1) lam^x e^(-lam t_x) [dropped out at t_x].
    """
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    lam, wl = _gamma_nodes(r + x, alpha + tx)  # prior lam^(r-1) e^(-alpha lam) times lam^x e^(-lam t_x)
    p, wp = _beta_nodes(a, b)
    lam, p = lam[:, None], p[None, :]
    w = wl[:, None] * wp[None, :]
    alive = (1 - p) ** x * np.exp(-lam * (T - tx))
    dead = p * (1 - p) ** (x - 1) if x > 0 else 0 * p
    evidence = np.sum(w * (alive + dead))
    future = -np.expm1(-lam * p * t) / p
    buy = -np.expm1(-lam * t)  # an active customer drops out only after a purchase
    return (np.sum(w * alive * future) / evidence, np.sum(w * alive) / evidence,
            np.sum(w * alive * buy) / evidence)


def pareto_reference(params: dict, t: float, x: int, tx: float, T: float) -> tuple[float, float, float]:
    """The same for Pareto/NBD: posterior over (lam, mu); alive mean lam (1 - exp(-mu t)) / mu."""
    r, alpha, s, beta = params["r"], params["alpha"], params["s"], params["beta"]
    lam, wl = _gamma_nodes(r + x, alpha + tx)
    mu, wm = _gamma_nodes(s, beta + tx)
    lam, mu = lam[:, None], mu[None, :]
    w = wl[:, None] * wm[None, :]
    d = T - tx
    alive = np.exp(-(lam + mu) * d)
    dead = mu * -np.expm1(-(lam + mu) * d) / (lam + mu)  # died in (t_x, T]
    evidence = np.sum(w * (alive + dead))
    buy = lam / (lam + mu) * -np.expm1(-(lam + mu) * t)  # a purchase before the lifetime ends
    return (np.sum(w * alive * lam * -np.expm1(-mu * t) / mu) / evidence, np.sum(w * alive) / evidence,
            np.sum(w * alive * buy) / evidence)


CUSTOMERS = [(39.0, 2, 30.43, 38.86), (39.0, 0, 0.0, 38.86), (10.0, 7, 20.0, 38.86), (52.0, 15, 37.0, 38.0)]


@pytest.mark.parametrize("t, x, tx, T", CUSTOMERS)
def test_bgnbd_predictions_match_numeric_integration(t, x, tx, T):
    bg = BetaGeoFitter()
    bg.params_ = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    expected, alive, _ = bgnbd_reference(bg.params_, t, x, tx, T)
    assert bg.expected_purchases(t, x, tx, T) == pytest.approx(expected, rel=1e-6)
    assert bg.prob_alive(x, tx, T) == pytest.approx(alive, rel=1e-6)


@pytest.mark.parametrize("params", [
    {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669},  # alpha < beta
    {"r": 0.553, "alpha": 12.0, "s": 0.606, "beta": 5.0},  # alpha >= beta
    {"r": 0.9, "alpha": 5.0, "s": 1.7, "beta": 30.0},  # s > 1
])
@pytest.mark.parametrize("t, x, tx, T", CUSTOMERS)
def test_pareto_nbd_predictions_match_numeric_integration(params, t, x, tx, T):
    pn = ParetoNBDFitter()
    pn.params_ = params
    expected, alive, _ = pareto_reference(params, t, x, tx, T)
    assert pn.expected_purchases(t, x, tx, T) == pytest.approx(expected, rel=1e-6)
    assert pn.prob_alive(x, tx, T) == pytest.approx(alive, rel=1e-6)


@pytest.mark.parametrize("t, x, tx, T", CUSTOMERS)
def test_purchase_probabilities_match_numeric_integration_and_are_below_the_poisson_shortcut(t, x, tx, T):
    bg, pn = BetaGeoFitter(), ParetoNBDFitter()
    bg.params_ = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    pn.params_ = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
    for model, reference in ((bg, bgnbd_reference), (pn, pareto_reference)):
        got = model.prob_purchase(t, x, tx, T)
        assert got == pytest.approx(reference(model.params_, t, x, tx, T)[2], rel=1e-4)
        assert got <= 1 - np.exp(-model.expected_purchases(t, x, tx, T)) + 1e-12  # the shortcut overstates it


def test_bgnbd_customer_without_repeat_purchase_is_alive():
    bg = BetaGeoFitter()
    bg.params_ = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    npt.assert_array_equal(bg.prob_alive([0, 0, 0], [0, 0, 0], [1.0, 20.0, 300.0]), 1.0)


def test_predictions_stay_finite_for_heavy_buyers_and_are_vectorised():
    x = np.array([0, 1, 50, 300, 2000, 5000])
    tx = np.array([0.0, 10, 600, 700, 729, 500])
    T = np.full(6, 730.0)
    bg = BetaGeoFitter()
    bg.params_ = {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5}
    for params in ({"r": 0.6, "alpha": 40.0, "s": 0.6, "beta": 50.0}, {"r": 0.6, "alpha": 60.0, "s": 0.6, "beta": 50.0}):
        pn = ParetoNBDFitter()
        pn.params_ = params
        for model in (bg, pn):
            e, pa = model.expected_purchases(90, x, tx, T), model.prob_alive(x, tx, T)
            assert e.shape == pa.shape == (6,)
            assert np.isfinite(e).all() and np.isfinite(pa).all() and ((pa >= 0) & (pa <= 1)).all()
            assert pa[-1] < 1e-6 and e[4] > 100  # silent 230 days at ~10/day: gone; buying daily till the end: alive


def test_unfitted_models_and_bad_inputs_raise():
    with pytest.raises(ValueError, match="Model has not been fit yet."):
        BetaGeoFitter().expected_purchases(10, 1, 1, 2)
    with pytest.raises(ValueError, match="Model has not been fit yet."):
        GammaGammaFitter().conditional_expected_average_profit(1, 10.0)
    with pytest.raises(ValueError, match="larger than T"):
        ParetoNBDFitter().fit([1, 2], [5.0, 3.0], [4.0, 4.0])


# --- (d) rfm_summary on hand-typed rows -----------------------------------------------------------------------------

def test_rfm_summary_handles_same_day_orders_returns_cutoff_and_return_only_customers():
    rows = [
        ["a", "2024-01-01 09:00", 10.0],   # a: first purchase day
        ["a", "2024-01-01 17:30", 5.0],    # a: second order the same day -> still one purchase day (net 15)
        ["a", "2024-01-05 12:00", 20.0],   # a: repeat purchase day 1
        ["a", "2024-01-07 10:00", -8.0],   # a: a day with only a return -> not a purchase, not in monetary
        ["a", "2024-01-11 08:00", 30.0],   # a: repeat purchase day 2 (recency = 10 days)
        ["a", "2024-01-11 18:00", -6.0],   # a: partial return the same day -> net 24 for that day
        ["a", "2024-02-01 00:00", 99.0],   # a: after as_of -> ignored
        ["b", "2024-01-20 00:00", 40.0],   # b: single purchase, frequency 0, monetary 0
        ["b", "2024-01-25 10:00", -40.0],  # b: returns it -> b keeps its first purchase day
        ["c", "2024-01-03 15:00", -12.0],  # c: only returns -> dropped
        ["d", "2024-01-31 23:59", 7.0],    # d: first purchase at the very cutoff -> T = 0
    ]
    tx = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"]).astype({"timestamp": "datetime64[ns]"})
    got = rfm_summary(tx.sample(frac=1.0, random_state=1), as_of="2024-01-31 23:59")  # row order must not matter
    expected = pd.DataFrame(
        {"frequency": [2, 0, 0], "recency": [10.0, 0.0, 0.0], "T": [30.0, 11.0, 0.0], "monetary_value": [22.0, 0.0, 0.0]},
        index=pd.Index(["a", "b", "d"], name="customer_id"),
    )
    assert_frame_equal(got, expected, check_index_type=False)


def test_rfm_summary_weekly_periods_count_distinct_weeks_from_first_purchase():
    tx = pd.DataFrame({
        "customer_id": ["a", "a", "a", "a"],
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-09", "2024-01-20"]),  # weeks 0, 0, 1, 2
        "amount": [1.0, 2.0, 3.0, 4.0],
    })
    got = rfm_summary(tx, as_of="2024-01-29", freq_days=7)
    assert got.loc["a"].to_dict() == {"frequency": 2, "recency": 2.0, "T": 4.0, "monetary_value": 3.5}
