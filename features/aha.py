"""Aha-moment discovery: which early behaviours separate first-time buyers who come back from those who do not.

Method (all decisions in one place):
- Cohort: customers whose first purchase (the first order with a positive net amount) lies at least
  `max(windows) + horizon_days` before as-of, so every action window and every outcome window is observed in full;
  rows after as-of are dropped first, so nothing after as-of is used.
- Actions: every event type, plus key performance actions (KPAs) from transactions: `purchase_categories` (distinct
  categories bought), `high_margin_lines` (purchase lines with margin/amount >= 0.4), `app_orders` (purchase orders
  with an `app` line) and `return_orders` (orders with a negative net amount). An action counts from the moment of
  the first purchase to `d` days after it, inclusive; events before the first purchase never count (they enter the
  beyond-correlation check as a covariate only).
- Second purchases inside the window: a rule "at least k within d days" is measured only on the customers still
  *at risk* at day d, i.e. without a further purchase (a purchase order later than the first) in (first, first + d].
  Their outcome, "retained", is a further purchase in (first + d, first + d + horizon]. Early repeaters are excluded
  from that window's table and counted in `early_repeaters`: the rule can then never rediscover the purchase itself
  (nor behaviour caused by it), and it answers the question the nudge faces on day d: who of those who have not
  come back yet will. Purchase KPAs therefore describe the first purchase (its basket and channel) and its returns.
- Statistics per (action, k, d): coverage, rate_if, rate_else, lift, precision (= rate_if), recall, the phi
  coefficient with a 95% interval by Fisher's z (approximate), a 95% interval for rate_if - rate_else by Newcombe's
  hybrid score method (Newcombe 1998, method 10) and the chi-square p-value (n * phi^2 ~ chi2(1)). Thresholds
  reached (or missed) by fewer than `min_coverage` of the at-risk customers are not eligible. Per action the
  eligible threshold with the highest phi is kept (ties: shorter window, smaller count); actions rank by that phi.
  Its `p_adjusted` multiplies the p-value by the number of eligible thresholds searched for the action (Bonferroni),
  since picking the best of many thresholds inflates the raw statistic; "significant" means p_adjusted < 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from features.errors import InputError
from features.pipeline import customer_codes, order_table
from features.schema import check_days

__all__ = ["RULE_COLUMNS", "WINDOWS", "AhaResult", "Cohort", "action_column", "action_counts", "action_occurrences",
           "build_cohort", "discover", "threshold_metrics"]

WINDOWS: tuple[int, ...] = (1, 3, 7, 10, 14, 21, 30)
RULE_COLUMNS = ["action", "min_count", "within_days", "coverage", "rate_if", "rate_else", "lift", "precision", "recall"]
HIGH_MARGIN_RATE = 0.4
MIN_COHORT = 50
DAY_NS = 86_400 * 10**9
_Z95 = stats.norm.ppf(0.975)


@dataclass
class Cohort:
    """First-time buyers with fully observed windows, and every action occurrence within `max(windows)` days.

    Per customer arrays are aligned with `ids` (sorted). `actions[name] = (customer index, days since the first
    purchase)`, one entry per occurrence (for `purchase_categories`: per category, at its first purchase).
    """

    ids: np.ndarray
    first_ns: np.ndarray
    gap_days: np.ndarray  # days from the first to the next purchase; inf if none by as-of
    first_value: np.ndarray
    prior_events: np.ndarray
    windows: tuple[int, ...]
    horizon_days: int
    actions: dict[str, tuple[np.ndarray, np.ndarray]]
    sources: dict[str, str]
    later_orders: tuple[np.ndarray, np.ndarray, np.ndarray]  # (customer index, days since first, net value)
    value_basis: str
    buyers_first_ns: np.ndarray  # every first-time buyer by as-of (for the time-to-second distribution)
    buyers_gap_days: np.ndarray
    as_of: pd.Timestamp = field(default_factory=pd.Timestamp.now)

    @property
    def n(self) -> int:
        return len(self.ids)

    def counts(self, action: str, days: float) -> np.ndarray:
        """Occurrences of `action` per customer within `days` days of the first purchase."""
        idx, off = self.actions[action]
        return np.bincount(idx[off <= days], minlength=self.n)

    def at_risk(self, days: float) -> np.ndarray:
        """Customers without a further purchase within `days` days of the first."""
        return self.gap_days > days

    def retained(self, days: float) -> np.ndarray:
        """A further purchase in (first + days, first + days + horizon] (among those at risk at `days`)."""
        return (self.gap_days > days) & (self.gap_days <= days + self.horizon_days)


Coded = tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]
"""Sorted customer ids, each line's code into them, and `features.pipeline.order_table`'s orders and line orders."""


def _orders(tx: pd.DataFrame, coded: Coded | None = None) -> dict[str, np.ndarray]:
    """Lines to orders by `features.pipeline.order_table` (the feature pipeline's rule), as arrays: per order its
    customer code (into the sorted ids), time, net amount, value (margin if every line has one) and app flag; per
    line its customer code, time, amount, margin and order. `coded`: the ids, codes and orders the caller already
    has (the feature builder's, whose ids also hold customers without transactions)."""
    if coded is None:
        ids, (cust,) = customer_codes(tx["customer_id"])
        coded = (ids, cust, *order_table(tx, cust))
    ids, cust, orders, line_order = coded
    n = len(orders)
    amount = tx["amount"].to_numpy(dtype=float)
    margin = tx["margin"].to_numpy(dtype=float) if "margin" in tx.columns else None
    use_margin = margin is not None and not np.isnan(margin).any()
    # an app order has an `app` line (the table's channel is the alphabetically first of the order's lines)
    app = (tx["channel"] == "app").to_numpy(dtype=bool, na_value=False) if "channel" in tx.columns else None
    order_amount = orders["amount"].to_numpy()
    return {"ids": ids, "cust": cust, "ts": tx["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
            "line_order": line_order, "amount": amount, "margin": margin, "order_ts": orders["ts"].to_numpy(),
            "order_cust": orders["cust"].to_numpy(), "order_amount": order_amount,
            "order_value": orders["margin"].to_numpy() if use_margin else order_amount,
            "order_app": np.bincount(line_order[app], minlength=n) > 0 if app is not None else np.zeros(n, bool),
            "value_basis": "margin" if use_margin else "revenue"}


def _first_and_gap(o: dict[str, np.ndarray], n_cust: int) -> tuple[np.ndarray, np.ndarray]:
    """First purchase time per customer (int64 max if none) and days to the next purchase order (inf if none)."""
    big = np.iinfo(np.int64).max
    buy = o["order_amount"] > 0
    first = np.full(n_cust, big)
    np.minimum.at(first, o["order_cust"][buy], o["order_ts"][buy])
    later = buy & (o["order_ts"] > first[o["order_cust"]])
    second = np.full(n_cust, big)
    np.minimum.at(second, o["order_cust"][later], o["order_ts"][later])
    gap = np.where(second < big, (second - first) / DAY_NS, np.inf)
    return first, gap


def _until(df: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows with timestamp <= as_of (no copy when there are none after it)."""
    keep = df["timestamp"].to_numpy() <= as_of.to_datetime64()
    return df if keep.all() else df.loc[keep]


def _occurrences(code: np.ndarray, off: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return code[keep].astype(np.int64), off[keep].astype(np.float64)


def _event_codes(ev: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """Customer code (into the sorted transaction `ids`) of each event; -1 for customers without transactions."""
    codes, uniques = pd.factorize(ev["customer_id"])
    return pd.Index(ids).get_indexer(np.asarray(uniques, dtype=str))[codes] if len(ev) else codes.astype(np.int64)


def action_occurrences(tx: pd.DataFrame, ev: pd.DataFrame | None, o: dict[str, np.ndarray], first: np.ndarray,
                       d_max: float) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Every occurrence of every action from each customer's first purchase to `d_max` days after it (inclusive).

    Args:
        tx: the transactions behind `o` (`_orders(tx)`); ev: canonical events (or None).
        first: first purchase time (ns) per customer code of `o`, int64 max for customers without one.
        d_max: the longest window in days.

    Returns:
        `actions[name] = (customer code, days since the first purchase)` (see the module doc for the actions; for
        `purchase_categories` one entry per category, at its first purchase) and each action's source table.
    """
    bought = first < np.iinfo(np.int64).max

    def locate(codes: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        off = np.where(bought[codes], (ts - first[codes]) / DAY_NS, np.nan)
        return off, (off >= 0) & (off <= d_max)

    actions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    buy_order = o["order_amount"] > 0
    oc = o["order_cust"]
    ooff, owin = locate(oc, o["order_ts"])
    lc = o["cust"]
    loff, lwin = locate(lc, o["ts"])
    lwin &= buy_order[o["line_order"]] & (o["amount"] > 0)
    if "category" in tx.columns:
        cat = pd.factorize(tx["category"].iloc[np.flatnonzero(lwin)])[0]
        keep = cat >= 0
        pair = pd.DataFrame({"c": lc[lwin][keep], "k": cat[keep], "off": loff[lwin][keep]})
        firsts = pair.groupby(["c", "k"], sort=False)["off"].min().reset_index()
        actions["purchase_categories"] = (firsts["c"].to_numpy(np.int64), firsts["off"].to_numpy(float))
    if o["margin"] is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            high = o["margin"] / o["amount"] >= HIGH_MARGIN_RATE
        actions["high_margin_lines"] = _occurrences(lc, loff, lwin & high)
    if "channel" in tx.columns:
        actions["app_orders"] = _occurrences(oc, ooff, owin & buy_order & o["order_app"])
    actions["return_orders"] = _occurrences(oc, ooff, owin & (o["order_amount"] < 0))
    sources = {a: "transactions" for a in actions}
    if ev is not None and len(ev):
        ec = _event_codes(ev, o["ids"])
        known = ec >= 0
        ec = np.where(known, ec, 0)
        eoff, ewin = locate(ec, ev["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64))
        ewin &= known
        kind, names = pd.factorize(ev["event"].iloc[np.flatnonzero(ewin)], sort=True)
        wc, woff = ec[ewin], eoff[ewin]
        for k, name in enumerate(names):
            label = f"event:{name}" if name in actions else str(name)
            actions[label] = _occurrences(wc, woff, kind == k)
            sources[label] = "events"
    return actions, sources


def action_column(action: str, days: int) -> str:
    """The feature column holding a customer's count of `action` within `days` days of the first purchase."""
    return f"aha_{action}_first_{int(days)}d"


def action_counts(transactions: pd.DataFrame, events: pd.DataFrame | None, actions: tuple[tuple[str, int], ...],
                  coded: Coded | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per customer, occurrences of each (action, days) within `days` days of the first purchase.

    The point-in-time features of the policy's Aha message (`FeatureParams.aha_actions`): rows must already be cut
    at as-of. Returns the sorted customer ids of `transactions` (or `coded`'s: `_orders`) and, per `action_column`,
    the counts (NaN for customers without a purchase; 0 for actions that do not occur in the data).
    """
    if transactions.empty:
        ids = coded[0] if coded is not None else np.zeros(0, dtype=object)
        return ids, {action_column(a, d): np.full(len(ids), np.nan) for a, d in actions}
    o = _orders(transactions, coded)
    first, _ = _first_and_gap(o, len(o["ids"]))
    found, _ = action_occurrences(transactions, events, o, first, float(max(d for _, d in actions)))
    bought = first < np.iinfo(np.int64).max
    out = {}
    for action, days in actions:
        idx, off = found.get(action, (np.zeros(0, np.int64), np.zeros(0)))
        out[action_column(action, days)] = np.where(bought, np.bincount(idx[off <= days], minlength=len(bought)),
                                                    np.nan)
    return o["ids"], out


def build_cohort(transactions: pd.DataFrame, events: pd.DataFrame, as_of: pd.Timestamp,
                 windows: tuple[int, ...] = WINDOWS, horizon_days: int = 90) -> Cohort:
    """Select the cohort and collect every action occurrence within `max(windows)` days of the first purchase.

    Raises:
        InputError: when fewer than `MIN_COHORT` customers have a fully observed window before as-of.
    """
    as_of = pd.Timestamp(as_of)
    span = max(windows) + horizon_days
    tx, ev = _until(transactions, as_of), _until(events, as_of)
    if tx.empty:
        raise InputError(f"aha: no transactions on or before --as-of {as_of.date()}")
    o = _orders(tx)
    first_all, gap_all = _first_and_gap(o, len(o["ids"]))
    cutoff = as_of.value - span * DAY_NS
    buyer = first_all < np.iinfo(np.int64).max
    member = buyer & (first_all <= cutoff)
    n = int(member.sum())
    if n < MIN_COHORT:
        raise InputError(f"aha: only {n:,} customers with a fully observed first-purchase window before --as-of "
                         f"{as_of.date()} (first purchase on or before {pd.Timestamp(cutoff).date()}, i.e. "
                         f"{max(windows)} + {horizon_days} days earlier); need at least {MIN_COHORT}")
    pos = np.cumsum(member) - 1  # customer code -> cohort index
    first = np.where(member, first_all, np.iinfo(np.int64).max)
    found, sources = action_occurrences(tx, ev, o, first, float(max(windows)))
    actions = {a: (pos[c], off) for a, (c, off) in found.items()}  # only members have occurrences
    oc = o["order_cust"]
    ooff = np.where(member[oc], (o["order_ts"] - first_all[oc]) / DAY_NS, np.nan)
    later = ooff > 0
    later_orders = (pos[oc[later]], ooff[later], o["order_value"][later])
    at_first = (ooff == 0) & (o["order_amount"] > 0)
    first_value = np.bincount(pos[oc[at_first]], o["order_value"][at_first], n)
    ec = _event_codes(ev, o["ids"])
    ets = ev["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    prior = (ec >= 0) & member[np.maximum(ec, 0)] & (ets < first_all[np.maximum(ec, 0)])
    prior_events = np.bincount(pos[ec[prior]], minlength=n)
    return Cohort(ids=o["ids"][member], first_ns=first_all[member], gap_days=gap_all[member], first_value=first_value,
                  prior_events=prior_events, windows=tuple(windows), horizon_days=horizon_days, actions=actions,
                  sources=sources, later_orders=later_orders, value_basis=o["value_basis"],
                  buyers_first_ns=first_all[buyer], buyers_gap_days=gap_all[buyer], as_of=as_of)


def _wilson(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a proportion x/n."""
    z2 = _Z95**2
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = _Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n**2)) / (1 + z2 / n)
    return centre - half, centre + half


def threshold_metrics(n: float, n_retained: float, n_if: np.ndarray, retained_if: np.ndarray) -> pd.DataFrame:
    """The 2x2 statistics of rules from their counts (vectorised over rules).

    Args:
        n: customers at risk; n_retained: of them, retained.
        n_if: customers reaching each rule; retained_if: of them, retained.

    Returns:
        coverage, rate_if, rate_else, lift, precision, recall, phi (95% CI by Fisher's z), diff = rate_if -
        rate_else (95% CI by Newcombe's hybrid score method), p_value (chi-square, 1 df), n, n_reached, n_retained.
    """
    a = np.asarray(retained_if, float)
    n1 = np.asarray(n_if, float)
    n0 = n - n1
    c = n_retained - a
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p0 = a / n1, c / n0
        phi = (a * (n0 - c) - (n1 - a) * c) / np.sqrt(n1 * n0 * n_retained * (n - n_retained))
        z = np.arctanh(np.clip(phi, -0.999999, 0.999999))
        se = 1 / np.sqrt(max(n - 3, 1))
        l1, u1 = _wilson(a, n1)
        l0, u0 = _wilson(c, n0)
        diff = p1 - p0
        out = pd.DataFrame({
            "coverage": n1 / n, "rate_if": p1, "rate_else": p0, "lift": p1 / p0, "precision": p1,
            "recall": a / n_retained if n_retained else np.nan, "phi": phi,
            "phi_low": np.tanh(z - _Z95 * se), "phi_high": np.tanh(z + _Z95 * se), "diff": diff,
            "diff_low": diff - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
            "diff_high": diff + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2),
            "p_value": stats.chi2.sf(n * phi**2, 1), "n": n, "n_reached": n1, "n_retained": float(n_retained),
        })
    return out


def _action_grid(cohort: Cohort, action: str, max_count: int) -> pd.DataFrame:
    parts = []
    for d in cohort.windows:
        risk = cohort.at_risk(d)
        y = cohort.retained(d)[risk]
        c = cohort.counts(action, d)[risk]
        top = int(min(max_count, c.max(initial=0)))
        if top < 1:
            continue
        clipped = np.minimum(c, top)
        reach = np.cumsum(np.bincount(clipped, minlength=top + 1)[::-1])[::-1][1:]  # n with count >= k, k=1..top
        reach_y = np.cumsum(np.bincount(clipped[y], minlength=top + 1)[::-1])[::-1][1:]
        m = threshold_metrics(float(risk.sum()), float(y.sum()), reach, reach_y)
        m.insert(0, "within_days", d)
        m.insert(0, "min_count", np.arange(1, top + 1))
        m["early_repeaters"] = int((~risk).sum())
        parts.append(m)
    if not parts:
        return pd.DataFrame()
    grid = pd.concat(parts, ignore_index=True)
    grid.insert(0, "action", action)
    return grid


@dataclass
class AhaResult:
    """The discovery: cohort, full grid, best threshold per action (ranked), and the run's parameters."""

    cohort: Cohort
    grid: pd.DataFrame
    rules: pd.DataFrame
    params: dict[str, object]


def discover(transactions: pd.DataFrame, events: pd.DataFrame, as_of: pd.Timestamp, within_days: int | None = None,
             horizon_days: int = 90, min_coverage: float = 0.02, max_count: int = 30) -> AhaResult:
    """Find the best "at least k within d days of the first purchase" threshold per action and rank the actions.

    Args:
        transactions: canonical transactions; events: canonical events.
        as_of: the cutoff; rows after it are ignored.
        within_days: keep only windows d <= within_days (and d = within_days itself).
        horizon_days: length of the outcome window after each action window.
        min_coverage: minimum share of at-risk customers reaching, and missing, an eligible threshold.
        max_count: largest k tried.

    Returns:
        AhaResult with `rules` (RULE_COLUMNS first, then phi and its interval, ..., best first) and `grid`.
    """
    if within_days is not None:
        check_days("--within-days", within_days)
    check_days("--horizon-days", horizon_days)
    if not 0 <= min_coverage < 0.5:
        raise InputError(f"--min-coverage {min_coverage}: must be in [0, 0.5)")
    windows = WINDOWS if within_days is None else tuple(sorted({d for d in WINDOWS if d <= within_days}
                                                               | {int(within_days)}))
    cohort = build_cohort(transactions, events, as_of, windows, horizon_days)
    if not any(cohort.sources[a] == "events" for a in cohort.actions):
        raise InputError("aha: no events of the cohort fall within the action windows; check the events file")
    grids = [_action_grid(cohort, a, max_count) for a in sorted(cohort.actions)]
    grid = pd.concat([g for g in grids if len(g)], ignore_index=True)
    grid.insert(1, "source", grid["action"].map(cohort.sources))
    grid["eligible"] = (grid["coverage"] >= min_coverage) & (1 - grid["coverage"] >= min_coverage) & grid["phi"].notna()
    grid = grid.sort_values(["action", "within_days", "min_count"], ignore_index=True)
    ok = grid.loc[grid["eligible"]]
    best = ok.sort_values(["phi", "within_days", "min_count"], ascending=[False, True, True], kind="stable")
    rules = best.drop_duplicates("action").reset_index(drop=True)
    tried = ok.groupby("action").size()  # Bonferroni over the thresholds searched per action (selection bias)
    rules["p_adjusted"] = np.minimum(rules["p_value"] * rules["action"].map(tried).to_numpy(), 1.0)
    rules.insert(rules.columns.get_loc("p_value") + 1, "p_adjusted", rules.pop("p_adjusted"))
    extra = [c for c in rules.columns if c not in RULE_COLUMNS + ["source", "eligible"]]
    rules = rules[RULE_COLUMNS + extra + ["source"]]
    params = {"as_of": str(pd.Timestamp(as_of)), "windows": list(windows), "horizon_days": horizon_days,
                  "min_coverage": min_coverage, "max_count": max_count, "cohort": cohort.n}
    return AhaResult(cohort=cohort, grid=grid, rules=rules, params=params)
