"""Request bodies of the HTTP API and the request handler behind the BentoML service (testable without a server).

An item is either `{"customer_id"}` (looked up in the feature snapshot) or `{"customer_id", "transactions",
"events", "attributes", "as_of"}` (features computed on the fly by `build_features`, the batch's feature code).
"""
from __future__ import annotations

import logging
import os
from datetime import date, datetime
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from features.errors import InputError
from serving.policy import DAY_NS, SCORE_FEATURES, PolicyConfig, contact_summary, decide_arrays, required_columns
from serving.scoring import SCORE_COLUMNS, _json_value

__all__ = ["MAX_CUSTOMERS", "ActionRequest", "CustomerIn", "EventIn", "InvalidItem", "ScoreRequest", "Scorer",
           "TransactionIn"]

log = logging.getLogger("bentoml.kairos")  # the service's logger, under BentoML's configuration
MAX_CUSTOMERS = int(os.environ.get("KAIROS_MAX_CUSTOMERS", "1000"))


def _no_number(v: object) -> object:
    """A time must come as ISO 8601 text (or a date/datetime object): a JSON number would be read as Unix seconds."""
    if isinstance(v, (bool, int, float)):
        raise ValueError("must be an ISO 8601 date or datetime string, not a number")  # noqa: TRY004 - pydantic reports ValueError only
    return v


def _no_bool(v: object) -> object:
    """A number must not come as true/false (which would be read as 1.0/0.0)."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not true or false")  # noqa: TRY004 - as above
    return v


IsoTime = Annotated[datetime | date, BeforeValidator(_no_number)]
Number = Annotated[float, BeforeValidator(_no_bool)]


class TransactionIn(BaseModel):
    """One transaction line (canonical schema of DESIGN.md); customer_id defaults to the item's."""

    model_config = ConfigDict(extra="forbid")
    timestamp: IsoTime = Field(description="ISO 8601 date or datetime of the line")
    amount: Number = Field(description="revenue of the line; negative = return", allow_inf_nan=False)
    customer_id: str | None = Field(None, description="must equal the item's customer_id when given")
    order_id: str | None = Field(None, description="order of the line (else one order per timestamp)")
    product_id: str | None = Field(None, description="product bought")
    category: str | None = Field(None, description="product category")
    quantity: Number | None = Field(None, description="units", allow_inf_nan=False)
    margin: Number | None = Field(None, description="gross margin of the line", allow_inf_nan=False)
    channel: str | None = Field(None, description="sales channel, e.g. web, app, store")


class EventIn(BaseModel):
    """One behavioural event (app_session, feedback, review, referral, ...)."""

    model_config = ConfigDict(extra="forbid")
    timestamp: IsoTime = Field(description="ISO 8601 date or datetime of the event")
    event: str = Field(description="event type, e.g. app_session, feedback, review, referral", min_length=1)
    value: Number | None = Field(None, description="optional value of the event", allow_inf_nan=False)
    customer_id: str | None = Field(None, description="must equal the item's customer_id when given")


class CustomerIn(BaseModel):
    """One customer: by id from the snapshot, or with raw history scored on the fly."""

    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(description="the customer's id", min_length=1, max_length=128)
    transactions: list[TransactionIn] | None = Field(
        None, description="raw history: features are computed on the fly instead of looked up", max_length=100_000)
    events: list[EventIn] | None = Field(None, description="raw events (with transactions)", max_length=100_000)
    attributes: dict[str, str | float | int | bool | None] | None = Field(
        None, description="static attributes (customers table columns such as signup_date, segment)")
    as_of: str | None = Field(None, description="cutoff for raw history as in --as-of: a date means the end of "
                                                "that day (UTC); default: now")

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, v: str | None) -> str | None:
        from features.schema import parse_as_of

        if v is not None:
            try:
                parse_as_of(v)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return v


class InvalidItem(BaseModel):
    """An item of `customers` that is not a valid `CustomerIn`: answered with its error, the other items scored."""

    customer_id: str | None
    error: str


def _where(loc: tuple) -> str:
    """A pydantic error location as a path: ('transactions', 0, 'amount') -> 'transactions[0].amount'."""
    return "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "item"


def _per_item(value: object, handler: ValidatorFunctionWrapHandler) -> CustomerIn | InvalidItem:
    """Validate one item; a bad one becomes an `InvalidItem` naming its fields, so that one malformed customer
    among 1,000 does not fail the request (the body's own structure is still validated: 400)."""
    try:
        return handler(value)
    except ValidationError as exc:
        cid = value.get("customer_id") if isinstance(value, dict) else None
        why = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)[:3])
        return InvalidItem(customer_id=cid if isinstance(cid, str) else None, error=f"invalid item: {why}")


