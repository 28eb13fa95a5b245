"""Building blocks of the demo world (features.simulate): parameters, product catalogue, order lines, events, ids.

Everything here is plain numpy/pyarrow and vectorised; nothing runs at import time except small constant tables.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "DROPOUT_AB",
    "EVENT_KINDS",
    "MONTHLY_SEASONALITY",
    "NUDGE_CHANNELS",
    "NUDGE_COST",
    "RATE_MEAN",
    "RATE_SHAPE",
    "SEGMENTS",
    "SEGMENT_SHARE",
    "TRUE_UPLIFT",
    "Catalogue",
    "as_strings",
    "daily_multiplier",
    "draw_events",
    "draw_lines",
    "id_bytes",
    "labels",
    "make_catalogue",
    "poisson_in_intervals",
]

SEGMENTS = ("deal_seeker", "casual", "loyalist")
SEGMENT_SHARE = np.array([0.35, 0.45, 0.20])
RATE_MEAN = np.array([1 / 40, 1 / 60, 1 / 28])  # orders per day; the mixture mean is ~1 per 43 days
RATE_SHAPE = np.array([2.0, 1.5, 3.0])  # gamma shape of the purchase rate
DROPOUT_AB = np.array([[0.45, 0.5], [0.6, 0.4], [0.3, 4.0]])  # beta(a, b) of the drop-out probability after a purchase
TRUE_UPLIFT = np.array([0.12, 0.05, 0.01])  # added P(purchase within 14 days) of a treated nudge
MONTHLY_SEASONALITY = np.array([0.9, 0.85, 0.95, 1.0, 0.95, 0.85, 0.8, 0.8, 0.95, 1.05, 1.45, 1.6])

AHA_MIN_SESSIONS, AHA_WITHIN_DAYS = 3, 7
LINES_P = np.array([0.1, 0.14, 0.18, 0.2, 0.2, 0.18])  # 1..6 lines per order
EVENT_KINDS = ("app_session", "newsletter_optin", "email_open", "feedback", "review", "referral", "support_ticket",
               "survey")
CATEGORIES = ("premium", "apparel", "home", "beauty", "electronics", "grocery", "toys", "sports")
_CAT_SIZE = np.array([15, 30, 30, 25, 20, 30, 25, 25])  # 200 products
_CAT_PRICE = np.array([120.0, 40.0, 35.0, 25.0, 90.0, 8.0, 20.0, 45.0])
_CAT_MARGIN = np.array([0.50, 0.28, 0.25, 0.48, 0.20, 0.22, 0.30, 0.26])
_CAT_WEIGHT = np.array([0.05, 0.18, 0.15, 0.12, 0.07, 0.23, 0.10, 0.10])  # share of lines per category
CHANNELS = ("web", "app", "store")
NUDGE_CHANNELS = ("email", "push", "postcard")
NUDGE_COST = np.array([0.1, 0.05, 1.0])

# "000".."999" as ASCII bytes: ids are written three digits at a time
_D = np.arange(1000)
_TRIPLETS = (np.stack([_D // 100, _D // 10 % 10, _D % 10], axis=1) + 48).astype(np.uint8)


class Catalogue:
    """Products with category, unit price, margin rate and popularity; product ids are 'P' + 4 digits."""

    def __init__(self, category: np.ndarray, price: np.ndarray, margin_rate: np.ndarray, weight: np.ndarray) -> None:
        self.category, self.price, self.margin_rate = category, price, margin_rate
        self.p_all = weight / weight.sum()
        regular = np.where(category == CATEGORIES.index("premium"), 0.0, weight)
        self.p_regular = regular / regular.sum()  # popularity without premium products
        self.premium = np.flatnonzero(category == CATEGORIES.index("premium"))
        self.start = np.concatenate([[0], np.cumsum(_CAT_SIZE)[:-1]])[category]  # first product of own category
        self.size = _CAT_SIZE[category]

    def __len__(self) -> int:
        return len(self.category)


def make_catalogue(rng: np.random.Generator) -> Catalogue:
    """Draw ~200 products in 8 categories: lognormal prices, margin rates ~0.2-0.3 (premium and beauty ~0.5)."""
    category = np.repeat(np.arange(len(CATEGORIES)), _CAT_SIZE)
    price = np.round(_CAT_PRICE[category] * rng.lognormal(0.0, 0.45, len(category)), 0) - 0.01
    price = np.maximum(price, 0.99)
    margin_rate = np.clip(_CAT_MARGIN[category] + rng.normal(0, 0.03, len(category)), 0.17, 0.6)  # > top discount
    rank = np.concatenate([rng.permutation(s) for s in _CAT_SIZE])
    zipf = 1.0 / (rank + 3.0)
    within = zipf / np.bincount(category, zipf)[category]
    return Catalogue(category, price, margin_rate, within * _CAT_WEIGHT[category])


def id_bytes(prefix: str, nums: np.ndarray, width: int) -> np.ndarray:
    """Fixed-width byte strings prefix + zero-padded number (e.g. b'C0000123'), built without Python loops.

    Index the result with numpy (as fast as an integer take) and wrap it with `as_strings`.
    """
    nums = np.asarray(nums, np.int64)
    n, p = len(nums), len(prefix)
    buf = np.empty((n, p + width), np.uint8)
    buf[:, :p] = np.frombuffer(prefix.encode(), np.uint8)
    x, pos = nums.copy(), p + width
    while pos > p:
        k = min(3, pos - p)
        buf[:, pos - k:pos] = _TRIPLETS[x % 1000][:, 3 - k:]
        x //= 1000
        pos -= k
    return buf.view(f"S{p + width}").ravel()


def as_strings(fixed: np.ndarray, alt_first: tuple[str, np.ndarray] | None = None) -> pa.Array:
    """Arrow strings over the bytes of a fixed-width bytes array (no copy).

    `alt_first=(char, mask)` replaces the first character of the rows in `mask` (e.g. 'R' for return orders).
    """
    fixed = np.ascontiguousarray(fixed)
    n, w = len(fixed), fixed.dtype.itemsize
    if alt_first is not None:
        fixed.view(np.uint8).reshape(n, w)[alt_first[1], 0] = ord(alt_first[0])
    offsets = np.arange(n + 1, dtype=np.int64) * w
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(fixed))


def labels(names: tuple[str, ...] | list[str], codes: np.ndarray) -> pa.Array:
    """Arrow strings names[codes]."""
    return pa.array(list(names), pa.large_string()).take(pa.array(np.asarray(codes, np.int32)))


def daily_multiplier(start: np.datetime64, n_days: int) -> np.ndarray:
    """Seasonality multiplier of each day of the period (by calendar month), one extra day at the end."""
    days = start + np.arange(n_days + 1).astype("timedelta64[D]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12
    return MONTHLY_SEASONALITY[month]


def poisson_in_intervals(rng: np.random.Generator, who: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                         rate: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Homogeneous Poisson events (per day) of each customer `who[i]` in [lo[i], hi[i]); returns (who, time)."""
    length = np.maximum(hi - lo, 0.0)
    count = rng.poisson(length * rate)
    rep = np.repeat(np.arange(len(who)), count)
    return who[rep], lo[rep] + rng.random(len(rep)) * length[rep]


