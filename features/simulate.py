"""The demo world: a vectorised simulator of customers, orders, events and randomised nudges with known ground truth.

Purchases follow a BG/NBD-like process: a gamma-distributed rate per customer (thinned by a monthly seasonality) and a
beta-distributed chance to drop out after each purchase, by segment. Planted effects, all recorded in `truth`:
- first-basket effect: a first order containing a "premium" product multiplies the repeat rate by 1.6;
- Aha moment: at least 3 `app_session` events within 7 days after the first purchase multiply the repeat rate by 2.5
  and the drop-out chance by 0.4 (only reaching the threshold matters, not the count; no other session falls in
  the day before or the 8 days after the first purchase, so day- and timestamp-based windows agree);
- nudges: monthly, to a random 30% of buyers, 20% held out at random; a treated nudge adds exactly `true_uplift` to
  the probability of a purchase within 14 days (an extra order, drawn only when no natural order falls in the window).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from features import simulate_catalog as sc
from features.io import write_csv, write_parquet

__all__ = ["World", "simulate_world", "summary", "write_world"]

AHA_MIN_SESSIONS, AHA_WITHIN_DAYS = sc.AHA_MIN_SESSIONS, sc.AHA_WITHIN_DAYS
AHA_RATE_BOOST, AHA_DROPOUT_FACTOR = 2.5, 0.4
PREMIUM_RATE_BOOST, PREMIUM_FIRST_SHARE = 1.6, 0.2
MAX_RATE = 0.08  # orders/day after boosts; keeps P(natural order within 14 days) <= 0.83 so uplift stays exact
RESPONSE_DAYS, NUDGE_SHARE, TREATED_SHARE = 14, 0.3, 0.8
PROSPECT_SHARE, RETURN_SHARE, DUPLICATE_SHARE, OPTIN_SHARE = 0.25, 0.04, 0.005, 0.6
_TABLES = ("events", "nudges", "customers", "truth", "transactions")  # transactions last: a complete world's sign


@dataclass(frozen=True)
class World:
    """The simulated inputs (canonical schema) and the per-customer ground truth.

    `truth` has one row per customer: customer_id, segment, purchase_rate (base orders/day), dropout_prob (base),
    first_basket_premium, aha_reached, true_uplift, app_sessions_7d, engagement, effective_rate and
    effective_dropout (after the planted boosts), prospect (drawn never to buy; a late signup whose first purchase
    would fall after the period does not buy either), first_purchase and dropout_time (NaT if none), n_orders
    (including orders caused by nudges).
    """

    transactions: pd.DataFrame
    events: pd.DataFrame
    nudges: pd.DataFrame
    customers: pd.DataFrame
    truth: pd.DataFrame


def _frame(cols: dict[str, object], start_ns: int) -> pd.DataFrame:
    """DataFrame without copies: Arrow strings become `str` columns, ("days", x) naive datetime64[ns] (inf = NaT)."""
    out = {}
    for name, col in cols.items():
        if isinstance(col, tuple):  # days since the start, rounded to the second
            ok = np.isfinite(col[1])
            ns = start_ns + np.round(np.where(ok, col[1], 0.0) * 86_400).astype(np.int64) * 10**9
            ns[~ok] = np.iinfo(np.int64).min  # NaT
            col = ns.view("datetime64[ns]")
        elif isinstance(col, pa.Array):
            col = pd.array(col, dtype="str")
        out[name] = col
    return pd.DataFrame(out, copy=False)


def _draw_customers(rng: np.random.Generator, n: int, n_days: int, mult: np.ndarray) -> dict[str, np.ndarray]:
    """Static traits, signup and first purchase times (days since start; inf = never), planted effects."""
    seg = rng.choice(3, n, p=sc.SEGMENT_SHARE)
    w = (0.4 + 1.2 * np.arange(n_days) / n_days) * mult[:n_days]  # more signups later and in peak months
    signup = np.searchsorted(np.cumsum(w) / w.sum(), rng.random(n), side="right") + rng.random(n)
    signup = np.minimum(signup, n_days - 1e-6)
    rate = rng.gamma(sc.RATE_SHAPE[seg], sc.RATE_MEAN[seg] / sc.RATE_SHAPE[seg])
    dropout = rng.beta(sc.DROPOUT_AB[seg, 0], sc.DROPOUT_AB[seg, 1])
    engagement = rng.gamma(1.0, 1.0, n)
    prospect = rng.random(n) < PROSPECT_SHARE
    first = signup + rng.random(n) * 60
    first[prospect | (first >= n_days)] = np.inf
    buyer = np.isfinite(first)
    premium = buyer & (rng.random(n) < PREMIUM_FIRST_SHARE)
    sessions = np.where(buyer, rng.poisson(2.5 * engagement), 0)  # app sessions within 7 days of the first order
    aha = sessions >= AHA_MIN_SESSIONS
    eff_rate = np.minimum(rate * np.where(aha, AHA_RATE_BOOST, 1.0) * np.where(premium, PREMIUM_RATE_BOOST, 1.0),
                          MAX_RATE)
    return {
        "seg": seg, "signup": signup, "rate": rate, "dropout": dropout, "engagement": engagement,
        "prospect": prospect, "first": first, "buyer": buyer, "premium": premium, "sessions": sessions, "aha": aha,
        "eff_rate": eff_rate, "eff_drop": dropout * np.where(aha, AHA_DROPOUT_FACTOR, 1.0),
        "uplift": sc.TRUE_UPLIFT[seg], "region": rng.choice(4, n, p=[0.3, 0.25, 0.25, 0.2]),
        "age": rng.choice(5, n, p=[0.12, 0.28, 0.25, 0.2, 0.15]), "optin": rng.random(n) < OPTIN_SHARE,
    }


def _natural_orders(rng: np.random.Generator, c: dict[str, np.ndarray], mult: np.ndarray,
                    n_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders of the BG/NBD-like process, one vectorised step per candidate purchase; returns (who, time, death)."""
    death = np.full(len(c["first"]), np.inf)  # time of the purchase after which the customer dropped out
    idx = np.flatnonzero(c["buyer"])
    t = c["first"][idx]
    whos, times, mmax = [idx], [t], mult.max()
    stay = rng.random(len(idx)) >= c["eff_drop"][idx]
    death[idx[~stay]] = t[~stay]
    idx, t = idx[stay], t[stay]
    while len(idx):
        t = t + rng.exponential(1.0, len(idx)) / (c["eff_rate"][idx] * mmax)
        inside = t < n_days
        idx, t = idx[inside], t[inside]
        bought = rng.random(len(idx)) * mmax < mult[t.astype(np.int64)]  # thinning by seasonality
        whos.append(idx[bought])
        times.append(t[bought])
        keep = np.ones(len(idx), bool)
        drop = rng.random(int(bought.sum())) < c["eff_drop"][idx[bought]]
        keep[np.flatnonzero(bought)[drop]] = False
        death[idx[bought][drop]] = t[bought][drop]
        idx, t = idx[keep], t[keep]
    who, time = np.concatenate(whos), np.concatenate(times)
    order = np.argsort(who, kind="stable")  # by customer, then time (steps are in time order)
    return who[order], time[order], death


