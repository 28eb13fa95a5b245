"""The next-best-action policy: pure functions on scores, one implementation for the HTTP service and the batch.

`decide(scores, config, contact_history, now)` picks for each customer the (message, channel) with the highest
priority = uplift x expected_value x response_decay^(unanswered nudges) - channel cost, where `uplift` is the
configured prior of the message and channel (no uplift model yet; `reasons` says so) or, when the scores carry an
`uplift` column (a model learned from randomised nudges, `python -m training train --nudges`), the customer's learned
uplift for every eligible message and channel (`reasons` says "learned uplift"); it holds customers for a
documented reason: no message for the stage, too early after the first purchase, expected value below the minimum,
cooldown, frequency cap, a nudge after the score was computed (a customer who did not react is re-scored before the
next nudge), cost above the incremental value, or the batch budget (spent highest priority first).

A message marked `aha: true` (the second-purchase nudge by default) carries, for each customer, the top Aha action
(`aha_rules.csv` of `python -m features aha`, significant positive rules only, best first) the customer has not
reached yet: its `message` is then `aha_<action>` and its reason names the rule. The moments that matter
(`features.lifecycle.moment_triggers`) come with every decision as `triggers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from features.aha_rules import AhaRule, feature_params, load_aha_rules
from features.errors import InputError
from features.lifecycle import STAGES, TRIGGER_COLUMNS, moment_triggers, scored_stage
from features.pipeline import FeatureParams
from features.spec import CATEGORICAL, FEATURE_DOCS

__all__ = [
    "DEFAULT_POLICY",
    "SCORE_FEATURES",
    "Message",
    "PolicyConfig",
    "contact_summary",
    "decide",
    "decide_arrays",
    "load_policy",
    "required_columns",
    "resolve_timing",
    "second_purchase_timing",
]

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
DAY_NS = 86_400 * 10**9
PRIOR_NOTE = "configured prior, no uplift model yet"
LEARNED_NOTE = "learned uplift"


@dataclass(frozen=True)
class Message:
    """One entry of the message catalogue: the moment, the stages it fits, a feature condition, uplift priors."""

    name: str
    moment: str
    stages: tuple[str, ...]
    uplift: dict[str, float]
    feature: str | None = None
    below: float | None = None
    at_least: float | None = None
    aha: bool = False  # the message pushes the top Aha action not reached yet, when there is one


@dataclass(frozen=True)
class PolicyConfig:
    """The policy settings of policy.yaml (see that file for the meaning of each)."""

    channels: dict[str, float]
    messages: dict[str, Message]
    new_customer_delay_days: float | None = None  # None: "auto", resolved from the data by resolve_timing
    auto_quantile: float = 0.25
    fallback_delay_days: float = 7.0
    cooldown_days: float = 14.0
    max_contacts: int = 3
    cap_window_days: float = 90.0
    response_decay: float = 0.5
    min_expected_value: float = 0.0
    budget: float | None = None
    timing: dict = field(default_factory=dict)  # the data behind an "auto" delay, for reports
    aha_rules: tuple[AhaRule, ...] = ()
    trigger_lookback_days: float = 1.0

    @property
    def feature_params(self) -> FeatureParams:
        """The feature parameters the policy reads: the count columns of its Aha rules."""
        return feature_params(self.aha_rules)

    @property
    def delay_days(self) -> float:
        """The new-customer delay in force (the fallback while "auto" is unresolved)."""
        return self.fallback_delay_days if self.new_customer_delay_days is None else self.new_customer_delay_days


SCORE_FEATURES = ("p_purchase", "p_second_purchase", "expected_value", "uplift", "value_per_purchase")
"""Model score columns the policy reads (and a message's `when.feature` may name) besides the features."""
_KEYS = {"": {"channels", "messages", "timing", "contacts", "aha", "triggers", "min_expected_value", "budget"},
         "message": {"moment", "stages", "aha", "uplift", "when"}, "when": {"feature", "below", "at_least"},
         "timing": {"new_customer_delay_days", "auto_quantile", "fallback_delay_days"},
         "contacts": {"cooldown_days", "max_contacts", "cap_window_days", "response_decay"},
         "aha": {"rules", "max_rules"}, "triggers": {"lookback_days"}}


class _Policy:
    """Typed reads of one parsed policy file: each bad value is an InputError naming the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.path}: {key}: {problem}")

    def mapping(self, value, key: str, kind: str | None = None, optional: bool = True) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key or "policy", f"expected a mapping, got {value!r}")
        unknown = sorted(map(str, set(value) - _KEYS[kind])) if kind is not None else []
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                            f"unknown setting (expected one of {', '.join(sorted(_KEYS[kind]))})")
        return value

    def number(self, value, key: str, low: float = 0.0, high: float = np.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            bounds = (f" from {low:g} to {high:g}" if np.isfinite(high) else f" at least {low:g}" if np.isfinite(low)
                      else "")
            raise self.fail(key, f"expected a number{bounds}, got {value!r}")
        return float(value)

    def count(self, value, key: str) -> int:
        if self.number(value, key) != int(value):
            raise self.fail(key, f"expected a whole number, got {value!r}")
        return int(value)


def _feature_known(name: str) -> bool:
    """Whether `when.feature` names a numeric column the policy sees: a feature, a customer attribute, an Aha-rule
    count or a model score."""
    numeric = name in FEATURE_DOCS and name not in CATEGORICAL
    return numeric or name.startswith(("attr_", "aha_")) or name in SCORE_FEATURES


def _message(p: _Policy, name: str, m, channels: dict[str, float]) -> Message:
    key = f"messages.{name}"
    m = p.mapping(m, key, "message", optional=False)
    stages = m.get("stages")
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise p.fail(f"{key}.stages", f"expected a list of lifecycle stages ({', '.join(STAGES)}), got {stages!r}")
    uplift = p.mapping(m.get("uplift"), f"{key}.uplift", optional=False)
    unknown = sorted(map(str, set(uplift) - set(channels)))
    if unknown or not uplift:
        raise p.fail(f"{key}.uplift", f"unknown channel(s) {', '.join(unknown)}" if unknown
                     else "expected at least one channel")
    when = p.mapping(m.get("when"), f"{key}.when", "when")
    feature, bounds = when.get("feature"), {b: when[b] for b in ("below", "at_least") if when.get(b) is not None}
    if when and not (isinstance(feature, str) and _feature_known(feature)):
        raise p.fail(f"{key}.when.feature", f"{feature!r} is not a numeric feature (features.spec.FEATURE_DOCS, "
                                            f"attr_*, aha_* or {', '.join(SCORE_FEATURES)})")
    if when and not bounds:
        raise p.fail(f"{key}.when", "expected below and/or at_least with the feature")
    bounds = {b: p.number(v, f"{key}.when.{b}", -np.inf) for b, v in bounds.items()}
    return Message(str(name), str(m.get("moment", name)), tuple(stages),
                   {str(c): p.number(u, f"{key}.uplift.{c}") for c, u in uplift.items()}, feature,
                   bounds.get("below"), bounds.get("at_least"), bool(m.get("aha", False)))


def load_policy(path: str | Path | None = None, aha_rules: str | Path | None = None) -> PolicyConfig:
    """Read and check a policy YAML file (default: serving/policy.yaml); InputError names the file and the bad key.

    `aha_rules` (an aha_rules.csv) replaces the file's `aha.rules`.
    """
    path = Path(path or DEFAULT_POLICY)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable policy file ({type(exc).__name__})") from None
    p = _Policy(path)
    raw = p.mapping(raw, "", "", optional=False)
    channels = {str(k): p.number(v, f"channels.{k}") for k, v in
                p.mapping(raw.get("channels"), "channels", optional=False).items()}
    messages = {str(name): _message(p, name, m, channels) for name, m in
                p.mapping(raw.get("messages"), "messages", optional=False).items()}
    timing = p.mapping(raw.get("timing"), "timing", "timing")
    contacts = p.mapping(raw.get("contacts"), "contacts", "contacts")
    aha = p.mapping(raw.get("aha"), "aha", "aha")
    delay = timing.get("new_customer_delay_days", "auto")
    rules_path = aha_rules or aha.get("rules")
    max_rules = p.count(aha.get("max_rules", 3), "aha.max_rules")
    return PolicyConfig(
        channels, messages,
        None if delay in (None, "auto") else p.number(delay, "timing.new_customer_delay_days"),
        p.number(timing.get("auto_quantile", 0.25), "timing.auto_quantile", 0, 1),
        p.number(timing.get("fallback_delay_days", 7), "timing.fallback_delay_days"),
        p.number(contacts.get("cooldown_days", 14), "contacts.cooldown_days"),
        p.count(contacts.get("max_contacts", 3), "contacts.max_contacts"),
        p.number(contacts.get("cap_window_days", 90), "contacts.cap_window_days"),
        p.number(contacts.get("response_decay", 0.5), "contacts.response_decay", 0, 1),
        p.number(raw.get("min_expected_value") or 0.0, "min_expected_value", -np.inf),
        None if raw.get("budget") is None else p.number(raw["budget"], "budget"),
        aha_rules=load_aha_rules(rules_path, max_rules) if rules_path else (),
        trigger_lookback_days=p.number(p.mapping(raw.get("triggers"), "triggers", "triggers").get("lookback_days", 1),
                                       "triggers.lookback_days"))


def second_purchase_timing(features: pd.DataFrame, quantile: float = 0.25) -> dict:
    """Share of second purchases by day 10/30/90 after the first, and the delay picked from it.

    The delay is the `quantile` of the days from the first to the second purchase (clipped to 1-30 days): the
    nudge comes before most second purchases happen on their own, and early when they come early (one retailer
    saw 85% within 10 days, then the delay is about a day).
    """
    days = pd.to_numeric(features.get("days_first_to_second", pd.Series(dtype=float)), errors="coerce").dropna()
    if days.empty:
        return {"n_second_purchases": 0, "share_by_day": {}, "delay_days": None}
    shares = {d: round(float((days <= d).mean()), 4) for d in (10, 30, 90)}
    delay = float(np.clip(np.round(days.quantile(quantile)), 1, 30))
    return {"n_second_purchases": len(days), "share_by_day": shares, "delay_days": delay}


def resolve_timing(config: PolicyConfig, features: pd.DataFrame | None) -> PolicyConfig:
    """Fix an "auto" new-customer delay from `features` (or the fallback when there are none)."""
    if config.new_customer_delay_days is not None:
        return config
    timing = second_purchase_timing(features, config.auto_quantile) if features is not None else {}
    delay = timing.get("delay_days") or config.fallback_delay_days
    return replace(config, new_customer_delay_days=delay, timing=timing)


def required_columns(config: PolicyConfig) -> list[str]:
    """The score and feature columns that `decide` reads."""
    base = ["customer_id", "as_of", "n_orders", "lifecycle_stage", "expected_value", "tenure_days", "recency_days"]
    extra = {m.feature for m in config.messages.values() if m.feature} | set(TRIGGER_COLUMNS)
    extra |= {r.column for r in config.aha_rules}
    return base + sorted(extra - set(base))


def contact_summary(n: int, pos: np.ndarray, ts_ns: np.ndarray, last_purchase_ns: np.ndarray, now_ns: int,
                    cap_window_days: float) -> dict[str, np.ndarray]:
    """Per customer: last contact (ns, or min int), contacts within the cap window, nudges since the last purchase.

    Args:
        n: number of customers.
        pos: row of each past contact's customer (-1: not among the customers).
        ts_ns: time of each contact in ns. A contact at or after `now_ns` (the service nudged after the data's
            as-of, before the batch ran) counts as the last contact, so the cooldown holds; the cap and the
            unanswered count use the contacts before `now_ns`.
        last_purchase_ns: last purchase of each customer (NaN: none).
        now_ns: the decision time.
        cap_window_days: the frequency-cap window.
    """
    known = pos >= 0
    last = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, pos[known], ts_ns[known])
    ok = known & (ts_ns < now_ns)
    pos, ts_ns = pos[ok], ts_ns[ok]
    in_window = np.bincount(pos[ts_ns >= now_ns - cap_window_days * DAY_NS], minlength=n)
    lp = last_purchase_ns[pos]
    unanswered = np.bincount(pos[~(lp >= ts_ns)], minlength=n)  # no purchase at or after the contact
    return {"last_contact_ns": last, "contacts_in_window": in_window, "unanswered": unanswered}


def _fmt_day(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[D]"))


def decide_arrays(cols: dict[str, np.ndarray], config: PolicyConfig, contacts: dict[str, np.ndarray] | None,
                  now_ns: int) -> dict[str, np.ndarray | list]:
    """The policy on column arrays (see `decide`); returns lifecycle_stage (with the model's score where `cols` has
    p_purchase: `features.lifecycle.scored_stage`), action, channel, message, priority, reasons and triggers."""
    stage_rules = config.feature_params.stage_rules
    stage = np.asarray(cols["lifecycle_stage"], dtype=object)
    if "p_purchase" in cols:  # with the model's score, repeat and loyal customers unlikely to buy are at risk
        stage = scored_stage(stage, cols["p_purchase"], stage_rules)
    n = len(stage)
    ev = np.asarray(cols["expected_value"], dtype=float)
    as_of_ns = np.asarray(cols["as_of"]).astype("datetime64[ns]").astype(np.int64)
    contacts = contacts or {"last_contact_ns": np.full(n, np.iinfo(np.int64).min, np.int64),
                            "contacts_in_window": np.zeros(n, np.int64), "unanswered": np.zeros(n, np.int64)}
    decay = config.response_decay ** contacts["unanswered"]
    pairs = [(m, ch, up) for m in config.messages.values() for ch, up in m.uplift.items()]
    value = np.full((n, len(pairs)), -np.inf)
    eligible: dict[str, np.ndarray] = {}
    for m in config.messages.values():
        ok = np.isin(stage, m.stages) if n > 8 else np.array([s in m.stages for s in stage], dtype=bool)
        if m.feature:
            f = _feature_values(cols, m, n)
            if m.below is not None:
                ok &= f < m.below  # NaN (feature unknown): not eligible
            if m.at_least is not None:
                ok &= f >= m.at_least
        eligible[m.name] = ok
    # a learned uplift (more P(purchase) within the response window) is worth uplift x value per purchase; a prior
    # (a relative effect on the customer's expected value) is worth prior x expected value
    learned, per_purchase = (np.asarray(cols[c], dtype=float) if c in cols else np.full(n, np.nan)
                             for c in ("uplift", "value_per_purchase"))
    has_learned = np.isfinite(learned) & np.isfinite(per_purchase)
    worth = np.where(has_learned, per_purchase, ev)
    for j, (m, ch, up) in enumerate(pairs):
        ok = eligible[m.name]
        value[:, j] = np.where(ok, np.where(has_learned, learned, up) * worth * decay - config.channels[ch], -np.inf)
    best = value.argmax(axis=1) if pairs else np.zeros(n, int)
    priority = value[np.arange(n), best] if pairs else np.full(n, -np.inf)
    has = np.isfinite(priority)
    days_first = np.asarray(cols["tenure_days"], dtype=float) + (now_ns - as_of_ns) / DAY_NS
    last = contacts["last_contact_ns"]
    rules = [  # (hold mask, reason code), first match wins
        (~has, "no_message"),
        ((stage == "new") & ~(days_first >= config.delay_days), "too_early"),
        (~(ev >= config.min_expected_value), "low_value"),
        (last >= now_ns - config.cooldown_days * DAY_NS, "cooldown"),
        (contacts["contacts_in_window"] >= config.max_contacts, "cap"),
        (last > as_of_ns, "stale_score"),
        (priority <= 0, "not_worth_it"),
    ]
    hold = np.full(n, "", dtype=object)
    for mask, code in rules:
        hold[(hold == "") & mask] = code
    nudge = hold == ""
    if config.budget is not None and nudge.any():
        cost = np.array([config.channels[ch] for _, ch, _ in pairs])[best]
        idx = np.flatnonzero(nudge)
        order = idx[np.lexsort((np.asarray(cols["customer_id"], dtype=str)[idx], -priority[idx]))]
        left = config.budget
        for i in order:  # greedy, highest priority first: a nudge that does not fit is skipped
            if cost[i] <= left + 1e-9:
                left -= cost[i]
            else:
                hold[i] = "budget"
        nudge = hold == ""
    msg = np.array([m.name for m, _, _ in pairs] or [""], dtype=object)[best]
    chan = np.array([ch for _, ch, _ in pairs] or [""], dtype=object)[best]
    ups = np.where(has_learned, learned, np.array([up for _, _, up in pairs] or [0.0])[best])
    aha_rows, aha_rule = _aha_choice(cols, config, np.array([m.aha for m, _, _ in pairs] or [False])[best] & has,
                                     days_first)
    msg[aha_rows] = [f"aha_{config.aha_rules[k].action}" for k in aha_rule[aha_rows]]
    per_row = (hold, stage, msg, chan, ups, ev, worth, decay, priority, days_first, last, as_of_ns,
               contacts["contacts_in_window"], contacts["unanswered"], has_learned)
    # Python scalars (tolist) format about twice as fast as numpy scalars, to the same text
    reasons = [_reason(*row, config) for row in zip(*(np.asarray(a).tolist() for a in per_row))]
    for i in aha_rows:
        r = config.aha_rules[aha_rule[i]]
        reasons[i] += (f"; top Aha action not reached yet: at least {r.min_count} {r.action} within {r.within_days} "
                       f"days of the first purchase ({np.asarray(cols[r.column], dtype=float)[i]:.0f} so far; "
                       f"correlational, aha_rules.csv)")
    first_seen_ns = as_of_ns - np.asarray(cols.get("days_since_first_seen", np.full(n, np.nan)), dtype=float) * DAY_NS
    triggers = moment_triggers(cols, n, config.trigger_lookback_days, contacts["last_contact_ns"] >= first_seen_ns,
                               stage_rules)
    return {"lifecycle_stage": stage, "action": np.where(nudge, "nudge", "hold").astype(object),
            "channel": np.where(nudge, chan, None), "message": np.where(nudge, msg, None),
            "priority": np.where(has, priority, np.nan), "reasons": reasons, "triggers": triggers}


def _feature_values(cols: dict[str, np.ndarray], m: Message, n: int) -> np.ndarray:
    """The numbers of `m.feature` (NaN when the column is absent); a text column (an attr_ of text) is an InputError."""
    if m.feature not in cols:
        return np.full(n, np.nan)
    try:
        return np.asarray(cols[m.feature], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"policy: messages.{m.name}.when.feature: {m.feature} is not numeric in these features") \
            from None


def _aha_choice(cols: dict[str, np.ndarray], config: PolicyConfig, aha_message: np.ndarray, days_first: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose chosen message pushes an Aha action, and per row the first rule (best first) not reached yet and
    still reachable: its window after the first purchase has not closed (`days_first` <= its within_days)."""
    n = len(aha_message)
    if not config.aha_rules or not aha_message.any():
        return np.zeros(0, np.int64), np.zeros(n, np.int64)
    unmet = np.column_stack([(np.asarray(cols[r.column], dtype=float) < r.min_count) & (days_first <= r.within_days)
                             if r.column in cols else np.zeros(n, bool)
                             for r in config.aha_rules])  # NaN (unknown): not counted
    return np.flatnonzero(aha_message & unmet.any(axis=1)), unmet.argmax(axis=1)


def _reason(code, stage, msg, chan, up, ev, worth, decay, prio, days_first, last, as_of_ns, in_window, unanswered,
            learned, config: PolicyConfig) -> str:
    if code == "no_message":
        return f"hold: no message in the catalogue fits stage {stage}"
    if code == "too_early":
        return f"hold: first purchase {days_first:.0f} days ago; new customers are eligible from day {config.delay_days:g}"
    if code == "low_value":
        return f"hold: expected value {ev:.2f} below the minimum {config.min_expected_value:g}"
    if code == "stale_score":
        return f"hold: nudged on {_fmt_day(last)} after this score (as of {_fmt_day(as_of_ns)}); re-score first"
    if code == "cooldown":
        return f"hold: last nudge on {_fmt_day(last)}, within the {config.cooldown_days:g}-day cooldown"
    if code == "cap":
        return f"hold: {in_window} nudges in {config.cap_window_days:g} days (cap {config.max_contacts})"
    times = f"value per purchase {worth:.2f}" if learned else f"expected value {ev:.2f}"
    calc = (f"{msg} by {chan}: priority {prio:.2f} = uplift {up:.3f} ({LEARNED_NOTE if learned else PRIOR_NOTE}) x {times}"
            + (f" x {decay:.2g} for {unanswered} unanswered nudge(s), re-scored since" if unanswered else "")
            + f" - cost {config.channels[chan]:g}")
    if code == "not_worth_it":
        return f"hold: best option {calc}"
    if code == "budget":
        return f"hold: over the batch budget; best option {calc}"
    return f"nudge: {calc}"


def decide(scores: pd.DataFrame, config: PolicyConfig, contact_history: pd.DataFrame | None = None,
           now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Add action (nudge/hold), channel, message, priority, reasons and triggers to `scores`, and its
    lifecycle_stage with the model's score (`features.lifecycle.scored_stage`) where it has p_purchase.

    Args:
        scores: one row per customer with the columns of `required_columns(config)` (features plus scores).
        config: the policy; an "auto" delay falls back to `fallback_delay_days` unless resolved beforehand.
        contact_history: nudges (customer_id, timestamp); one after `now` counts as the last contact (`contact_summary`).
        now: the decision time (naive UTC); default: each row's as_of.

    Returns:
        A copy of `scores` with the decision columns, in the same row order.
    """
    as_of = scores["as_of"].to_numpy().astype("datetime64[ns]")
    now_ns = int(pd.Timestamp(now).value) if now is not None else int(as_of.astype(np.int64).max(initial=0))
    cols = {c: scores[c].to_numpy() for c in [*required_columns(config), *SCORE_FEATURES] if c in scores.columns}
    contacts = None
    if contact_history is not None and len(contact_history):
        pos = pd.Index(scores["customer_id"].astype(str)).get_indexer(contact_history["customer_id"].astype(str))
        ts = pd.to_datetime(contact_history["timestamp"]).to_numpy().astype("datetime64[ns]").astype(np.int64)
        last_purchase = as_of.astype(np.int64) - scores["recency_days"].to_numpy(dtype=float) * DAY_NS
        contacts = contact_summary(len(scores), pos, ts, last_purchase, now_ns, config.cap_window_days)
    out = scores.copy()
    for key, val in decide_arrays(cols, config, contacts, now_ns).items():
        out[key] = val
    return out