class ScoreRequest(BaseModel):
    """The body of POST /score (DESIGN.md "HTTP contract"); any other field is an error (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid")
    customers: list[Annotated[CustomerIn, WrapValidator(_per_item)]] = Field(
        description=f"customers to score (at most {MAX_CUSTOMERS}): by customer_id from the feature snapshot, or "
                    "with raw transactions/events scored on the fly", min_length=1, max_length=MAX_CUSTOMERS)


class ActionRequest(ScoreRequest):
    """The body of POST /next_best_action: the customers, and whether their nudges are recorded as sent."""

    record: StrictBool = Field(True, description="record the nudges as sent (contact log)")


def _nudge_once(results: list[dict]) -> list[dict]:
    """Hold every nudge of a customer_id after its first in one request: a customer is nudged (and recorded) once."""
    first: dict[str, int] = {}
    for i, r in enumerate(results):
        if r.get("action") == "nudge":
            k = first.setdefault(r["customer_id"], i)
            if k != i:
                results[i] = {**r, "action": "hold", "channel": None, "message": None,
                              "reasons": f"hold: customer_id repeated in this request, item {k} gets the nudge; "
                                         f"{r['reasons']}"}
    return results


def _clean_ids(ids: list[str]) -> list[str | None]:
    """Ids as the batch reads them (`features.schema.as_id`: stripped, '13085.0' -> '13085'; blank -> None), so
    that a look-up, a raw history and the contact log name a customer alike."""
    from features.schema import as_id, is_clean_id

    if all(is_clean_id(c) for c in ids):  # the usual case, in microseconds
        return list(ids)
    return [None if pd.isna(c) else str(c) for c in as_id(pd.Series(ids, dtype=object))]


def _utc_naive(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


class Scorer:
    """Answers score requests: snapshot look-ups or raw histories, scored by one model and decided by the policy."""

    def __init__(self, model, version: str, config: PolicyConfig, snapshot=None, contact_log=None):
        self.model, self.version, self.config = model, version, config
        self.snapshot, self.contact_log = snapshot, contact_log
        self.columns = required_columns(config)

    def _contacts(self, ids: np.ndarray, as_of_ns: np.ndarray, recency: np.ndarray, now: pd.Timestamp):
        if self.contact_log is None or not len(ids):
            return None
        since = now - pd.Timedelta(days=max(self.config.cooldown_days, self.config.cap_window_days) + 1)
        rows = self.contact_log.recent(list(dict.fromkeys(ids.tolist())), since)
        if not rows:
            return None
        where: dict[str, list[int]] = {}
        for i, c in enumerate(ids.tolist()):
            where.setdefault(c, []).append(i)
        # every copy of a repeated customer_id sees the customer's contacts
        pairs = [(i, pd.Timestamp(t).value) for c, t in rows for i in where.get(c, ())]
        pos = np.array([i for i, _ in pairs], dtype=np.int64)
        ts = np.array([t for _, t in pairs], dtype=np.int64)
        last_purchase = as_of_ns - recency.astype(float) * DAY_NS
        return contact_summary(len(ids), pos, ts, last_purchase, now.value, self.config.cap_window_days)

    def _rows(self, cols: dict[str, np.ndarray], drivers: list[str] | None, now: pd.Timestamp) -> list[dict]:
        as_of_ns = np.asarray(cols["as_of"]).astype("datetime64[ns]").astype(np.int64)
        contacts = self._contacts(np.asarray(cols["customer_id"], dtype=str), as_of_ns,
                                  np.asarray(cols["recency_days"], dtype=float), now)
        dec = decide_arrays(cols, self.config, contacts, now.value)
        out = []
        for i in range(len(dec["action"])):
            reasons = dec["reasons"][i] + (f"; drivers: {drivers[i]}" if drivers else "")
            out.append({
                "customer_id": str(cols["customer_id"][i]), "as_of": pd.Timestamp(cols["as_of"][i]).isoformat(),
                "n_orders": int(cols["n_orders"][i]), "lifecycle_stage": str(dec["lifecycle_stage"][i]),
                "p_purchase": _json_value(cols["p_purchase"][i]),
                "p_second_purchase": _json_value(cols["p_second_purchase"][i]),
                "expected_value": _json_value(cols["expected_value"][i]), "action": dec["action"][i],
                "channel": dec["channel"][i], "message": dec["message"][i],
                "priority": _json_value(dec["priority"][i]), "reasons": reasons, "model_version": self.version,
                "triggers": dec["triggers"][i]})
        return out

    @staticmethod
    def _raw_rows(item: CustomerIn) -> tuple[list[dict], list[dict], dict]:
        """The transaction lines, events and customers row of one raw-history item, as records with its
        customer_id; InputError if a row names another customer."""
        cid = item.customer_id
        for what, rows in (("transactions", item.transactions or []), ("events", item.events or [])):
            named = list({r.customer_id for r in rows if r.customer_id is not None})
            if named and set(_clean_ids(named)) != {cid}:
                raise InputError(f"{what}: customer_id differs from the item's customer_id {cid!r}")
        lines, events = ([{**r.model_dump(exclude_none=True), "customer_id": cid, "timestamp": _utc_naive(r.timestamp)}
                          for r in rows or []] for rows in (item.transactions, item.events))
        return lines, events, {**(item.attributes or {}), "customer_id": cid}

    def _raw_group(self, rows: list[tuple[list[dict], list[dict], dict]], as_of: pd.Timestamp, now: pd.Timestamp,
                   with_reasons: bool, source: str) -> list[dict]:
        """Validate and score the raw histories of distinct customers together (one validation per table, one
        feature build, one model call): the builder gives each customer the rows it would give alone. A customer
        without rows by as-of (a signup_date after it, nothing else) is scored as a customer without history."""
        from features.pipeline import build_features
        from features.schema import validate

        lines, events = [r for item in rows for r in item[0]], [r for item in rows for r in item[1]]
        tx = validate(pd.DataFrame(lines), "transactions", f"{source}.transactions") if lines else pd.DataFrame(
            {"customer_id": pd.Series([], dtype="str"), "timestamp": pd.Series([], dtype="datetime64[ns]"),
             "amount": pd.Series([], dtype=float)})
        ev = validate(pd.DataFrame(events), "events", f"{source}.events") if events else None
        cu = validate(pd.DataFrame([item[2] for item in rows]), "customers", f"{source}.attributes")
        ids = [str(item[2]["customer_id"]) for item in rows]
        feats = build_features(tx, as_of, ev, cu, self.config.feature_params)
        unseen = sorted(set(ids) - set(feats["customer_id"].astype(str)))
        if unseen:
            bare = pd.DataFrame({"customer_id": unseen})
            feats = pd.concat([feats, build_features(tx.iloc[:0], as_of, None, bare, self.config.feature_params)],
                              ignore_index=True)
        feats = feats.set_index(feats["customer_id"].astype(str)).loc[ids].reset_index(drop=True)
        scores = self.model.predict(feats)
        cols = {c: feats[c].to_numpy() for c in self.columns if c in feats.columns}
        cols.update({c: scores[c].to_numpy(dtype=float) for c in SCORE_FEATURES if c in scores.columns})
        cols["as_of"] = feats["as_of"].to_numpy().astype("datetime64[ns]")
        drivers = None
        if with_reasons:
            from serving.scoring import driver_reasons

            drivers = driver_reasons(self.model, feats)
        return self._rows(cols, drivers, min(as_of, now).floor("us"))  # decided as of the as-of, as the batch is

    def _raw(self, items: dict[int, CustomerIn], now: pd.Timestamp, with_reasons: bool) -> dict[int, dict]:
        """Results of the raw-history items (by position), scored in groups of distinct customers with the same
        as-of and attribute types, so that 1,000 new customers cost one validation and one feature build, not
        1,000. Only a failing item gets an error, which names it (`_bisect`)."""
        from features.schema import parse_as_of

        results: dict[int, dict] = {}
        groups: dict[tuple, list[tuple[int, tuple]]] = {}
        seen: dict[tuple, int] = {}
        for i, item in items.items():
            try:
                rows = self._raw_rows(item)
            except InputError as exc:
                results[i] = self._error(item.customer_id, str(exc))
                continue
            as_of = parse_as_of(item.as_of) if item.as_of is not None else now
            kinds = tuple(sorted((k, type(v).__name__) for k, v in (item.attributes or {}).items() if v is not None))
            copy = seen[(as_of, kinds, item.customer_id)] = seen.get((as_of, kinds, item.customer_id), -1) + 1
            groups.setdefault((as_of, kinds, copy), []).append((i, rows))
        for (as_of, _, _), members in groups.items():
            results.update(self._bisect(members, items, as_of, now, with_reasons))
        return results

    def _bisect(self, members: list[tuple[int, tuple]], items: dict[int, CustomerIn], as_of: pd.Timestamp,
                now: pd.Timestamp, with_reasons: bool) -> dict[int, dict]:
        """Score a group together; if that fails (bad rows in some item), each half again, down to the failing
        items: one bad item among 1,000 costs about 20 smaller group builds, not 1,000 single ones (which took
        longer than the request's timeout)."""
        one = len(members) == 1
        try:
            source = items[members[0][0]].customer_id if one else "request"
            out = self._raw_group([r for _, r in members], as_of, now, with_reasons, source)
            return {i: row for (i, _), row in zip(members, out)}
        except Exception as exc:  # noqa: BLE001 - a single item is answered (and logged) by _raw_failed
            if one:
                return {members[0][0]: self._raw_failed(members[0][0], items[members[0][0]], exc)}
            log.info("scoring %d raw histories together failed (%s); splitting them", len(members), type(exc).__name__)
        half = len(members) // 2
        return {**self._bisect(members[:half], items, as_of, now, with_reasons),
                **self._bisect(members[half:], items, as_of, now, with_reasons)}

    def _raw_failed(self, i: int, item: CustomerIn, exc: Exception) -> dict:
        """The answer of item `i` that failed with `exc`: InputError's message, or an internal error (logged with
        its traceback: one item's failure must not fail the others)."""
        if isinstance(exc, InputError):
            return self._error(item.customer_id, str(exc))
        log.error("scoring the raw history of item %d (customer_id %s) failed", i, item.customer_id, exc_info=exc)
        return self._error(item.customer_id, "internal error while scoring this item (logged)")

    def score(self, items: list[CustomerIn | InvalidItem], with_reasons: bool = True,
              now: pd.Timestamp | None = None) -> list[dict]:
        """One result per item, in order: a score row, or `{customer_id, error}` for an unknown customer or an
        invalid item."""
        now = now or pd.Timestamp.now(tz="UTC").tz_localize(None)
        results: list[dict | None] = [self._error(it.customer_id, it.error) if isinstance(it, InvalidItem) else None
                                      for it in items]
        ids = _clean_ids([it.customer_id or "" for it in items])
        for i, (it, cid) in enumerate(zip(items, ids)):
            if cid is None and results[i] is None:
                results[i] = self._error(it.customer_id, "customer_id is blank")
        items = [it if cid in (None, it.customer_id) or results[i] is not None
                 else it.model_copy(update={"customer_id": cid}) for i, (it, cid) in enumerate(zip(items, ids))]
        lookup = [i for i, it in enumerate(items)
                  if results[i] is None and it.transactions is None and it.events is None]
        if lookup:
            ids = [items[i].customer_id for i in lookup]
            pos = self.snapshot.positions(ids) if self.snapshot is not None else np.full(len(ids), -1)
            known = pos >= 0
            if known.any():
                kpos = pos[known]
                drivers = self.snapshot.drivers(kpos) if with_reasons else None
                rows = iter(self._rows(self.snapshot.take(kpos), drivers, now))
                for i, k in zip(lookup, known):
                    if k:
                        results[i] = next(rows)
            why = "not in the feature snapshot" if self.snapshot is not None else "no feature snapshot is loaded"
            for i, k in zip(lookup, known):
                if not k:
                    results[i] = self._error(items[i].customer_id,
                                             f"unknown customer_id ({why}); post its transactions to score it")
        raw = {i: it for i, it in enumerate(items) if results[i] is None}
        for i, row in self._raw(raw, now, with_reasons).items():
            results[i] = row
        return _nudge_once(results)

    def _error(self, customer_id: str, error: str) -> dict:
        return {**dict.fromkeys(SCORE_COLUMNS), "customer_id": customer_id, "model_version": self.version,
                "error": error}

    def record(self, results: list[dict], now: pd.Timestamp) -> int:
        """Store the nudges among `results` in the contact log as sent now."""
        if self.contact_log is None:
            return 0
        sent = pd.DataFrame([r for r in results if r.get("action") == "nudge"],
                            columns=["customer_id", "action", "channel", "message", "priority", "model_version"])
        return self.contact_log.record(sent, now, "http", self.config.channels) if len(sent) else 0
