"""Point-in-time customer features: one function for training, the nightly batch and the HTTP service.

`build_features(transactions, as_of, events, customers)` sees only rows with `timestamp <= as_of` and
computes every feature from one customer's own rows (no population statistics), so it gives the same
rows for any subset of customers that holds all of each customer's rows: the Spark engine runs it per
customer partition. Inputs are canonical frames (see `features.schema.validate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.lifecycle import StageRules, lifecycle_stage, stages_of
from features.schema import arrow_text, as_utc_naive
from features.spec import EVENT_TYPES, FEATURE_DOCS, WINDOWS

__all__ = ["FeatureParams", "build_features", "customer_codes", "order_table", "population"]

DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class FeatureParams:
    """Fixed (not data-derived) parameters of the features, so that partitions agree."""

    high_margin_rate: float = 0.4
    stage_rules: StageRules = field(default_factory=StageRules)
    aha_actions: tuple[tuple[str, int], ...] = ()
    """(action, days) pairs of Aha rules (`features.aha`): each adds the column `aha.action_column(action, days)`,
    the customer's count of the action within `days` days of the first purchase (the policy's Aha message)."""


def _ns(ts: pd.Series) -> np.ndarray:
    return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _before(df: pd.DataFrame | None, as_of: pd.Timestamp) -> pd.DataFrame | None:
    if df is None:
        return None
    keep = df["timestamp"].to_numpy() <= as_of.to_datetime64()
    return df if keep.all() else df.loc[keep]  # no copy of the string columns when nothing is after as-of


def _known_customers(customers: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of the customers table that exist by `as_of` (no `signup_date` after it)."""
    if "signup_date" not in customers.columns:
        return customers
    return customers.loc[~(as_utc_naive(customers["signup_date"]) > as_of).to_numpy()]


def _ascending(values: pd.Index) -> bool:
    """Whether `values` are strictly increasing (checked by Arrow: much faster on text than is_monotonic_increasing)."""
    text = pa.array(values.astype("str"))
    return len(text) < 2 or bool(pc.all(pc.less(text[:-1], text[1:])).as_py())


def _factorized(values: pd.Series, sort: bool = False) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (-1 for missing) and the values they index, sorted (codes in text order) if `sort`.

    A categorical gives its own codes, so no string is hashed (validated text columns are categoricals with
    sorted categories); other columns, and categoricals with unsorted categories where order matters, are factorized."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        if not sort or _ascending(values.cat.categories):
            return values.cat.codes.to_numpy(np.int64), values.cat.categories
        values = values.astype("str")
    codes, uniques = pd.factorize(values, sort=sort)
    return codes.astype(np.int64), pd.Index(uniques)


