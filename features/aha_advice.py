"""Beyond correlation: does an action add information, which experiment would test the top rule, what to reward.

All findings of `features.aha` are correlational: customers who reach a rule differ from those who do not in many
ways. Three aids to judge them:
- `added_information`: per rule, a logistic regression of "retained" on the top rule and on the customer's general
  engagement (events in the window, days since the last event, events before the first purchase, value of the
  first purchase; first-time buyers all have frequency 1 and the same recency, so engagement stands in for
  recency/frequency), with and without the rule. The likelihood-ratio test (chi2, 1 df) says whether the rule adds
  information; a rule that is associated on its own but adds nothing "rides on the same engagement". The phi of the
  rule within the customers who did and did not reach the top rule is reported too.
- `experiment_plan`: the randomised test of the top rule, with the hold-out size from the two-proportion power
  calculation for unequal groups (Fleiss, Levin & Paik 2003, Statistical Methods for Rates and Proportions, 3rd ed.,
  section 4.4).
- `earn_table`: points for the actions a loyalty programme could reward, proportional to the difference in the
  come-back rate and to the value of a retained customer (only an experiment proves the effect).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from features.aha import AhaResult, Cohort, threshold_metrics

__all__ = ["CAVEAT", "NUDGES", "added_information", "earn_table", "experiment_plan", "significant", "top_rule"]

CAVEAT = "correlational: only a randomised experiment proves that rewarding or nudging this action causes returns"
NUDGES = {
    "app_session": "an in-app onboarding push or an app-download invitation right after the first purchase",
    "email_open": "a welcome e-mail series with a reason to open",
    "newsletter_optin": "a newsletter opt-in invitation",
    "feedback": "an invitation to give feedback on the first order",
    "review": "a review request once the first order has arrived",
    "referral": "a refer-a-friend invitation",
    "survey": "an invitation to a short survey or research panel",
    "purchase_categories": "a cross-sell recommendation from another category",
    "high_margin_lines": "an up-sell recommendation of high-margin products",
    "app_orders": "an incentive to place the next order in the app",
}


def significant(rules: pd.DataFrame, alpha: float = 0.05) -> pd.Series:
    """Rules with a significantly higher come-back rate after the per-action Bonferroni adjustment."""
    return (rules["p_adjusted"] < alpha) & (rules["diff"] > 0)


def top_rule(result: AhaResult) -> pd.Series | None:
    """The best rule with a significantly higher come-back rate (p_adjusted < alpha, rate_if > rate_else), or None."""
    ok = result.rules.loc[significant(result.rules)]
    return ok.iloc[0] if len(ok) else None


def _reached(cohort: Cohort, rule: pd.Series) -> np.ndarray:
    return cohort.counts(rule["action"], rule["within_days"]) >= rule["min_count"]


def _engagement(cohort: Cohort, days: float) -> np.ndarray:
    """Covariates: log events in the window, days since the last event by `days`, log prior events, log value."""
    n = cohort.n
    volume = np.zeros(n)
    last = np.full(n, -np.inf)
    for name, (idx, off) in cohort.actions.items():
        if cohort.sources[name] != "events":
            continue
        inside = off <= days
        volume += np.bincount(idx[inside], minlength=n)
        np.maximum.at(last, idx[inside], off[inside])
    recency = np.where(np.isfinite(last), days - last, days + 1.0)
    return np.column_stack([np.log1p(volume), recency, np.log1p(cohort.prior_events),
                            np.log1p(np.clip(cohort.first_value, 0, None))])


def _loglik(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, np.ndarray]:
    """Maximised log-likelihood and coefficients of a logistic regression (Newton-Raphson, tiny ridge)."""
    sd = x.std(axis=0)
    xs = np.column_stack([np.ones(len(x)), (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1)])
    beta = np.zeros(xs.shape[1])
    for _ in range(iters):
        p = expit(xs @ beta)
        hess = xs.T @ (xs * (p * (1 - p))[:, None]) + 1e-6 * np.eye(xs.shape[1])
        step = np.linalg.solve(hess, xs.T @ (y - p))
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    p = np.clip(expit(xs @ beta), 1e-12, 1 - 1e-12)
    return float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p))), beta


def added_information(result: AhaResult, max_rows: int = 200_000, alpha: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """For each rule: does it add information beyond the top rule and general engagement? (see module docstring)

    Returns:
        One row per rule (same order as `result.rules`): lr_stat, lr_p_value, phi_if_top, phi_if_not_top,
        adds_information (bool) and verdict.
    """
    cohort, rules = result.cohort, result.rules
    top = top_rule(result)
    rows = []
    rng = np.random.default_rng(seed)
    for i, rule in rules.iterrows():
        is_top = top is not None and rule["action"] == top["action"]
        days = max(rule["within_days"], top["within_days"]) if top is not None else rule["within_days"]
        risk = cohort.at_risk(days)
        keep = np.flatnonzero(risk)
        if len(keep) > max_rows:  # seeded sample of the sorted cohort: independent of the input row order
            keep = np.sort(rng.choice(keep, max_rows, replace=False))
        y = cohort.retained(days)[keep].astype(float)
        mine = _reached(cohort, rule)[keep]
        base = _engagement(cohort, days)[keep]
        row = {"action": rule["action"], "lr_stat": np.nan, "lr_p_value": np.nan, "phi_if_top": np.nan,
               "phi_if_not_top": np.nan}
        if top is not None and not is_top:
            theirs = _reached(cohort, top)[keep]
            base = np.column_stack([base, theirs])
            for name, stratum in (("phi_if_top", theirs), ("phi_if_not_top", ~theirs)):
                if stratum.sum() > 1:
                    m = threshold_metrics(float(stratum.sum()), float(y[stratum].sum()),
                                          np.array([mine[stratum].sum()]), np.array([y[stratum & mine].sum()]))
                    row[name] = float(m["phi"].iloc[0])
        if 0 < mine.sum() < len(mine) and 0 < y.sum() < len(y):
            ll0, _ = _loglik(base, y)
            ll1, beta = _loglik(np.column_stack([base, mine]), y)
            row["lr_stat"] = max(2 * (ll1 - ll0), 0.0)
            row["lr_p_value"] = float(stats.chi2.sf(row["lr_stat"], 1))
            adds = row["lr_p_value"] < alpha and beta[-1] > 0
        else:
            adds = False
        row["adds_information"] = bool(adds)
        if rule["p_adjusted"] < 0.05 and rule["diff"] < 0:
            row["verdict"] = "negative association"
        elif not significant(rules.loc[[i]]).iloc[0]:
            row["verdict"] = "not significant"
        elif is_top:
            row["verdict"] = "top rule" + ("" if adds else " (but explained by general engagement)")
        else:
            row["verdict"] = "adds information" if adds else "rides on the same engagement"
        rows.append(row)
    return pd.DataFrame(rows, columns=["action", "lr_stat", "lr_p_value", "phi_if_top", "phi_if_not_top",
                                       "adds_information", "verdict"])


def _two_proportion_n(p0: float, p1: float, ratio: float, alpha: float, power: float) -> float:
    """Control-group size to detect p0 -> p1 with `ratio` treated per control (two-sided, normal approximation)."""
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pbar = (p0 + ratio * p1) / (1 + ratio)
    num = za * np.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio)) + zb * np.sqrt(p0 * (1 - p0) + p1 * (1 - p1) / ratio)
    return float(np.ceil(num**2 / (p1 - p0) ** 2))


def experiment_plan(result: AhaResult, uptake: float = 0.25, holdout_share: float = 0.2, alpha: float = 0.05,
                    power: float = 0.8) -> dict[str, object] | None:
    """The randomised experiment that would test the top rule (None without a significant rule).

    Args:
        uptake: assumed share of nudged customers who then reach the threshold (the nudge's first-stage effect).
        holdout_share: share of eligible customers held out at random.
    """
    top = top_rule(result)
    if top is None:
        return None
    cohort = result.cohort
    p0 = float(top["rate_else"])
    p1 = min(p0 + uptake * float(top["diff"]), 0.999)
    ratio = (1 - holdout_share) / holdout_share
    n_hold = _two_proportion_n(p0, p1, ratio, alpha, power)
    n_treat = float(np.ceil(ratio * n_hold))
    recent = cohort.buyers_first_ns > cohort.as_of.value - 90 * 86_400 * 10**9
    weekly = recent.sum() / (90 / 7) * (1 - float(top["coverage"]))
    action, k, d = top["action"], int(top["min_count"]), int(top["within_days"])
    return {
        "action": action, "min_count": k, "within_days": d,
        "nudge": NUDGES.get(action, f"a message that invites the customer to do '{action}'"),
        "audience": f"first-time buyers who have not bought again and have not reached {k} x {action} "
                 f"within {d} days of the first purchase, nudged within those {d} days",
        "outcome": f"a further purchase within {result.cohort.horizon_days} days after day {d}",
        "baseline_rate": p0, "assumed_uptake": uptake, "expected_rate": p1, "alpha": alpha, "power": power,
        "holdout_share": holdout_share, "n_holdout": int(n_hold), "n_treated": int(n_treat),
        "weekly_eligible": float(weekly), "weeks": float((n_hold + n_treat) / weekly) if weekly > 0 else float("inf"),
    }


def retained_value(cohort: Cohort, days: float) -> float:
    """Mean net value (margin if given, else revenue) in the outcome window of customers retained at `days`."""
    idx, off, val = cohort.later_orders
    inside = (off > days) & (off <= days + cohort.horizon_days)
    total = np.bincount(idx[inside], val[inside], cohort.n)
    kept = cohort.retained(days)
    return float(total[kept].mean()) if kept.any() else float("nan")


def earn_table(result: AhaResult, info: pd.DataFrame) -> pd.DataFrame:
    """Suggested points per action: proportional to (rate_if - rate_else) x value of a retained customer.

    Actions without a significant positive association get no points; actions that only ride on the same
    engagement as the top rule get none either (rewarding them pays twice for one behaviour).
    """
    rules = result.rules.merge(info[["action", "adds_information", "verdict"]], on="action", how="left")
    rows = []
    for _, r in rules.iterrows():
        value = retained_value(result.cohort, r["within_days"])
        rewarded = r["verdict"] == "adds information" or str(r["verdict"]).startswith("top")
        worth = r["diff"] * value if rewarded else 0.0
        k, d = int(r["min_count"]), int(r["within_days"])
        rows.append({"action": r["action"], "threshold": f"at least {k} within {d} days of the first purchase",
                     "min_count": k, "within_days": d, "rate_if": r["rate_if"], "rate_else": r["rate_else"],
                     "retained_value": value, "value_if_causal": max(worth, 0.0), "verdict": r["verdict"]})
    columns = ["action", "threshold", "points", "weight", "value_if_causal", "retained_value", "rate_if",
               "rate_else", "min_count", "within_days", "verdict", "caveat"]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns)
    top = table["value_if_causal"].max()
    table["weight"] = table["value_if_causal"] / table["value_if_causal"].sum() if top > 0 else 0.0
    table["points"] = np.round(100 * table["value_if_causal"] / top).astype(int) if top > 0 else 0
    table["caveat"] = CAVEAT
    table = table.sort_values(["points", "value_if_causal"], ascending=False, kind="stable", ignore_index=True)
    return table[columns]
