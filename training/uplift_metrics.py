"""Uplift metrics: Qini and uplift curves, normalised Qini, AUUC, uplift@k, off-policy values, power calculation.

Pure functions on arrays `y` (outcome: 0/1 or a value), `treated` (bool) and `uplift` (the predicted effect). Rows
are ranked by predicted uplift, highest first; ties are broken by row position after a stable sort of -uplift, and
curves are only read at the ends of tied blocks, so that tied rows never count in the model's favour.

References: Radcliffe (2007), "Using control groups to target on predicted lift" (Qini); Gutierrez and Gerardy
(2017), "Causal inference and uplift modelling: a review of the literature" (uplift curve, AUUC); Dudik, Langford
and Li (2011), "Doubly robust policy evaluation and learning" (IPW and DR value of a policy).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

__all__ = [
    "bootstrap_ci",
    "holdout_size",
    "normalized_auuc",
    "normalized_qini",
    "policy_value",
    "qini_auc",
    "qini_curve",
    "uplift_at_k",
    "uplift_by_decile",
    "uplift_curve",
]


def _arrays(y, treated, uplift=None):
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated).astype(bool)
    if uplift is None:
        return y, t
    return y, t, np.asarray(uplift, dtype=float)


def _cumulative(y, treated, uplift):
    """Cumulative (n_t, n_c, y_t, y_c) at the end of each block of tied predictions, best first, with a leading 0."""
    y, t, u = _arrays(y, treated, uplift)
    order = np.argsort(-u, kind="stable")
    y, t, u = y[order], t[order], u[order]
    ends = np.r_[np.flatnonzero(u[1:] != u[:-1]), len(u) - 1]  # last row of each tied block
    n_t = np.r_[0, np.cumsum(t)[ends]]
    n_c = np.r_[0, np.cumsum(~t)[ends]]
    y_t = np.r_[0, np.cumsum(y * t)[ends]]
    y_c = np.r_[0, np.cumsum(y * ~t)[ends]]
    return n_t, n_c, y_t, y_c


def qini_curve(y, treated, uplift) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve: (share of rows targeted, Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k)), starting at (0, 0).

    Q(k) is the incremental outcome in the top k in units of treated rows (Radcliffe 2007, eq. 1).
    """
    n_t, n_c, y_t, y_c = _cumulative(y, treated, uplift)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
    return (n_t + n_c) / max(n_t[-1] + n_c[-1], 1), q


def uplift_curve(y, treated, uplift) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve: (share targeted, U(k) = (Y_t(k)/N_t(k) - Y_c(k)/N_c(k)) * (N_t(k) + N_c(k)))."""
    n_t, n_c, y_t, y_c = _cumulative(y, treated, uplift)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (np.where(n_t > 0, y_t / n_t, 0.0) - np.where(n_c > 0, y_c / n_c, 0.0)) * (n_t + n_c)
    return (n_t + n_c) / max(n_t[-1] + n_c[-1], 1), u


def qini_auc(x: np.ndarray, q: np.ndarray) -> float:
    """Area between a curve and the straight line from (0, 0) to its end point (the random ranking)."""
    return float(np.trapezoid(q, x) - q[-1] * x[-1] / 2)


def _perfect(y, treated) -> np.ndarray:
    """The ranking of an oracle: treated responders first (by outcome), control responders last."""
    y, t = _arrays(y, treated)
    return np.where(t, y, -y)


def normalized_qini(y, treated, uplift) -> float:
    """Qini coefficient of `uplift` divided by that of the perfect ranking: 1 perfect, about 0 random."""
    best = qini_auc(*qini_curve(y, treated, _perfect(y, treated)))
    return float(qini_auc(*qini_curve(y, treated, uplift)) / best) if best > 0 else float("nan")


def normalized_auuc(y, treated, uplift) -> float:
    """Area under the uplift curve above random, divided by the perfect ranking's: 1 perfect, about 0 random."""
    best = qini_auc(*uplift_curve(y, treated, _perfect(y, treated)))
    return float(qini_auc(*uplift_curve(y, treated, uplift)) / best) if best > 0 else float("nan")


def uplift_at_k(y, treated, uplift, k: float = 0.3, strategy: str = "overall") -> dict[str, float]:
    """Treatment minus control response rate in the top `k` share by predicted uplift.

    Args:
        strategy: "overall" takes the top k of all rows, then splits them by treatment; "by_group" takes the top
            k of the treated and the top k of the control rows separately (scikit-uplift's `by_group`).

    Returns:
        uplift, rate_treated, rate_control, n_treated, n_control (the split inside the top k).
    """
    y, t, u = _arrays(y, treated, uplift)
    order = np.argsort(-u, kind="stable")
    if strategy == "overall":
        top = order[: int(np.ceil(k * len(y)))]
        yt, yc = y[top][t[top]], y[top][~t[top]]
    elif strategy == "by_group":
        ot, oc = order[t[order]], order[~t[order]]
        yt, yc = y[ot[: int(np.ceil(k * len(ot)))]], y[oc[: int(np.ceil(k * len(oc)))]]
    else:
        raise ValueError(f"unknown strategy {strategy!r} (overall, by_group)")
    rt = float(yt.mean()) if len(yt) else float("nan")
    rc = float(yc.mean()) if len(yc) else float("nan")
    return {"uplift": rt - rc, "rate_treated": rt, "rate_control": rc, "n_treated": len(yt),
            "n_control": len(yc)}


