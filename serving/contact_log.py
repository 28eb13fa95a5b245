"""The contact log: a durable store of the nudges that were sent, so cooldowns and caps hold across runs and services.

SQLite under ./mlruns/contacts.db by default; any SQLAlchemy URL (e.g. PostgreSQL) through KAIROS_CONTACT_DB.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from features.errors import InputError

__all__ = ["ContactLog", "default_url", "split_own_run"]

_META = sa.MetaData()
CONTACTS = sa.Table(
    "contacts", _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128), nullable=False, index=True),
    sa.Column("timestamp", sa.DateTime, nullable=False, index=True),
    sa.Column("channel", sa.String(32)),
    sa.Column("message", sa.String(64)),
    sa.Column("priority", sa.Float),
    sa.Column("cost", sa.Float),
    sa.Column("model_version", sa.String(64)),
    sa.Column("source", sa.String(32), nullable=False),
)
COLUMNS = ["customer_id", "timestamp", "channel", "message", "priority", "cost", "model_version", "source"]


def default_url() -> str:
    """KAIROS_CONTACT_DB, else sqlite:///<cwd>/mlruns/contacts.db."""
    return os.environ.get("KAIROS_CONTACT_DB") or f"sqlite:///{Path.cwd() / 'mlruns' / 'contacts.db'}"


def split_own_run(history: pd.DataFrame, sent_at: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The contact history a batch decides with, and its own earlier attempt (source "batch" at exactly its contact
    time `sent_at`), which a re-run leaves out and replaces. Contacts after `sent_at` (the service's, between the
    data's as-of and the run) stay in the history: the cooldown holds for them."""
    own = ((history["source"] == "batch") & (history["timestamp"] == pd.Timestamp(sent_at).floor("us"))).to_numpy()
    return history.loc[~own].reset_index(drop=True), history.loc[own].reset_index(drop=True)


def _engine(url: str, source: str) -> sa.engine.Engine:
    """The engine of `url`; InputError naming `source` (where the URL came from) if the URL is not usable or its
    database driver cannot be imported."""
    args = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    try:
        return sa.create_engine(url, **args)
    except (sa.exc.ArgumentError, ValueError):  # not a URL, an unknown dialect or driver name, a port not a number
        raise InputError(f"{source}: not a usable SQLAlchemy database URL (e.g. sqlite:///mlruns/contacts.db "
                         f"or postgresql://host/db)") from None
    except ImportError as exc:  # a known dialect whose driver (psycopg, MySQLdb, ...) is not installed
        db = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise InputError(f"contact database {db}: cannot load its driver ({exc}); install it or name an installed "
                         f"driver in {source} (dialect+driver://...)") from None


class ContactLog:
    """Record sent nudges and read them back by customer."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        if self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            folder = Path(self.url.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission
                raise InputError(f"contact database {self.url}: cannot create its folder {folder} "
                                 f"({exc.strerror or exc})") from None
        self.engine = _engine(self.url, "the contact log URL" if url else "KAIROS_CONTACT_DB")
        _META.create_all(self.engine)

    def record(self, decisions: pd.DataFrame, sent_at: pd.Timestamp, source: str, costs: dict[str, float] | None = None,
               replace_same_run: bool = False) -> int:
        """Store the rows of `decisions` whose action is `nudge` as sent at `sent_at`; returns how many.

        Args:
            decisions: rows with customer_id, action, channel, message, priority and model_version.
            sent_at: the contact time (naive UTC).
            source: who sent them (e.g. "batch", "http").
            costs: channel costs, stored with each contact.
            replace_same_run: first delete this source's contacts at exactly `sent_at` of the customers in
                `decisions` (a re-run of one batch replaces its own contacts, so re-runs are idempotent).
        """
        sent = decisions.loc[decisions["action"] == "nudge"]
        when = pd.Timestamp(sent_at).floor("us").to_pydatetime()
        rows = [{"customer_id": str(r.customer_id), "timestamp": when, "channel": r.channel, "message": r.message,
                 "priority": float(r.priority), "cost": (costs or {}).get(r.channel),
                 "model_version": str(getattr(r, "model_version", "") or ""), "source": source}
                for r in sent.itertuples(index=False)]
        with self.engine.begin() as conn:
            if replace_same_run:
                self._replace_run(conn, source, when, decisions["customer_id"])
            if rows:
                conn.execute(CONTACTS.insert(), rows)
        return len(rows)

    def _replace_run(self, conn, source: str, when, customer_ids: pd.Series) -> None:
        """Delete `source`'s contacts at exactly `when` of these customers: a re-run of one batch replaces its own
        contacts, not those of another data set or shard scored for the same as-of."""
        rows = conn.execute(sa.select(CONTACTS.c.id, CONTACTS.c.customer_id).where(
            (CONTACTS.c.source == source) & (CONTACTS.c.timestamp == when))).fetchall()
        mine = set(customer_ids.astype(str))
        ids = [i for i, c in rows if c in mine]
        for k in range(0, len(ids), 500):
            conn.execute(CONTACTS.delete().where(CONTACTS.c.id.in_(ids[k:k + 500])))

    def history(self, customer_ids: list[str] | None = None, since: pd.Timestamp | None = None) -> pd.DataFrame:
        """Past contacts (COLUMNS) of `customer_ids` (None: everyone) at or after `since`, oldest first."""
        q = sa.select(*[CONTACTS.c[c] for c in COLUMNS])
        small = customer_ids is not None and len(customer_ids) <= 500
        if small:
            q = q.where(CONTACTS.c.customer_id.in_([str(c) for c in customer_ids]))
        if since is not None:
            q = q.where(CONTACTS.c.timestamp >= pd.Timestamp(since).floor("us").to_pydatetime())
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(CONTACTS.c.timestamp, CONTACTS.c.id)).fetchall()
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["timestamp"] = pd.to_datetime(df["timestamp"]).astype("datetime64[ns]")
        if customer_ids is not None and not small:
            df = df.loc[df["customer_id"].isin(pd.Index(customer_ids).astype(str))].reset_index(drop=True)
        return df

    def recent(self, customer_ids: list[str], since: pd.Timestamp) -> list[tuple[str, pd.Timestamp]]:
        """(customer_id, timestamp) of a few customers' contacts since `since`: the service's cheap look-up."""
        q = sa.select(CONTACTS.c.customer_id, CONTACTS.c.timestamp).where(
            CONTACTS.c.customer_id.in_(customer_ids), CONTACTS.c.timestamp >= pd.Timestamp(since).floor("us").to_pydatetime())
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(q)]

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
