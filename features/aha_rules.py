"""Aha rules as inputs of the policy: the best rules of `python -m features aha` (aha_rules.csv), read back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.aha import action_column
from features.aha_advice import significant
from features.errors import InputError
from features.io import read_table
from features.pipeline import FeatureParams

__all__ = ["AhaRule", "feature_params", "load_aha_rules"]


@dataclass(frozen=True)
class AhaRule:
    """An Aha rule: at least `min_count` of `action` within `within_days` days of the first purchase."""

    action: str
    min_count: int
    within_days: int

    @property
    def column(self) -> str:
        """The feature column with the customer's count (`features.aha.action_column`)."""
        return action_column(self.action, self.within_days)


def feature_params(rules: tuple[AhaRule, ...]) -> FeatureParams:
    """The feature parameters whose Aha-rule count columns `rules` read (each distinct action and window once)."""
    return FeatureParams(aha_actions=tuple(dict.fromkeys((r.action, r.within_days) for r in rules)))


def load_aha_rules(path: str | Path, max_rules: int = 3) -> tuple[AhaRule, ...]:
    """The first `max_rules` significant positive rules of an aha_rules.csv (best first; `features.aha`).

    A rule counts when its come-back rate is significantly higher (p_adjusted < 0.05 and rate_if > rate_else) or,
    in a file without p-values, when its lift is above 1. InputError names the file and the missing column.
    """
    rules = read_table(path)
    for c in {"min_count", "within_days", "lift", "p_adjusted", "diff"} & set(rules.columns):
        rules[c] = pd.to_numeric(rules[c], errors="coerce")
    missing = [c for c in ("action", "min_count", "within_days") if c not in rules.columns]
    if missing:
        raise InputError(f"{path}: column {missing[0]!r} is missing (expected an aha_rules.csv of python -m features aha)")
    if {"p_adjusted", "diff"} <= set(rules.columns):
        keep = significant(rules)
    elif "lift" in rules.columns:
        keep = rules["lift"] > 1
    else:
        raise InputError(f"{path}: column 'lift' is missing (expected an aha_rules.csv of python -m features aha)")
    top = rules.loc[keep.to_numpy()].head(max_rules)
    bad = top.loc[~(top["min_count"] >= 1) | ~(top["within_days"] >= 0)]
    if len(bad):
        raise InputError(f"{path}: min_count/within_days must be whole numbers (rows {', '.join(map(str, bad.index[:3] + 2))})")
    return tuple(AhaRule(str(r.action), int(r.min_count), int(r.within_days)) for r in top.itertuples())