def uplift_by_decile(y, treated, uplift, bins: int = 10) -> list[dict[str, float]]:
    """Per decile of predicted uplift (best first): mean prediction, observed uplift and the treated/control counts."""
    y, t, u = _arrays(y, treated, uplift)
    order = np.argsort(-u, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, bins)):
        ti, yi = t[idx], y[idx]
        rt = yi[ti].mean() if ti.any() else np.nan
        rc = yi[~ti].mean() if (~ti).any() else np.nan
        rows.append({"decile": i + 1, "predicted": float(u[idx].mean()), "observed": float(rt - rc),
                     "rate_treated": float(rt), "rate_control": float(rc), "n_treated": int(ti.sum()),
                     "n_control": int((~ti).sum())})
    return rows


def _policy_terms(y, treated, policy, propensity, cost, mu0, mu1) -> tuple[np.ndarray, np.ndarray]:
    """Per-row IPW and DR terms of the incremental value of `policy` over nudging no one."""
    y, t = _arrays(y, treated)
    pi = np.asarray(policy, dtype=float)
    e = np.broadcast_to(np.asarray(propensity, dtype=float), y.shape)
    c = np.broadcast_to(np.asarray(cost, dtype=float), y.shape)
    ipw_effect = t * y / e - (~t) * y / (1 - e)  # unbiased for tau(x) under randomisation
    ipw = pi * (ipw_effect - c)
    if mu0 is None or mu1 is None:
        return ipw, ipw
    m0, m1 = np.asarray(mu0, dtype=float), np.asarray(mu1, dtype=float)
    dr_effect = m1 - m0 + t * (y - m1) / e - (~t) * (y - m0) / (1 - e)
    return ipw, pi * (dr_effect - c)


def policy_value(y, treated, policy, propensity, cost=0.0, mu0=None, mu1=None, n_boot: int = 300,
                 seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Off-policy estimate of the incremental outcome minus cost per customer of nudging where `policy` is 1.

    The value of a policy over nudging no one is E[pi(x) (tau(x) - cost)]; IPW replaces tau(x) by
    t y / e - (1 - t) y / (1 - e), DR by mu1 - mu0 + t (y - mu1) / e - (1 - t) (y - mu0) / (1 - e)
    (Dudik et al. 2011, eq. 2-3), with `mu0`, `mu1` the outcome models (fitted on other rows). Intervals are
    percentile bootstraps over customers.

    Returns:
        ipw, ipw_lo, ipw_hi, dr, dr_lo, dr_hi (per customer), share (the share of customers nudged).
    """
    ipw, dr = _policy_terms(y, treated, policy, propensity, cost, mu0, mu1)
    out = {"share": float(np.mean(policy))}
    for name, terms in (("ipw", ipw), ("dr", dr)):
        lo, hi = bootstrap_ci(terms, np.mean, n_boot, seed, level)
        out.update({name: float(terms.mean()), f"{name}_lo": lo, f"{name}_hi": hi})
    return out


def bootstrap_ci(values, stat=np.mean, n_boot: int = 300, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over the rows of `values`."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = np.array([stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def holdout_size(p_control: float, uplift: float, n_treated: int, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Control (hold-out) rows needed to detect `uplift` over `p_control` when `n_treated` customers are nudged.

    Two-sided two-proportion z-test: the hold-out n_c solves z_(1-alpha/2) + z_power = d / sqrt(p1 q1 / n_t +
    p0 q0 / n_c) with p1 = p0 + d (Chow, Shao and Wang 2008, section 4.2). When even an infinite hold-out is not
    enough, `n_control` is None and `min_treated` says how many must be nudged (with an equal hold-out).

    Returns:
        n_control, holdout_share, equal_arm (per arm with a 50/50 split), min_treated, z (the combined z).
    """
    p0 = float(np.clip(p_control, 1e-6, 1 - 1e-6))
    d = abs(float(uplift))
    p1 = float(np.clip(p0 + float(uplift), 1e-6, 1 - 1e-6))
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    if d <= 0:
        return {"n_control": None, "holdout_share": None, "equal_arm": None, "min_treated": None, "z": float(z)}
    target = (d / z) ** 2  # the variance of the difference that gives the power
    equal = int(np.ceil((p0 * (1 - p0) + p1 * (1 - p1)) / target))
    left = target - p1 * (1 - p1) / max(n_treated, 1)
    n_c = int(np.ceil(p0 * (1 - p0) / left)) if left > 0 else None
    share = n_c / (n_c + n_treated) if n_c is not None else None
    return {"n_control": n_c, "holdout_share": share, "equal_arm": equal,
            "min_treated": equal if n_c is None else None, "z": float(z)}
