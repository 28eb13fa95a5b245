"""The next-best-action policy and the contact log on hand-made cases (no model)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from serving.contact_log import ContactLog
from serving.policy import (
    PRIOR_NOTE,
    Message,
    PolicyConfig,
    decide,
    load_policy,
    resolve_timing,
    second_purchase_timing,
)

AS_OF = pd.Timestamp("2025-06-30")


def config(**kw) -> PolicyConfig:
    """One message per stage, email only (cost 0.1, uplift 0.1), delay 10 days, cooldown 14, cap 2 in 90 days."""
    messages = {
        "second_purchase_nudge": Message("second_purchase_nudge", "second", ("new",), {"email": 0.1}),
        "reactivation": Message("reactivation", "react", ("at_risk", "lapsed"), {"email": 0.1, "postcard": 0.2}),
        "referral": Message("referral", "ref", ("loyal",), {"email": 0.1}, feature="n_referral", below=1),
    }
    base = {"channels": {"email": 0.1, "postcard": 1.0}, "messages": messages, "new_customer_delay_days": 10.0,
            "cooldown_days": 14, "max_contacts": 2, "cap_window_days": 90, "response_decay": 0.5,
            "min_expected_value": 5.0}
    return PolicyConfig(**{**base, **kw})


def scores(*rows: dict) -> pd.DataFrame:
    """Score rows with defaults: a new customer 20 days after the first purchase, expected value 50."""
    base = {"as_of": AS_OF, "n_orders": 1, "lifecycle_stage": "new", "expected_value": 50.0, "tenure_days": 20.0,
            "recency_days": 20.0, "n_referral": 0.0}
    return pd.DataFrame([{**base, "customer_id": f"c{i}", **r} for i, r in enumerate(rows)])


def contacts(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "timestamp"]).astype({"timestamp": "datetime64[ns]"})


def test_priority_is_prior_uplift_times_expected_value_minus_cost_and_says_it_is_a_prior():
    out = decide(scores({}), config())
    assert out.loc[0, ["action", "channel", "message"]].tolist() == ["nudge", "email", "second_purchase_nudge"]
    assert out.loc[0, "priority"] == pytest.approx(0.1 * 50 - 0.1)
    assert PRIOR_NOTE in out.loc[0, "reasons"]


def test_the_best_channel_wins_by_priority():
    out = decide(scores({"lifecycle_stage": "at_risk", "expected_value": 100.0}), config())
    assert out.loc[0, "channel"] == "postcard"  # 0.2 x 100 - 1 = 19 beats 0.1 x 100 - 0.1 = 9.9
    assert out.loc[0, "priority"] == pytest.approx(19.0)


@pytest.mark.parametrize("days, action", [(3, "hold"), (9.9, "hold"), (10, "nudge"), (45, "nudge")])
def test_new_customers_become_eligible_after_the_delay(days, action):
    out = decide(scores({"tenure_days": days, "recency_days": days}), config())
    assert out.loc[0, "action"] == action
    if action == "hold":
        assert "eligible from day 10" in out.loc[0, "reasons"]


def test_the_delay_counts_days_since_the_snapshot_when_deciding_later():
    later = AS_OF + pd.Timedelta(days=7)  # a snapshot 3 days after the first purchase, decided 7 days later
    out = decide(scores({"tenure_days": 3.0, "recency_days": 3.0}), config(), now=later)
    assert out.loc[0, "action"] == "nudge"


def test_stages_without_a_message_and_reached_kpas_are_held():
    out = decide(scores({"n_orders": 0, "lifecycle_stage": "prospect"},
                        {"n_orders": 6, "lifecycle_stage": "loyal", "n_referral": 2.0},  # KPA reached already
                        {"n_orders": 6, "lifecycle_stage": "loyal", "n_referral": np.nan}), config())  # unknown
    assert out["action"].tolist() == ["hold"] * 3
    assert out["priority"].isna().all()
    assert out["reasons"].str.contains("no message").all()


def test_expected_value_below_the_minimum_is_held():
    out = decide(scores({"expected_value": 4.0}), config())
    assert out.loc[0, "action"] == "hold" and "below the minimum" in out.loc[0, "reasons"]


def test_cooldown_holds_a_recent_contact_and_then_expires():
    hist = contacts(("c0", "2025-06-20"))
    snap = scores({"recency_days": 30.0, "tenure_days": 30.0})
    assert decide(snap, config(), hist, now=AS_OF).loc[0, "action"] == "hold"
    assert "cooldown" in decide(snap, config(), hist, now=AS_OF).loc[0, "reasons"]
    later = scores({"as_of": AS_OF + pd.Timedelta(days=5), "recency_days": 35.0, "tenure_days": 35.0})
    assert decide(later, config(), hist).loc[0, "action"] == "nudge"  # 15 days after the contact


def test_a_contact_after_the_decision_time_holds_and_a_batch_rerun_ignores_only_its_own():
    from serving.contact_log import split_own_run

    later = contacts(("c0", str(AS_OF + pd.Timedelta(hours=2))))  # the service nudged after the data's as-of
    out = decide(scores({}), config(), later, now=AS_OF)
    assert out.loc[0, "action"] == "hold" and "cooldown" in out.loc[0, "reasons"]
    sent_at = AS_OF.floor("us")
    hist = pd.DataFrame({"customer_id": ["c0", "c0"], "timestamp": [sent_at, AS_OF + pd.Timedelta(hours=2)],
                         "source": ["batch", "http"]})
    others, earlier = split_own_run(hist, sent_at)
    assert others["source"].tolist() == ["http"] and earlier["source"].tolist() == ["batch"]  # this run's earlier try
    assert decide(scores({}), config(), split_own_run(hist.iloc[:1], sent_at)[0], now=sent_at).loc[0, "action"] == "nudge"


def test_frequency_cap_holds_after_max_contacts_in_the_window():
    hist = contacts(("c0", "2025-04-10"), ("c0", "2025-05-20"), ("c1", "2025-01-10"), ("c1", "2025-05-20"))
    out = decide(scores({"lifecycle_stage": "at_risk"}, {"lifecycle_stage": "at_risk"}), config(), hist)
    assert out["action"].tolist() == ["hold", "nudge"]  # c1's January contact is outside the 90-day window
    assert "cap 2" in out.loc[0, "reasons"]


def test_a_nudge_after_the_score_requires_a_fresh_score():
    snap = scores({"lifecycle_stage": "at_risk"})  # scored as of June 30
    hist = contacts(("c0", "2025-07-02"))
    out = decide(snap, config(), hist, now=AS_OF + pd.Timedelta(days=30))  # cooldown over, score stale
    assert out.loc[0, "action"] == "hold" and "re-score" in out.loc[0, "reasons"]


def test_an_unanswered_nudge_halves_the_uplift_and_is_named():
    hist = contacts(("c0", "2025-05-01"))  # the last purchase was 70 days before as-of: before the nudge
    out = decide(scores({"lifecycle_stage": "at_risk", "recency_days": 70.0}), config(), hist)
    assert out.loc[0, "priority"] == pytest.approx(0.2 * 50 * 0.5 - 1.0)
    assert "1 unanswered" in out.loc[0, "reasons"]
    answered = decide(scores({"lifecycle_stage": "at_risk", "recency_days": 30.0}), config(), hist)
    assert answered.loc[0, "priority"] == pytest.approx(0.2 * 50 - 1.0)  # bought after the nudge


def test_cost_above_the_incremental_value_is_held():
    out = decide(scores({"expected_value": 5.0}), config(channels={"email": 1.0, "postcard": 1.0}))
    assert out.loc[0, "action"] == "hold" and out.loc[0, "priority"] == pytest.approx(-0.5)


def test_budget_is_spent_highest_priority_first():
    rows = [{"lifecycle_stage": "at_risk", "expected_value": v} for v in (10.0, 100.0, 40.0, 70.0)]
    out = decide(scores(*rows), config(budget=2.5))  # each nudge is a postcard at cost 1
    assert out["action"].tolist() == ["hold", "nudge", "hold", "nudge"]
    assert out.loc[[0, 2], "reasons"].str.contains("budget").all()
    cheap = decide(scores(*rows, {"expected_value": 60.0}), config(budget=2.1))  # the email still fits
    assert cheap["action"].tolist() == ["hold", "nudge", "hold", "nudge", "nudge"]


def test_second_purchase_timing_reports_the_shares_and_picks_the_delay():
    feats = pd.DataFrame({"days_first_to_second": [2, 4, 8, 9, 20, 40, 100, 200, np.nan]})
    t = second_purchase_timing(feats, quantile=0.25)
    assert t["share_by_day"] == {10: 0.5, 30: 0.625, 90: 0.75}
    assert t["delay_days"] == 7.0  # the first quartile of 2..200
    early = second_purchase_timing(pd.DataFrame({"days_first_to_second": [0.1] * 9 + [50]}))
    assert early["delay_days"] == 1.0  # second purchases come at once: nudge right after the first
    cfg = resolve_timing(config(new_customer_delay_days=None), feats)
    assert cfg.delay_days == 7.0 and cfg.timing["n_second_purchases"] == 8
    assert resolve_timing(config(new_customer_delay_days=None), None).delay_days == 7.0  # the fallback


def test_the_shipped_policy_file_loads_and_names_bad_settings(tmp_path):
    cfg = load_policy()
    assert cfg.channels == {"email": 0.1, "push": 0.05, "postcard": 1.0, "sales_call": 15.0}
    assert {"second_purchase_nudge", "reactivation", "referral", "ambassador"} <= set(cfg.messages)
    assert any(name.startswith("kpa_") for name in cfg.messages)
    bad = tmp_path / "p.yaml"
    bad.write_text("channels: {email: 0.1}\nmessages:\n  x: {stages: [new], uplift: {fax: 0.1}}\n")
    with pytest.raises(InputError, match="unknown channel"):
        load_policy(bad)


POLICY = "channels: {email: 0.1}\nmessages:\n  x: {stages: [new], uplift: {email: 0.1}, when: {feature: n_orders, below: 2}}\n"


@pytest.mark.parametrize("edit, key", [
    (("below: 2", "below: abc"), "messages.x.when.below"),  # a string threshold: every decision crashed
    (("[new]", "new"), "messages.x.stages"),  # a string, not a list: was ('n', 'e', 'w')
    (("[new]", "[newbie]"), "messages.x.stages"),  # an unknown stage: nobody was ever eligible
    (("n_orders", "n_order"), "messages.x.when.feature"),  # an unknown feature: nobody was ever eligible
    (("n_orders", "lifecycle_stage"), "messages.x.when.feature"),  # categorical: not comparable to a number
    (("below: 2", "abovee: 2"), "messages.x.when.abovee"),  # a typo
    (("email: 0.1}, when", "email: high}, when"), "messages.x.uplift.email"),
    (("channels: {email: 0.1}", "channels: {email: -1}"), "channels.email"),
    (("channels:", "contacts: {max_contacts: 2.5}\nchannels:"), "contacts.max_contacts"),  # was cut to 2
    (("channels:", "contacts: {response_decay: 2}\nchannels:"), "contacts.response_decay"),
    (("channels:", "timing: {new_customer_delay_days: abc}\nchannels:"), "timing.new_customer_delay_days"),
    (("channels:", "budget: [1]\nchannels:"), "budget"),
])
def test_bad_policy_settings_are_one_line_errors_naming_the_file_and_key(tmp_path, edit, key):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace(*edit))
    with pytest.raises(InputError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("feature", ["n_orders", "attr_age", "attr_signup_date_days", "aha_app_session_first_7d",
                                     "p_purchase", "expected_value"])
def test_when_accepts_features_attributes_aha_counts_and_model_scores(tmp_path, feature):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("n_orders", feature))
    assert load_policy(path).messages["x"].feature == feature


def test_a_text_attribute_in_when_is_an_input_error_naming_the_message():
    cfg = config(messages={"x": Message("x", "x", ("new",), {"email": 0.1}, feature="attr_region", below=1)})
    with pytest.raises(InputError, match="messages.x.when.feature: attr_region is not numeric"):
        decide(scores({"attr_region": "north"}), cfg)


def test_serve_refuses_a_snapshot_whose_when_column_is_text(tmp_path):
    from serving.snapshot import check_snapshot

    snap = tmp_path / "f.parquet"
    pd.DataFrame({"customer_id": ["a"], "as_of": [AS_OF], "n_orders": [1.0], "recency_days": [3.0],
                  "lifecycle_stage": ["new"], "tenure_days": [3.0], "expected_value": [10.0],
                  "attr_region": ["north"]}).to_parquet(snap)
    cfg = config(messages={"x": Message("x", "x", ("new",), {"email": 0.1}, feature="attr_region", below=1)})
    with pytest.raises(InputError, match=r"f.parquet: policy messages.x.when.feature attr_region is \w*string in the"):
        check_snapshot(snap, cfg)
    check_snapshot(snap, config(messages={"x": Message("x", "x", ("new",), {"email": 0.1}, feature="n_orders",
                                                       below=1)}))  # a number: fine


def test_with_the_model_score_repeat_and_loyal_customers_unlikely_to_buy_are_at_risk():
    rows = scores({"lifecycle_stage": "repeat", "p_purchase": 0.05}, {"lifecycle_stage": "loyal", "p_purchase": 0.5},
                  {"lifecycle_stage": "new", "p_purchase": 0.01})
    out = decide(rows, config())
    assert out["lifecycle_stage"].tolist() == ["at_risk", "loyal", "new"]  # the documented rule, below 0.1
    assert decide(rows.drop(columns="p_purchase"), config())["lifecycle_stage"].tolist() == ["repeat", "loyal", "new"]


def test_a_batch_of_other_customers_for_the_same_as_of_keeps_the_first_ones_contacts(tmp_path):
    log = ContactLog(f"sqlite:///{tmp_path}/c.db")

    def run(ids: list[str], actions: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"customer_id": ids, "action": actions, "channel": "email", "message": "m",
                             "priority": 1.0, "model_version": "1"})

    log.record(run(["a1", "a2"], ["nudge", "nudge"]), AS_OF, "batch", replace_same_run=True)  # data set (shard) A
    log.record(run(["b1"], ["nudge"]), AS_OF, "batch", replace_same_run=True)                 # B, the same as-of
    log.record(run(["a1", "a2"], ["nudge", "hold"]), AS_OF, "batch", replace_same_run=True)   # A again: a2 held
    assert sorted(log.history()["customer_id"]) == ["a1", "b1"]


def test_contact_log_keeps_contacts_and_a_rerun_replaces_its_own(tmp_path):
    log = ContactLog(f"sqlite:///{tmp_path}/c.db")
    dec = pd.DataFrame({"customer_id": ["a", "b"], "action": ["nudge", "hold"], "channel": ["email", None],
                        "message": ["m", None], "priority": [1.0, np.nan], "model_version": ["3", "3"]})
    assert log.record(dec, AS_OF, "batch", replace_same_run=True) == 1
    assert log.record(dec, AS_OF, "batch", replace_same_run=True) == 1
    log.record(dec, AS_OF + pd.Timedelta(days=1), "http")
    hist = ContactLog(f"sqlite:///{tmp_path}/c.db").history(["a", "b"])  # durable: a new connection sees them
    assert hist["timestamp"].tolist() == [AS_OF, AS_OF + pd.Timedelta(days=1)]
    assert hist["source"].tolist() == ["batch", "http"]
    assert len(log.history(["a"], since=AS_OF + pd.Timedelta(hours=1))) == 1


@pytest.mark.parametrize("url", ["garbage", "nosuchdialect://host/db"])
def test_a_bad_contact_db_url_is_a_one_line_error_naming_the_variable(monkeypatch, url):
    monkeypatch.setenv("KAIROS_CONTACT_DB", url)
    with pytest.raises(InputError, match="^KAIROS_CONTACT_DB: not a usable SQLAlchemy database URL"):
        ContactLog()


def test_decide_keeps_row_order_and_input_columns():
    snap = scores({}, {"lifecycle_stage": "at_risk"}, {"expected_value": 1.0})
    out = decide(snap, replace(config(), budget=None))
    assert out["customer_id"].tolist() == ["c0", "c1", "c2"]
    assert list(out.columns[: len(snap.columns)]) == list(snap.columns)
