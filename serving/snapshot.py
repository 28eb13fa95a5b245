"""The service's feature snapshot: features by customer_id with their model scores computed once at start-up.

The same model on the same features gives the same scores, so the look-up path does no model work per request;
decisions are still made per request (they depend on the contact log and the time). Top drivers cost a few ms per
customer (TreeSHAP), so they are computed on first request and cached.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from serving.policy import SCORE_FEATURES, PolicyConfig

__all__ = ["FEATURE_MARKERS", "Snapshot", "check_snapshot"]

FEATURE_MARKERS = ("customer_id", "as_of", "n_orders", "lifecycle_stage", "recency_days", "tenure_days")


def check_snapshot(path: str | Path, config: PolicyConfig | None = None) -> list[str]:
    """The columns of a features Parquet file; InputError when it is missing, unreadable or not features, or when
    a message of the policy `config` reads a text column in `when` (every look-up would fail)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--features {p}: file not found")
    try:
        cols = pq.read_schema(p).names
    except Exception as exc:  # noqa: BLE001  (Arrow raises several types for garbage)
        raise InputError(f"--features {p}: not a readable Parquet file ({type(exc).__name__})") from None
    missing = [c for c in FEATURE_MARKERS if c not in cols]
    if missing:
        hint = " (a scores file? pass `features build` output or `serving batch --features-out`)" if "p_purchase" in cols else ""
        raise InputError(f"--features {p}: missing feature column(s) {', '.join(missing)}{hint}")
    schema = pq.read_schema(p)
    for m in (config.messages.values() if config is not None else ()):
        kind = schema.field(m.feature).type if m.feature in cols else None
        if kind is not None and not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise InputError(f"--features {p}: policy messages.{m.name}.when.feature {m.feature} is {kind} in the "
                             f"snapshot; `when` compares numbers")
    return cols


class Snapshot:
    """Features and precomputed scores of the customers of one snapshot, by customer_id."""

    def __init__(self, features: pd.DataFrame, model, columns: list[str]):
        features = features.drop_duplicates("customer_id", keep="last").reset_index(drop=True)
        self.features = features
        self.ids = features["customer_id"].astype(str).to_numpy()
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        scores = model.predict(features) if len(features) else pd.DataFrame(
            columns=["p_purchase", "p_second_purchase", "expected_value"])
        self.cols = {c: features[c].to_numpy() for c in columns if c in features.columns}
        self.cols["customer_id"] = self.ids
        self.cols["as_of"] = features["as_of"].to_numpy().astype("datetime64[ns]")
        self.cols.update({c: scores[c].to_numpy(dtype=float) for c in SCORE_FEATURES if c in scores.columns})
        self._model = model
        self._drivers: dict[int, str] = {}

    @classmethod
    def load(cls, path: str | Path, model, columns: list[str], config: PolicyConfig | None = None) -> Snapshot:
        """Read a features Parquet file (checked against the policy `config`) and score it."""
        check_snapshot(path, config)
        return cls(pd.read_parquet(path), model, columns)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, customer_ids: list[str]) -> np.ndarray:
        """Row of each id (-1: unknown)."""
        return np.array([self.index.get(c, -1) for c in customer_ids], dtype=np.int64)

    def take(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Column arrays of rows `pos` (all known)."""
        return {c: v[pos] for c, v in self.cols.items()}

    def drivers(self, pos: np.ndarray) -> list[str]:
        """Top drivers of rows `pos`, computed once per customer."""
        from serving.scoring import driver_reasons

        todo = [int(p) for p in dict.fromkeys(pos.tolist()) if p not in self._drivers]
        if todo:
            for p, text in zip(todo, driver_reasons(self._model, self.features.iloc[todo])):
                self._drivers[p] = text
        return [self._drivers[int(p)] for p in pos]