def _nudges(rng: np.random.Generator, c: dict[str, np.ndarray], who: np.ndarray, time: np.ndarray,
            death: np.ndarray, mult: np.ndarray, t_start: np.datetime64, n_days: int) -> dict[str, np.ndarray]:
    """Monthly campaigns with a random hold-out, and the extra orders they cause (`extra_who`, `extra_time`)."""
    months = np.arange(t_start.astype("datetime64[M]"), (t_start + n_days).astype("datetime64[M]") + 1)
    picks, sends = [], []
    for month in months:
        d0 = int((month.astype("datetime64[D]") - t_start).astype(np.int64))
        if d0 < 0 or d0 + 3 + RESPONSE_DAYS > n_days:
            continue
        elig = np.flatnonzero(c["first"] < d0)
        pick = elig[rng.random(len(elig)) < NUDGE_SHARE]
        picks.append(pick)
        sends.append(d0 + rng.random(len(pick)) * 3)
    nw = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    s = np.concatenate(sends) if sends else np.zeros(0)
    span = n_days + 1.0
    keys = who * span + time  # sorted: customer, then time
    base = nw * span
    lo = np.searchsorted(keys, base)
    before = np.searchsorted(keys, base + s) - lo
    in_window = np.searchsorted(keys, base + s + RESPONSE_DAYS, side="right") - lo > before
    last = keys[np.maximum(lo + before - 1, 0)] - base
    campaign = np.where(before == 1, 0, np.where(s - last > 90, 1, 2))  # second_purchase, winback, newsletter
    e = c["engagement"][nw]
    u = rng.random(len(nw))
    p_push = 0.15 + 0.3 * e / (1 + e)
    channel = np.where(u < 0.1, 2, np.where(u < 0.1 + p_push, 1, 0))
    treated = rng.random(len(nw)) < TREATED_SHARE
    cum = np.concatenate([[0.0], np.cumsum(mult)])

    def integral(x: np.ndarray) -> np.ndarray:  # of the seasonality multiplier from 0 to x days
        d = x.astype(np.int64)
        return cum[d] + (x - d) * mult[d]

    exposure = integral(s + RESPONSE_DAYS) - integral(s)
    q = np.where(s < death[nw], 1 - np.exp(-c["eff_rate"][nw] * exposure), 0.0)  # P(natural order in window)
    extra = treated & ~in_window & (rng.random(len(nw)) < np.minimum(c["uplift"][nw] / (1 - q), 1.0))
    extra_time = s[extra] + 0.01 + (RESPONSE_DAYS - 0.02) * rng.random(int(extra.sum())) ** 2
    return {"who": nw, "time": s, "campaign": campaign, "channel": channel, "treated": treated,
            "extra_who": nw[extra], "extra_time": extra_time}