def draw_lines(rng: np.random.Generator, cat: Catalogue, c: dict[str, np.ndarray], who: np.ndarray,
           time: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
    """Lines of the given orders: per-line arrays order, product, qty, amount, margin, channel, cust, time.

    Products are distinct within an order; a first order holds a premium product only when `c["premium"]` says so.
    """
    n = len(who)
    n_lines = rng.choice(6, n, p=LINES_P) + 1
    prod = rng.choice(len(cat), (n, 6), p=cat.p_all).astype(np.int16)
    fo = np.flatnonzero(first)
    prod[fo] = rng.choice(len(cat), (len(fo), 6), p=cat.p_regular)
    forced = fo[c["premium"][who[fo]]]
    prod[forced, 0] = rng.choice(cat.premium, len(forced))
    for j in range(1, 6):
        rows = np.flatnonzero(n_lines > j)
        while len(rows):
            rows = rows[(prod[rows, j][:, None] == prod[rows, :j]).any(axis=1)]
            reg = first[rows]
            prod[rows, j] = np.where(reg, rng.choice(len(cat), len(rows), p=cat.p_regular),
                                     rng.choice(len(cat), len(rows), p=cat.p_all))
    line_order = np.repeat(np.arange(n), n_lines)
    product = prod[np.arange(6) < n_lines[:, None]].astype(np.int64)
    del prod
    disc_share = np.where(c["seg"][who] == 0, 0.5, 0.1)
    discount = np.where(rng.random(n) < disc_share, np.where(c["seg"][who] == 0, 0.15, 0.1), 0.0)
    e = c["engagement"][who]
    p_app = 0.1 + 0.5 * e / (1 + e)
    u = rng.random(n)
    channel = np.where(u < p_app, 1, np.where(u < p_app + 0.25, 2, 0))
    qty = rng.choice(3, len(product), p=[0.72, 0.2, 0.08]) + 1.0
    gross = qty * cat.price[product]
    amount = np.round(gross * (1 - discount[line_order]), 2)
    margin = np.round(amount - gross * (1 - cat.margin_rate[product]), 2)
    return {"order": line_order, "product": product, "qty": qty, "amount": amount, "margin": margin,
            "channel": channel[line_order], "cust": who[line_order], "time": time[line_order]}


def draw_events(rng: np.random.Generator, c: dict[str, np.ndarray], death: np.ndarray,
                n_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events (who, time in days, kind code into EVENT_KINDS, value), active from signup until ~2 months after drop-out.

    App sessions avoid the day before and the 8 days after the first purchase except for the planted
    `sessions` inside (first, first + 6.5 days], so that any reasonable 7-day window counts exactly those.
    """
    n = len(c["first"])
    all_ = np.arange(n)
    b = np.flatnonzero(c["buyer"])
    end = np.where(c["buyer"], np.minimum(death, n_days) + rng.exponential(60, n), c["signup"] + rng.exponential(90, n))
    end = np.minimum(end, n_days)
    app = 0.04 * c["engagement"]
    f = c["first"][b]
    parts = [  # kind, (who, time)
        (0, poisson_in_intervals(rng, all_, c["signup"], np.where(c["buyer"], c["first"] - 1, end), app)),
        (0, (np.repeat(b, c["sessions"][b]),
             np.repeat(f, c["sessions"][b]) + 0.01 + 6.49 * rng.random(int(c["sessions"][b].sum())))),
        (0, poisson_in_intervals(rng, b, f + AHA_WITHIN_DAYS + 1, end[b], app[b])),
        (1, (all_[c["optin"]], c["signup"][c["optin"]] + 0.0005 + 0.005 * rng.random(int(c["optin"].sum())))),
        (2, poisson_in_intervals(rng, all_[c["optin"]], c["signup"][c["optin"]], end[c["optin"]], 0.03)),
        (3, poisson_in_intervals(rng, b, f, end[b], 0.004)),
        (4, poisson_in_intervals(rng, b, f, end[b], 0.003)),
        (5, poisson_in_intervals(rng, b, f, end[b], np.where(c["seg"][b] == 2, 0.003, 0.0008))),
        (6, poisson_in_intervals(rng, all_, c["signup"], end, 0.002)),
        (7, poisson_in_intervals(rng, all_, c["signup"], end, 0.0015)),
    ]
    who = np.concatenate([p[1][0] for p in parts])
    time = np.concatenate([p[1][1] for p in parts])
    kind = np.concatenate([np.full(len(p[1][0]), p[0], np.int8) for p in parts])
    ok = time < n_days
    who, time, kind = who[ok], time[ok], kind[ok]
    value = np.ones(len(who))
    value[kind == 0] = np.round(rng.lognormal(1.5, 0.7, int((kind == 0).sum())), 1)  # session minutes
    for k, hi in ((3, 5), (4, 5), (7, 10)):  # feedback and review scores 1-5, survey NPS 0-10
        m = kind == k
        value[m] = rng.integers(0 if k == 7 else 1, hi + 1, int(m.sum()))
    return who, time, kind, value