def customer_codes(*id_columns: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted ids of the union of `id_columns`, and each column's codes into them.

    Each column is factorized once (a validated column is a categorical: its own codes); only the distinct ids are
    hashed (one Arrow dictionary encoding of them all) and sorted (UTF-8 byte order is code-point order, Python's)."""
    factorized = [_factorized(c) for c in id_columns]
    texts = [arrow_text(u.astype("str")) for _, u in factorized]
    encoded = pc.dictionary_encode(pa.concat_arrays(texts))
    entries = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    entry = np.split(entries, np.cumsum([len(t) for t in texts])[:-1])  # each column's distinct ids' entries
    used = np.zeros(len(encoded.dictionary), bool)
    for (codes, _), e in zip(factorized, entry):
        used[e[np.bincount(codes[codes >= 0], minlength=len(e)) > 0]] = True
    kept = np.flatnonzero(used)
    ids = encoded.dictionary.take(kept)
    order = pc.sort_indices(ids).to_numpy()
    position = np.full(len(used), -1, np.int64)  # entry -> rank among the sorted ids (-1: unused)
    position[kept[order]] = np.arange(len(kept))
    return (np.asarray(ids.take(order).to_numpy(zero_copy_only=False), dtype=object),
            [np.append(position[e], -1)[codes] for (codes, _), e in zip(factorized, entry)])


def population(transactions: pd.DataFrame, as_of: pd.Timestamp, events: pd.DataFrame | None = None,
               customers: pd.DataFrame | None = None) -> np.ndarray:
    """Sorted ids of the customers known by `as_of`: any transaction or event by then, or a customers row
    (whose `signup_date`, if given, is not after as-of)."""
    parts = [_before(df, as_of)["customer_id"] for df in (transactions, events) if df is not None]
    if customers is not None:
        parts.append(_known_customers(customers, as_of)["customer_id"])
    return customer_codes(*parts)[0]


def _group_min(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Minimum of the int64 `values` of each group 0..n-1 (every group has a row): one value per group written,
    then the rows below their group's value folded in (few where a group's rows mostly agree: an order's lines)."""
    values = values.astype(np.int64, copy=False)
    out = np.empty(n, np.int64)
    out[groups] = values
    lower = values < out[groups]
    if lower.any():
        np.minimum.at(out, groups[lower], values[lower])
    return out


def _per_group(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """The value of each group 0..n-1 of a column that is constant within groups (every group has a row)."""
    out = np.empty(n, values.dtype)
    out[groups] = values
    return out


def _sorted_orders(cust: np.ndarray, ts: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Order of rows by customer, time and key (unique triples), as `np.lexsort((key, ts, cust))`: one quicksort of
    (customer, time) packed into an int64 (the time coarsened to fit: to about 16 microseconds for a million customers
    over two years), then the few runs that tie in the packing ordered exactly by time and key."""
    if len(cust) < 2 or int(ts.max()) - int(ts.min()) >= 2**63:
        return np.lexsort((key, ts, cust))
    t0 = int(ts.min())
    time_bits = 63 - max(int(cust.max()), 1).bit_length()
    packed = (cust << time_bits) | ((ts - t0) >> max((int(ts.max()) - t0).bit_length() - time_bits, 0))
    order = np.argsort(packed)
    p = packed[order]
    tied = np.flatnonzero(np.r_[False, p[1:] == p[:-1]] | np.r_[p[:-1] == p[1:], False])
    if len(tied):  # runs are contiguous: sorting their rows by (packed, time, key) keeps each run in its place
        rows = order[tied]
        order[tied] = rows[np.lexsort((key[rows], ts[rows], p[tied]))]
    return order


def _order_channel(tx: pd.DataFrame, line_order: np.ndarray, n: int) -> pd.Categorical | None:
    """Channel of each order: the alphabetically first channel of its lines (orders normally have one), missing
    only if no line has one. A categorical, so that orders are reordered and compared by integer codes."""
    if "channel" not in tx.columns:
        return None
    codes, names = _factorized(tx["channel"], sort=True)
    first = _group_min(np.where(codes >= 0, codes, len(names)), line_order, n)
    return pd.Categorical.from_codes(np.where(first < len(names), first, -1), categories=pd.Index(names, dtype=object))


def _line_orders(cust: np.ndarray, key2: np.ndarray, by_id: bool) -> np.ndarray:
    """The order (0..n-1) of each line: its customer and `key2` (order id codes if `by_id`, else timestamps).

    When no order id is shared by two customers, the order id alone is the order: its codes
    are compacted instead of hashing millions of (customer, order) pairs."""
    if not len(key2):
        return np.zeros(0, np.int64)
    if by_id and key2.min() >= 0:
        owner = np.empty(int(key2.max()) + 1, np.int64)
        owner[key2] = cust
        if (owner[key2] == cust).all():
            used = np.zeros(len(owner), bool)
            used[key2] = True
            return (np.cumsum(used) - 1)[key2]
    k2, k2_max = key2 - key2.min(), int(key2.max() - key2.min()) + 1
    if (int(cust.max()) + 1) * k2_max < 2**62:
        return pd.factorize(cust * k2_max + k2)[0]
    return pd.MultiIndex.from_arrays([cust, key2]).factorize()[0]


def _net(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sum of each group's values, exactly 0 where it is a rounding residue of them (`settled`)."""
    net = np.bincount(groups, values, n)
    near = np.abs(net) < 1e-3  # a residue is about 1e-16 of the group's absolute total
    if near.any():
        lines = near[groups]
        net[near] = settled(net[near], np.bincount(groups[lines], np.abs(values[lines]), n)[near])
    return net


def settled(net: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """`net` with sums within 1e-9 of `scale` (the absolute total they came from) made exactly 0: a full refund
    booked on an order nets to 0, not to a floating-point residue (0.1 + 0.2 - 0.3 is 5.6e-17) that would leave the
    order a purchase, whatever the currency's magnitude."""
    return np.where(np.abs(net) <= 1e-9 * scale, 0.0, net)


def order_table(tx: pd.DataFrame, cust: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Aggregate lines into orders (by `order_id`, else by customer and timestamp).

    Returns the orders (cust, ts, first_ts, opened, amount, margin, lines, quantity, channel) sorted by customer and
    `ts`, and for each line the row of its order. An order's lines can come at several times (a payment after an
    empty opening line, a refund, a re-charge), and what the order is changes with them: `ts` is when it last became
    a purchase (its running net rose above 0; the first line's time if it never did), `first_ts` its first line's
    time and `opened` when it first stopped being empty (a line bought or a net other than 0). Features as of any
    date then agree with the ones built the day before: an order paid today is a purchase of today.
    """
    ts = _ns(tx["timestamp"])
    # order key: the rank of order_id in sorted order (or the timestamp), combined with the customer code
    by_id = "order_id" in tx.columns
    key2 = _factorized(tx["order_id"], sort=True)[0] if by_id else ts
    if by_id and len(key2) and key2.min() < 0:  # lines without an order id: one order per customer and timestamp
        no_id = key2 < 0
        key2 = key2.copy()
        key2[no_id] = key2.max() + 1 + pd.factorize(ts[no_id], sort=True)[0]
    line_order = _line_orders(cust, key2, by_id)
    n = int(line_order.max()) + 1 if len(tx) else 0
    amount = tx["amount"].to_numpy(dtype=float)
    first_ts = _group_min(ts, line_order, n)
    order_ts, opened = _order_times(ts, amount, line_order, first_ts)
    order_cust, order_key = _per_group(cust, line_order, n), _per_group(key2, line_order, n)  # fixed in an order
    # orders sorted by customer and time; ties between orders of one customer at one time are broken by order key,
    # so row order never matters. Lines map to their order's rank, so the sums below come out sorted.
    order = _sorted_orders(order_cust, order_ts, order_key)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    line_order = rank[line_order]
    sorted_ts = order_ts[order]
    orders = pd.DataFrame({
        "cust": order_cust[order],
        "ts": sorted_ts,
        "first_ts": sorted_ts if first_ts is order_ts else first_ts[order],
        "opened": sorted_ts if opened is order_ts else opened[order],
        "amount": _net(line_order, amount, n),
        "margin": _net(line_order, tx["margin"].to_numpy(dtype=float), n) if "margin" in tx else np.nan,
        "lines": np.bincount(line_order, minlength=n),
        "quantity": np.bincount(line_order, tx["quantity"].to_numpy(dtype=float), n) if "quantity" in tx else np.nan,
        "channel": _order_channel(tx, line_order, n),
    }, copy=False)
    return orders, line_order


def _order_times(ts: np.ndarray, amount: np.ndarray, line_order: np.ndarray,
                 first_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per order (`order_table`): when it last became a purchase (its running net, as `_net` settles it, rose above
    0) and when it was opened (first bought a line or netted other than 0); `first_ts` (the same object) where no
    order has a line at a later time than its first and with an amount of 0 or below."""
    later = ts != first_ts[line_order]
    if not later.any():
        return first_ts, first_ts
    n = len(first_ts)
    maybe = np.zeros(n, bool)
    maybe[line_order[later]] = True
    lines = np.flatnonzero(maybe[line_order])
    lines = lines[np.bincount(line_order[lines], amount[lines] <= 0, n)[line_order[lines]] > 0]
    if not len(lines):
        return first_ts, first_ts
    keys = [line_order[lines], ts[lines]]  # by order, then time
    amt = pd.Series(amount[lines])
    net = amt.groupby(keys).sum()
    order, t = (net.index.get_level_values(i).to_numpy() for i in (0, 1))
    scale = np.abs(amt).groupby(keys).sum().groupby(level=0).cumsum().to_numpy()
    run = settled(net.groupby(level=0).cumsum().to_numpy(), scale)
    bought = (amt > 0).groupby(keys).any().groupby(level=0).cummax().to_numpy()
    starts = np.r_[True, order[1:] != order[:-1]]
    rose = (run > 0) & (starts | np.r_[True, run[:-1] <= 0])
    became, opened = first_ts.copy(), first_ts.copy()
    became[order[rose]] = t[rose]  # ascending time within each order: the last rise wins
    used = (run != 0) | bought
    rows = np.flatnonzero(used)
    rows = rows[np.r_[True, order[rows][1:] != order[rows][:-1]]]  # each order's first
    opened[order[rows]] = t[rows]
    return became, opened


def _group_first(cust: np.ndarray, n: int) -> np.ndarray:
    """Index of the first row of each customer in `cust` (sorted); -1 where a customer has no row."""
    first = np.full(n, -1, np.int64)
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]]) if len(cust) else np.zeros(0, np.int64)
    first[cust[starts]] = starts
    return first


def _earliest(cust: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """The earliest of each customer's int64 `times` (orders sorted by customer and `ts`: nearly always the first
    row's), as float; NaN for customers without a row."""
    out = np.full(n, np.nan)
    has = np.bincount(cust, minlength=n) > 0
    out[has] = _group_min(times[::-1], cust[::-1], n)[has]  # written last, each customer's first row is kept
    return out


def _take(values: np.ndarray, idx: np.ndarray, fill: float = np.nan) -> np.ndarray:
    out = np.full(len(idx), fill, dtype=float)
    ok = idx >= 0
    out[ok] = values[idx[ok]]
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _rfm(orders: pd.DataFrame, n: int, as_of_ns: int) -> dict[str, np.ndarray]:
    buy = orders.loc[orders["amount"].to_numpy() > 0]
    c, ts, amt = buy["cust"].to_numpy(), buy["ts"].to_numpy(), buy["amount"].to_numpy()
    n_orders = np.bincount(c, minlength=n)
    first, last = _group_first(c, n), _group_first(c[::-1], n)
    last = np.where(last >= 0, len(c) - 1 - last, -1)
    same = np.r_[False, c[1:] == c[:-1]]
    gap = np.where(same, np.diff(ts, prepend=ts[:1]) / DAY_NS, 0.0)
    k = np.bincount(c, same.astype(float), n)
    gap_mean = _ratio(np.bincount(c, gap, n), k)
    gap_var = _ratio(np.bincount(c, gap**2, n), k) - gap_mean**2
    recency = (as_of_ns - _take(ts.astype(float), last)) / DAY_NS
    tenure = (as_of_ns - _take(ts.astype(float), first)) / DAY_NS
    second = np.where((first >= 0) & (n_orders >= 2), first + 1, -1)
    before_last = np.where((last >= 0) & (n_orders >= 2), last - 1, -1)
    ret = orders["amount"].to_numpy() < 0
    oc = orders["cust"].to_numpy()
    out = {
        "n_orders": n_orders,
        "recency_days": recency,
        "tenure_days": tenure,
        "net_spend_total": np.bincount(oc, orders["amount"].to_numpy(), n),
        "avg_order_value": _ratio(np.bincount(c, amt, n), n_orders),
        "max_order_value": pd.Series(amt).groupby(c).max().reindex(range(n)).to_numpy(),
        "gap_mean_days": gap_mean,
        "gap_std_days": np.sqrt(np.clip(gap_var, 0, None)),
        "recency_over_gap": _ratio(recency, gap_mean),
        "orders_per_30d": _ratio(30.0 * n_orders, np.maximum(tenure, 1.0)),
    }
    for w in WINDOWS:
        recent = ts > as_of_ns - w * DAY_NS
        out[f"spend_{w}d"] = np.bincount(c[recent], amt[recent], n)
        out[f"orders_{w}d"] = np.bincount(c[recent], minlength=n)
    out["spend_trend_90d"] = _ratio(out["spend_90d"], out["spend_365d"] * 90 / 365)
    out["days_first_to_second"] = (_take(ts.astype(float), second) - _take(ts.astype(float), first)) / DAY_NS
    out["last_gap_days"] = (_take(ts.astype(float), last) - _take(ts.astype(float), before_last)) / DAY_NS
    out["n_return_orders"] = np.bincount(oc[ret], minlength=n)
    returned = -np.bincount(oc[ret], orders["amount"].to_numpy()[ret], n) + 0.0
    out["return_share"] = _ratio(returned, np.bincount(c, amt, n))
    first_idx = buy.index.to_numpy()
    out["_first_order"] = np.where(first >= 0, first_idx[np.maximum(first, 0)], -1) if len(first_idx) else first
    out["_first_ts"] = _take(ts.astype(float), first)
    out["_first_row_ts"] = _earliest(oc, orders["first_ts"].to_numpy(), n)  # returns and empty orders count too
    return out


def _purchase_moments(orders: pd.DataFrame, n: int, as_of_ns: int, rules: StageRules) -> dict[str, np.ndarray]:
    """Days since the purchases of two moments (`features.lifecycle`): the `loyal_orders`-th purchase, and the last
    purchase that came more than `new_days` after the previous one (a comeback)."""
    buy = orders["amount"].to_numpy() > 0
    c, ts = orders["cust"].to_numpy()[buy], orders["ts"].to_numpy()[buy].astype(float)
    loyal = np.where(np.bincount(c, minlength=n) >= rules.loyal_orders, _group_first(c, n) + rules.loyal_orders - 1, -1)
    comeback = (np.diff(c, prepend=-1) == 0) & (np.diff(ts, prepend=np.nan) > rules.new_days * DAY_NS)
    return {"days_since_loyal_order": (as_of_ns - _take(ts, loyal)) / DAY_NS,
            "days_since_comeback": (as_of_ns - _per_customer(np.maximum, c[comeback], ts[comeback], n)) / DAY_NS}


def _bought_back(tx: pd.DataFrame, line_order: np.ndarray, orders: pd.DataFrame) -> np.ndarray:
    """Whether each order is a purchase refunded in full: no purchase (net 0 or below) though one of its lines was
    bought (returns and empty orders, such as free samples, have no bought line)."""
    amount = tx["amount"].to_numpy(dtype=float)
    lines = np.flatnonzero((orders["amount"].to_numpy() <= 0)[line_order])  # the lines of orders that are no purchase
    out = np.zeros(len(orders), bool)
    out[line_order[lines[amount[lines] > 0]]] = True
    return out


def _first_order_time(orders: pd.DataFrame, bought_back: np.ndarray, n: int) -> np.ndarray:
    """Time of each customer's first order of any kind (a purchase, a return, a purchase since refunded:
    `bought_back`) but an empty one (free samples), NaN without; orders are sorted by customer and time."""
    counts = (orders["amount"].to_numpy() != 0) | bought_back
    return _earliest(orders["cust"].to_numpy()[counts], orders["opened"].to_numpy()[counts], n)


def _refund_times(tx: pd.DataFrame, line_order: np.ndarray, orders: pd.DataFrame,
                  bought_back: np.ndarray) -> np.ndarray:
    """When each order was refunded in full (`bought_back`): the time at which its running net last fell from above
    zero to zero or below (NaN for the other orders)."""
    out = np.full(len(orders), np.nan)
    lines = np.flatnonzero(bought_back[line_order])
    if not len(lines):
        return out
    amount = tx["amount"].to_numpy(dtype=float)
    keys = [line_order[lines], _ns(tx["timestamp"])[lines]]  # by order, then time
    net = pd.Series(amount[lines]).groupby(keys).sum()
    scale = pd.Series(np.abs(amount[lines])).groupby(keys).sum().groupby(level=0).cumsum().to_numpy()
    run = settled(net.groupby(level=0).cumsum().to_numpy(), scale)  # as the order nets (`_net`)
    order, ts = (net.index.get_level_values(i).to_numpy() for i in (0, 1))
    fell = np.r_[False, (order[1:] == order[:-1]) & (run[:-1] > 0)] & (run <= 0)
    np.fmax.at(out, order[fell], ts[fell].astype(float))
    return out


def _set_stage(k: np.ndarray, last_age: np.ndarray, gap: np.ndarray, at_age: np.ndarray,
               rules: StageRules) -> np.ndarray:
    """The stage (`features.lifecycle`) at `at_age` days before as-of of k purchases, the last `last_age` days
    before as-of, `gap` days apart on average (no advocacy: it decides neither at_risk nor lapsed)."""
    rec = last_age - at_age
    return stages_of(k, rec, _ratio(rec, gap), np.zeros(len(k)), rules)


def _entry_age(k: np.ndarray, last_age: np.ndarray, gap: np.ndarray, stage: np.ndarray,
               rules: StageRules) -> np.ndarray:
    """Days before as-of at which the time rule put k purchases (as in `_set_stage`) into `stage` (at_risk or
    lapsed): the stage holds once the recency exceeds its threshold."""
    overdue = rules.overdue_factor * np.where(gap > 0, gap, np.inf)  # no gap: never overdue (stages_of)
    at_risk = np.where(k == 1, rules.new_days, np.maximum(rules.new_days, overdue))
    return last_age - np.where(stage == "lapsed", rules.lapsed_days, at_risk)


def _days_in_stage(orders: pd.DataFrame, refunded: np.ndarray, feats: dict[str, np.ndarray], n: int, as_of_ns: int,
                   rules: StageRules) -> np.ndarray:
    """Days since the customer entered today's at_risk or lapsed stage (NaN in other stages), by time or by a full
    refund. Between two refunds the standing purchases are fixed and only the time rule moves the stage. Walking
    back from as-of through the customer's refunds: if the time rule put the purchases standing since the refund
    into the stage after that refund, the stage began at that crossing; else, if the purchases standing just before
    the refund (its orders still among them) had another stage, it began at the refund; else go on to the refund
    before (none left: the crossing). Customers without a refund need only today's crossing. A crossing counts from
    just after it (the stage needs the recency above its threshold), a refund from its time on, so
    `days < lookback` fires each entry in exactly one run."""
    k0, rec0, gap0 = feats["n_orders"].astype(float), feats["recency_days"], feats["gap_mean_days"]
    stage = stages_of(k0, rec0, feats["recency_over_gap"], np.zeros(n), rules)
    risky = np.isin(stage, ("at_risk", "lapsed"))
    entry = np.where(risky, _entry_age(k0, rec0, gap0, stage, rules), np.nan)  # the crossing on today's purchases
    days = np.where(risky, np.nextafter(entry, -np.inf), np.nan)
    done = ~np.isnan(refunded)
    oc = orders["cust"].to_numpy()[done]
    walk = risky[oc]
    if not walk.any():
        return days
    # the refunded orders of the customers in a risky stage, latest refund first: after its refund group, a row's
    # running count and extremes are those of the purchases standing just before that refund
    c = oc[walk]
    age = (as_of_ns - refunded[done][walk]) / DAY_NS
    ts_age = (as_of_ns - orders["ts"].to_numpy()[done][walk].astype(float)) / DAY_NS
    order = np.lexsort((age, c))
    c, age, ts_age = c[order], age[order], ts_age[order]
    grouped = pd.DataFrame({"c": c, "ts": ts_age}).groupby("c", sort=False)["ts"]
    k = k0[c] + grouped.cumcount().to_numpy() + 1
    last_age = np.fmin(rec0[c], grouped.cummin().to_numpy())
    first_age = np.fmax(feats["tenure_days"][c], grouped.cummax().to_numpy())
    step = np.r_[(c[1:] != c[:-1]) | (age[1:] != age[:-1]), True]  # the last row of each refund time
    c, age, k, last_age, first_age = c[step], age[step], k[step], last_age[step], first_age[step]
    gap = _ratio(first_age - last_age, k - 1.0)
    s = stage[c]
    moved = _set_stage(k, last_age, gap, age, rules) != s
    crossed = _entry_age(k, last_age, gap, s, rules)
    same = np.r_[c[1:] == c[:-1], False]
    older = np.where(same, np.r_[age[1:], np.inf], np.inf)  # the refund before (inf: none)
    stop = moved | (crossed <= older)
    first = _group_first(c, n)  # the customer's last refund
    ok = first >= 0
    latest = np.full(n, np.nan)
    latest[ok] = age[first[ok]]
    walked = ok & (entry > latest)  # today's purchases crossed before the last refund: walk back
    hit = np.flatnonzero(stop)
    at = _group_first(c[hit], n)
    idx = hit[at[walked]]
    days[walked] = np.where(moved[idx], age[idx], np.nextafter(crossed[idx], -np.inf))
    return days


def _codes_of(values: pd.Series) -> np.ndarray:
    """Integer codes of a column (-1 for missing), factorized once and then indexed, never the strings; a
    categorical's own codes as they are (int8 for a few categories: less memory to gather)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy()
    return _factorized(values)[0]


def _distinct_per_customer(cust: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """Number of distinct non-missing codes per customer: marked in a customers x codes table of booleans when it
    takes at most 16 bytes per row (categories, channels, small catalogues), else by sorting the pairs (far faster
    than hashing)."""
    ok = codes >= 0
    if not ok.any():
        return np.zeros(n, np.int64)
    if not ok.all():
        cust, codes = cust[ok], codes[ok]
    base = int(codes.max()) + 1
    pairs = cust * base
    pairs += codes
    if n * base <= 16 * len(codes):
        seen = np.zeros(n * base, bool)
        seen[pairs] = True
        return np.count_nonzero(seen.reshape(n, base), axis=1)
    pairs.sort()
    return np.bincount(pairs[np.r_[True, pairs[1:] != pairs[:-1]]] // base, minlength=n)


def _first_order_and_kpa(tx: pd.DataFrame, cust: np.ndarray, orders: pd.DataFrame, line_order: np.ndarray,
                         first_order: np.ndarray, n: int, params: FeatureParams) -> dict[str, np.ndarray]:
    has = first_order >= 0
    fo = np.maximum(first_order, 0)

    def first(col: str) -> np.ndarray:
        return _take(orders[col].to_numpy(dtype=float), first_order)  # NaN without a first order (or any order)

    buy_line = (orders["amount"].to_numpy() > 0)[line_order]
    amount = tx["amount"].to_numpy(dtype=float)
    bc, ba = cust[buy_line], amount[buy_line]
    out = {
        "first_order_value": first("amount"),
        "first_order_lines": first("lines"),
        "first_order_quantity": first("quantity"),
        "first_order_margin_rate": _ratio(first("margin"), first("amount")),
    }
    is_first = np.zeros(len(orders), bool)
    is_first[first_order[has]] = True
    in_first = is_first[line_order]
    nan = np.full(n, np.nan)
    if "category" in tx.columns:
        category = _codes_of(tx["category"])
        out["first_order_categories"] = np.where(has, _distinct_per_customer(cust[in_first], category[in_first], n), np.nan)
        out["n_categories"] = _distinct_per_customer(bc, category[buy_line], n)
    else:
        out["first_order_categories"] = out["n_categories"] = nan
    out["n_products"] = _distinct_per_customer(bc, _codes_of(tx["product_id"])[buy_line], n) if "product_id" in tx else nan
    if "margin" in tx.columns:
        margin = tx["margin"].to_numpy(dtype=float)[buy_line]
        high = _ratio(margin, ba) >= params.high_margin_rate
        out["high_margin_share"] = _ratio(np.bincount(bc[high], ba[high], n), np.bincount(bc, ba, n))
        out["margin_rate"] = _ratio(np.bincount(bc, margin, n), np.bincount(bc, ba, n))
    else:
        out["high_margin_share"] = out["margin_rate"] = nan
    if "channel" in tx.columns:
        buy = orders["amount"].to_numpy() > 0
        channel = orders["channel"].array  # a categorical (`_order_channel`)
        app = channel.categories.get_indexer(["app"])[0]
        is_app = channel.codes == app if app >= 0 else np.zeros(len(channel), bool)
        oc = orders["cust"].to_numpy()
        out["app_order_share"] = _ratio(np.bincount(oc[buy & is_app], minlength=n), np.bincount(oc[buy], minlength=n))
        out["n_channels"] = _distinct_per_customer(bc, _codes_of(tx["channel"])[buy_line], n)
        names = np.append(channel.categories.to_numpy(dtype=object), "")  # a missing channel (code -1) is ""
        out["first_order_channel"] = (np.where(has, names[channel.codes[fo]], None) if len(channel)
                                      else np.full(n, None, dtype=object))
    else:
        out["app_order_share"] = out["n_channels"] = nan
        out["first_order_channel"] = np.full(n, None, dtype=object)
    return out


def _engagement(ev: pd.DataFrame | None, cust: np.ndarray, first_ts: np.ndarray, n: int,
                as_of_ns: int) -> dict[str, np.ndarray]:
    if ev is None:
        ev = pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns]"), "event": pd.Series([], dtype=str)})
        cust = np.zeros(0, np.int64)
    ts = _ns(ev["timestamp"]).astype(float)
    # event type as an index into EVENT_TYPES (len(EVENT_TYPES) = other), via the few distinct names
    codes, names = pd.factorize(ev["event"])
    index = {e: i for i, e in enumerate(EVENT_TYPES)}
    kind = np.array([index.get(str(x), len(EVENT_TYPES)) for x in names], dtype=np.int64)[codes] if len(ev) else codes
    per_type = np.bincount(kind * n + cust, minlength=n * (len(EVENT_TYPES) + 1)).reshape(-1, n) if n else None
    out: dict[str, np.ndarray] = {f"n_{e}": per_type[i] if n else np.zeros(0) for i, e in enumerate(EVENT_TYPES)}
    out["n_other_events"] = per_type[len(EVENT_TYPES)] if n else np.zeros(0)
    since_first = (ts - first_ts[cust]) / DAY_NS
    bought = ~np.isnan(first_ts)
    for d in (7, 14, 30):
        hit = (since_first >= 0) & (since_first <= d)
        out[f"events_first_{d}d"] = np.where(bought, np.bincount(cust[hit], minlength=n), np.nan)
    app7 = (since_first >= 0) & (since_first <= 7) & (kind == index["app_session"])
    out["app_sessions_first_7d"] = np.where(bought, np.bincount(cust[app7], minlength=n), np.nan)
    out["events_before_first_purchase"] = np.bincount(cust[~(since_first >= 0)], minlength=n)
    for d in (7, 30, 90):
        out[f"events_last_{d}d"] = np.bincount(cust[ts > as_of_ns - d * DAY_NS], minlength=n)
    out["days_since_last_event"] = (as_of_ns - _per_customer(np.maximum, cust, ts, n)) / DAY_NS
    out["_first_event_ts"] = _per_customer(np.minimum, cust, ts, n)
    optin = kind == index["newsletter_optin"]
    out["days_since_optin"] = (as_of_ns - _per_customer(np.maximum, cust[optin], ts[optin], n)) / DAY_NS
    advocacy = (kind == index["referral"]) | (kind == index["review"])
    out["days_since_first_advocacy"] = (as_of_ns - _per_customer(np.minimum, cust[advocacy], ts[advocacy], n)) / DAY_NS
    return out


def _per_customer(ufunc: np.ufunc, cust: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """`ufunc` (np.minimum or np.maximum) of `values` per customer; NaN for customers without a value."""
    out = np.full(n, np.nan)
    if len(cust):
        seen = np.zeros(n, bool)
        seen[cust] = True
        out[seen] = -np.inf if ufunc is np.maximum else np.inf
        ufunc.at(out, cust, values)
    return out


def _aha_counts(tx: pd.DataFrame, ev: pd.DataFrame | None, coded: tuple, actions: tuple[tuple[str, int], ...]
                ) -> dict[str, np.ndarray]:
    """The Aha-rule counts of `features.aha.action_counts` on the builder's ids and orders (`coded`), NaN without a
    purchase."""
    from features.aha import action_counts

    return action_counts(tx, ev, actions, coded)[1]


def _first_rows(codes: np.ndarray, n: int) -> np.ndarray:
    """The first row holding each code 0..n-1 (-1 where none does)."""
    rows = np.full(n, -1, np.int64)
    ok = np.flatnonzero(codes >= 0)[::-1]
    rows[codes[ok]] = ok  # the last write of a code is its first row
    return rows


def _attributes(customers: pd.DataFrame | None, codes: np.ndarray | None, n: int,
                as_of: pd.Timestamp) -> pd.DataFrame:
    """Static attributes as `attr_<column>` of the customers known by `as_of` (`codes`: each row's customer, the
    first row of a customer counts): numbers as they are, dates as days before as-of, text as category.

    The column's dtype decides, never the values of the customers at hand, so that every subset of customers gets
    the same types (`features.schema.load` makes text columns of numbers numeric, deciding on the whole table)."""
    if customers is None:
        return pd.DataFrame(index=pd.RangeIndex(n))
    rows = _first_rows(codes, n)
    out = {}
    for col in customers.columns.drop("customer_id"):
        s = customers[col]
        if pd.api.types.is_datetime64_any_dtype(s) or str(col).endswith("_date"):
            days = (as_of - as_utc_naive(s)).dt.total_seconds().to_numpy() / 86_400
            out[f"attr_{col}_days"] = _take(np.where(days >= 0, days, np.nan), rows)
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            out[f"attr_{col}"] = _take(s.to_numpy(dtype=float, na_value=np.nan), rows)
        else:
            codes, values = _factorized(s)  # each distinct text made a string once
            out[f"attr_{col}"] = np.append(values.astype("str").to_numpy(dtype=object), None)[np.append(codes, -1)[rows]]
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def build_features(transactions: pd.DataFrame, as_of: pd.Timestamp, events: pd.DataFrame | None = None,
                   customers: pd.DataFrame | None = None, params: FeatureParams = FeatureParams()) -> pd.DataFrame:
    """Build one row of point-in-time features per customer known by `as_of`.

    Args:
        transactions: canonical transactions (rows after `as_of` are ignored).
        as_of: the cutoff; features see only rows with `timestamp <= as_of`.
        events: canonical events, optional.
        customers: static attributes, optional; each column becomes `attr_<column>`.
        params: fixed parameters of the features.

    Returns:
        Columns customer_id, as_of, then the features of `features.spec.FEATURE_DOCS` and the attributes,
        sorted by customer_id.
    """
    as_of = pd.Timestamp(as_of)
    as_of_ns = int(as_of.value)
    tx, ev = _before(transactions, as_of), _before(events, as_of)
    known = None if customers is None else _known_customers(customers, as_of)
    ids, (cust, *rest) = customer_codes(tx["customer_id"], *(df["customer_id"] for df in (ev, known) if df is not None))
    n = len(ids)
    orders, line_order = order_table(tx, cust)
    feats = _rfm(orders, n, as_of_ns)
    first_order, first_ts, first_row = feats.pop("_first_order"), feats.pop("_first_ts"), feats.pop("_first_row_ts")
    feats.update(_first_order_and_kpa(tx, cust, orders, line_order, first_order, n, params))
    ev_cust = rest[0] if ev is not None else None
    feats.update(_engagement(ev, ev_cust, first_ts, n, as_of_ns))
    feats["days_since_first_seen"] = (as_of_ns - np.fmin(first_row, feats.pop("_first_event_ts"))) / DAY_NS
    bought_back = _bought_back(tx, line_order, orders)
    feats["days_since_first_order"] = (as_of_ns - _first_order_time(orders, bought_back, n)) / DAY_NS
    feats.update(_purchase_moments(orders, n, as_of_ns, params.stage_rules))
    feats["days_in_stage"] = _days_in_stage(orders, _refund_times(tx, line_order, orders, bought_back), feats, n,
                                            as_of_ns, params.stage_rules)
    df = pd.DataFrame({name: feats[name] for name in FEATURE_DOCS if name in feats})
    for col in df.columns:
        if df[col].dtype.kind in "iub":
            df[col] = df[col].astype("float64")
    df["lifecycle_stage"] = lifecycle_stage(df, rules=params.stage_rules)
    df.insert(0, "customer_id", pd.array(ids, dtype="str"))
    df.insert(1, "as_of", pd.Series(as_of, index=df.index).astype("datetime64[ns]"))
    aha = pd.DataFrame(_aha_counts(tx, ev, (ids, cust, orders, line_order), params.aha_actions)
                       if params.aha_actions else {}, index=df.index)
    return pd.concat([df, aha, _attributes(known, rest[-1] if known is not None else None, n, as_of)], axis=1)