def _transactions(rng: np.random.Generator, cat: sc.Catalogue, c: dict[str, np.ndarray], who: np.ndarray,
                  time: np.ndarray, first: np.ndarray, n_days: int, start_ns: int,
                  cust_ids: np.ndarray) -> pd.DataFrame:
    """Order lines of time-sorted orders, plus return rows and double-loaded duplicates merged in time order."""
    li = sc.draw_lines(rng, cat, c, who, time, first)
    n_orders, n_lines = len(who), len(li["amount"])
    delay = 3 + 17 * rng.random(n_orders)  # a return comes 3-20 days after its order (one return per order)
    ret = np.flatnonzero(rng.random(n_lines) < RETURN_SHARE)
    ret_t = li["time"][ret] + delay[li["order"][ret]]
    ret, ret_t = ret[ret_t < n_days], ret_t[ret_t < n_days]
    dup = np.flatnonzero(rng.random(n_lines + len(ret)) < DUPLICATE_SHARE)
    d_line, d_ret = dup[dup < n_lines], dup[dup >= n_lines] - n_lines
    x_row = np.concatenate([ret, d_line, ret[d_ret]])
    x_ret = np.concatenate([np.ones(len(ret), bool), np.zeros(len(d_line), bool), np.ones(len(d_ret), bool)])
    x_t = np.concatenate([ret_t, li["time"][d_line], ret_t[d_ret]])
    o = np.argsort(x_t, kind="stable")
    x_row, x_ret, x_t = x_row[o], x_ret[o], x_t[o]
    is_x = np.zeros(n_lines + len(x_row), bool)  # merge the extra rows into the time-sorted lines
    is_x[np.searchsorted(li["time"], x_t, side="right") + np.arange(len(x_t))] = True
    rows = np.empty(len(is_x), np.int64)
    rows[~is_x], rows[is_x] = np.arange(n_lines), x_row
    is_ret = np.zeros(len(is_x), bool)
    is_ret[is_x] = x_ret
    t = np.empty(len(is_x))
    t[~is_x], t[is_x] = li["time"], x_t
    del x_row, x_ret, x_t, is_x, o
    amount, margin, product = li["amount"][rows], li["margin"][rows], li["product"][rows]
    amount[is_ret] *= -1
    margin[is_ret] *= -1
    order_ids = sc.id_bytes("O", np.arange(n_orders), _width(n_orders, 9))
    return _frame({
        "customer_id": sc.as_strings(cust_ids[li["cust"][rows]]), "timestamp": ("days", t), "amount": amount,
        "order_id": sc.as_strings(order_ids[li["order"][rows]], alt_first=("R", is_ret)),
        "product_id": sc.as_strings(sc.id_bytes("P", np.arange(len(cat)), 4)[product]),
        "category": sc.labels(sc.CATEGORIES, cat.category[product]), "quantity": li["qty"][rows],
        "margin": margin, "channel": sc.labels(sc.CHANNELS, li["channel"][rows]),
    }, start_ns)


def _width(n: int, least: int) -> int:
    """Digits of the largest of n ids, at least `least`."""
    return max(least, len(str(max(n - 1, 0))))


def simulate_world(n_customers: int = 50_000, seed: int = 0, start: str = "2023-01-01",
                   end: str = "2025-12-31") -> World:
    """Simulate the demo world; the same seed gives identical frames.

    Args:
        n_customers: customers signed up over the period (about a quarter never buy).
        seed: seed of the single random generator.
        start: first day of the period (ISO date).
        end: last day of the period (inclusive).

    Returns:
        A World whose transactions, events, nudges and customers follow the canonical schema, plus `truth`.
    """
    t_start = np.datetime64(start, "D")
    n_days = int((np.datetime64(end, "D") - t_start).astype(np.int64)) + 1
    if n_customers < 1 or n_days < 90:
        raise ValueError("simulate_world needs n_customers >= 1 and a period of at least 90 days")
    rng = np.random.default_rng(seed)
    start_ns = int(t_start.astype("datetime64[ns]").astype(np.int64))
    mult = sc.daily_multiplier(t_start, n_days)
    cat = sc.make_catalogue(rng)
    c = _draw_customers(rng, n_customers, n_days, mult)
    who, time, death = _natural_orders(rng, c, mult, n_days)
    first = np.r_[True, who[1:] != who[:-1]] if len(who) else np.zeros(0, bool)
    nd = _nudges(rng, c, who, time, death, mult, t_start, n_days)
    who = np.concatenate([who, nd["extra_who"]])
    time = np.concatenate([time, nd["extra_time"]])
    first = np.concatenate([first, np.zeros(len(nd["extra_who"]), bool)])
    by_time = np.argsort(time, kind="stable")  # order ids follow time
    who, time, first = who[by_time], time[by_time], first[by_time]
    cust_ids = sc.id_bytes("C", np.arange(n_customers), _width(n_customers, 7))
    transactions = _transactions(rng, cat, c, who, time, first, n_days, start_ns, cust_ids)
    ew, et, ek, ev = sc.draw_events(rng, c, death, n_days)
    s = np.argsort(et)
    events = _frame({"customer_id": sc.as_strings(cust_ids[ew[s]]), "timestamp": ("days", et[s]),
                     "event": sc.labels(sc.EVENT_KINDS, ek[s]), "value": ev[s]}, start_ns)
    del ew, et, ek, ev
    s = np.argsort(nd["time"], kind="stable")
    nudges = _frame({
        "customer_id": sc.as_strings(cust_ids[nd["who"][s]]), "timestamp": ("days", nd["time"][s]),
        "campaign": sc.labels(("second_purchase", "winback", "newsletter"), nd["campaign"][s]),
        "channel": sc.labels(sc.NUDGE_CHANNELS, nd["channel"][s]), "treated": nd["treated"][s],
        "cost": sc.NUDGE_COST[nd["channel"][s]],
    }, start_ns)
    segment = sc.labels(sc.SEGMENTS, c["seg"])
    customers = _frame({
        "customer_id": sc.as_strings(cust_ids), "signup_date": ("days", np.floor(c["signup"])), "segment": segment,
        "region": sc.labels(("north", "south", "east", "west"), c["region"]),
        "age_band": sc.labels(("18-24", "25-34", "35-44", "45-54", "55+"), c["age"]),
    }, start_ns)
    truth = _frame({
        "customer_id": sc.as_strings(cust_ids), "segment": segment, "purchase_rate": c["rate"],
        "dropout_prob": c["dropout"], "first_basket_premium": c["premium"], "aha_reached": c["aha"],
        "true_uplift": c["uplift"], "app_sessions_7d": c["sessions"], "engagement": c["engagement"],
        "effective_rate": c["eff_rate"], "effective_dropout": c["eff_drop"], "prospect": c["prospect"],
        "first_purchase": ("days", c["first"]), "dropout_time": ("days", death),
        "n_orders": np.bincount(who, minlength=n_customers),
    }, start_ns)
    return World(transactions, events, nudges, customers, truth)


def write_world(world: World, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write the five tables as `out_dir/<name>.<fmt>` (parquet or csv), each atomically; returns name -> path."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    writer = write_parquet if fmt == "parquet" else write_csv
    return {name: writer(getattr(world, name), Path(out_dir) / f"{name}.{fmt}") for name in _TABLES}


def summary(world: World) -> dict[str, float]:
    """Headline counts: customers, buyers, lines, orders, repeat share and how soon second purchases come.

    `duplicate_lines` counts rows that repeat an earlier (order_id, product_id) line: the double-loaded rows.
    """
    tx = world.transactions
    order_code, _ = pd.factorize(tx["order_id"])
    product_code, products = pd.factorize(tx["product_id"])
    key = np.sort(order_code.astype(np.int64) * (len(products) + 1) + product_code)  # np.unique hashes slowly
    n_dup = int((key[1:] == key[:-1]).sum())
    seen = np.maximum.accumulate(order_code)
    at = np.flatnonzero(np.r_[True, order_code[1:] > seen[:-1]][:len(tx)])  # first row of each order
    at = at[tx["amount"].to_numpy()[at] > 0]  # sales, not returns
    cust, _ = pd.factorize(tx["customer_id"].iloc[at])
    t = tx["timestamp"].to_numpy()[at].astype(np.int64) / 86_400e9
    o = np.lexsort((t, cust))
    cust, t = cust[o], t[o]
    start = np.r_[True, cust[1:] != cust[:-1]][:len(cust)]
    second = np.flatnonzero(np.r_[False, start[:-1]] & ~start)  # the order right after each customer's first
    gap = t[second] - t[second - 1]
    n_buyers, n_gap = int(start.sum()), max(len(second), 1)
    return {
        "customers": len(world.customers), "buyers": n_buyers, "lines": len(tx), "orders": len(at),
        "return_lines": int((tx["amount"] < 0).sum()), "duplicate_lines": n_dup,
        "events": len(world.events), "nudges": len(world.nudges),
        "lines_per_customer": len(tx) / max(len(world.customers), 1),
        "second_purchase_share": len(second) / max(n_buyers, 1),
        **{f"second_within_{d}d": float((gap <= d).sum() / n_gap) for d in (10, 30, 90)},
    }
